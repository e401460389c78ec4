// Standalone check and timing of the n6onnx elementwise CUDA kernels, without onnxruntime:
// every op x float32/float16/bfloat16 x sizes (1 .. 1.5M+3) x bias lengths (1 .. 1536, odd ones
// too) x pointer offsets from a 16-byte boundary (x, y and bias, equal and different) against the
// same scalar functors on the host, bit for bit, with guard elements around the output; then
// kernel times (CUDA events) and effective bandwidth next to a device-to-device cudaMemcpy.
//
// Build (any machine with nvcc; run on a GPU machine), from the repo root:
//   nvcc -std=c++17 -O3 --fmad=false -lineinfo -Xcompiler -ffp-contract=off -Icustom_ops \
//        -gencode arch=compute_90,code=sm_90 tests/cuda/elementwise_kernel_check.cu -o /tmp/kcheck
//   /tmp/kcheck check            # exit status 0 when every case matches
//   /tmp/kcheck time
// Add -DN6_CUDA_TEST_MAX_BLOCKS=7 to cap the grid at 7 blocks, so that the grid-stride loops
// (kUnroll vectors per step) run on these small tensors too; run that build under
// `compute-sanitizer --tool memcheck`. tests/cuda/test_kernel_check.py does both (pytest -m cuda,
// pytest -m memcheck).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <algorithm>
#include <random>
#include <string>
#include "common/cuda_elementwise.cuh"
#include "phi6/phi6.h"
#include "zetaln2/zetaln2.h"

using namespace n6;
using namespace n6::cuda;

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(2);} } while (0)

static size_t esize(DType t) { return t == DType::kFloat32 ? 4 : 2; }
static float h_to_f(DType t, const void* p, size_t i) {
  if (t == DType::kFloat32) return ((const float*)p)[i];
  uint16_t b = ((const uint16_t*)p)[i];
  if (t == DType::kFloat16) { __half h; memcpy(&h, &b, 2); return __half2float(h); }
  uint32_t w = uint32_t(b) << 16; float f; memcpy(&f, &w, 4); return f;
}
static void f_to_h(DType t, void* p, size_t i, float v) {
  if (t == DType::kFloat32) { ((float*)p)[i] = v; return; }
  uint16_t b;
  if (t == DType::kFloat16) { __half h = __float2half_rn(v); memcpy(&b, &h, 2); }
  else { __nv_bfloat16 h = __float2bfloat16_rn(v); memcpy(&b, &h, 2); }
  ((uint16_t*)p)[i] = b;
}

template <class Fn> Status Launch(const ElementwiseArgs& a) { return LaunchElementwise<Fn>(a); }

template <class Fn>
int check_one(DType t, size_t n, size_t d, int xo, int yo, int bo, std::mt19937& rng) {
  const size_t es = esize(t), pad = 64;
  std::vector<unsigned char> hx((n + pad) * es), hb((d + pad) * es), hy((n + pad) * es), ref((n + pad) * es);
  std::uniform_real_distribution<float> U(-4.f, 4.f);
  for (size_t i = 0; i < n + pad; ++i) f_to_h(t, hx.data(), i, U(rng));
  const float specials[] = {-2.f, 2.f, 0.f, -2.5f, 2.5f, 5.f/12.f, NAN, INFINITY, -INFINITY, 1e30f, -0.f};
  for (size_t i = 0; i < 11 && i < n; ++i) f_to_h(t, hx.data(), xo + i, specials[i]);
  for (size_t i = 0; i < d + pad; ++i) f_to_h(t, hb.data(), i, U(rng) * 0.25f);
  unsigned char *dx, *db, *dy;
  CK(cudaMalloc(&dx, (n + pad) * es)); CK(cudaMalloc(&db, (d + pad) * es)); CK(cudaMalloc(&dy, (n + pad) * es));
  CK(cudaMemcpy(dx, hx.data(), (n + pad) * es, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(db, hb.data(), (d + pad) * es, cudaMemcpyHostToDevice));
  CK(cudaMemset(dy, 0xA5, (n + pad) * es));
  ElementwiseArgs a; a.dtype = t; a.x = dx + xo * es; a.y = dy + yo * es; a.n = n;
  if (d) { a.bias = db + bo * es; a.bias_len = d; }
  Status st = Launch<Fn>(a);
  if (!st.ok()) { printf("launch failed %s %s\n", st.where, st.message); return 1; }
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(hy.data(), dy, (n + pad) * es, cudaMemcpyDeviceToHost));
  memset(ref.data(), 0xA5, ref.size());
  for (size_t i = 0; i < n; ++i) {
    float v = h_to_f(t, hx.data(), xo + i);
    if (d) v += h_to_f(t, hb.data(), bo + i % d);
    f_to_h(t, ref.data(), yo + i, Fn::Apply(v));
  }
  size_t bad = 0, first = (size_t)-1;
  for (size_t i = 0; i < n + pad; ++i) {
    bool same = memcmp(&hy[i * es], &ref[i * es], es) == 0;
    if (!same) {
      bool inside = i >= (size_t)yo && i < yo + n;
      float g = h_to_f(t, hy.data(), i), r = h_to_f(t, ref.data(), i);
      if (inside && std::isnan(g) && std::isnan(r)) continue;
      if (first == (size_t)-1) first = i;
      ++bad;
    }
  }
  cudaFree(dx); cudaFree(db); cudaFree(dy);
  if (bad) {
    printf("MISMATCH %s %s n=%zu d=%zu xo=%d yo=%d bo=%d: %zu bad, first at %zu (got %g want %g)\n", Fn::kName, DTypeName(t), n, d, xo, yo, bo, bad, first,
           h_to_f(t, hy.data(), first), h_to_f(t, ref.data(), first));
    return 1;
  }
  return 0;
}

template <class Fn>
double time_one(DType t, size_t rows, size_t d, bool bias, int iters, int reps) {
  const size_t n = rows * d, es = esize(t);
  void *dx, *dy, *db;
  CK(cudaMalloc(&dx, n * es)); CK(cudaMalloc(&dy, n * es)); CK(cudaMalloc(&db, d * es));
  CK(cudaMemset(dx, 0, n * es)); CK(cudaMemset(db, 0, d * es));
  ElementwiseArgs a; a.dtype = t; a.x = dx; a.y = dy; a.n = n; if (bias) { a.bias = db; a.bias_len = d; }
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  for (int i = 0; i < 20; ++i) Launch<Fn>(a);
  std::vector<double> v;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(e0));
    for (int i = 0; i < iters; ++i) Launch<Fn>(a);
    CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
    float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
    v.push_back(ms / iters);
  }
  std::sort(v.begin(), v.end());
  double med = v[v.size() / 2];
  cudaFree(dx); cudaFree(dy); cudaFree(db);
  return med;
}

double time_copy(size_t bytes, int iters, int reps) {
  void *a, *b; CK(cudaMalloc(&a, bytes)); CK(cudaMalloc(&b, bytes));
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  for (int i = 0; i < 10; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
  std::vector<double> v;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(e0));
    for (int i = 0; i < iters; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
    float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); v.push_back(ms / iters);
  }
  std::sort(v.begin(), v.end());
  cudaFree(a); cudaFree(b);
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  bool do_check = argc < 2 || strstr(argv[1], "check");
  bool do_time = argc < 2 || strstr(argv[1], "time");
  int fails = 0, total = 0;
  std::mt19937 rng(1);
  if (do_check) {
    const DType types[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
    const size_t ns[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1031, 4096, 12345, 8 * 128 * 1536 + 3};
    const int offs[][3] = {{0, 0, 0}, {1, 1, 0}, {1, 2, 0}, {0, 1, 1}, {3, 3, 1}, {2, 2, 2}, {0, 0, 1}};
    for (DType t : types)
      for (size_t n : ns)
        for (auto& o : offs) {
          fails += check_one<Phi6>(t, n, 0, o[0], o[1], 0, rng); ++total;
          fails += check_one<ZetaLn2>(t, n, 0, o[0], o[1], 0, rng); ++total;
          const size_t ds[] = {1, 3, 4, 7, 8, 16, 33, 1031, 1536};
          for (size_t d : ds) {
            size_t rows = std::max<size_t>(1, n / d); size_t nn = rows * d;
            if (nn > 300000 && d != 1536 && d != 1031) continue;
            fails += check_one<Phi6>(t, nn, d, o[0], o[1], o[2], rng); ++total;
            fails += check_one<ZetaLn2>(t, nn, d, o[0], o[1], o[2], rng); ++total;
          }
        }
    printf("check: %d/%d cases failed\n", fails, total);
  }
  if (do_time) {
    cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    struct S { const char* name; size_t rows, d; } shapes[] = {
      {"8192x4096", 8192, 4096}, {"bert 1024x3072", 1024, 3072}, {"minilm 1024x1536", 1024, 1536}, {"1e7", 9766, 1024}, {"1e6", 977, 1024}, {"1e5", 98, 1024}};
    for (auto& s : shapes) {
      size_t n = s.rows * s.d;
      int iters = n > 10000000 ? 200 : 2000;
      double cp = time_copy(n * 4, iters, 7);
      printf("%-18s copy f32 %.4f ms %.2f TB/s\n", s.name, cp, 2.0 * n * 4 / cp / 1e9);
      for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        size_t es = esize(t);
        double p = time_one<Phi6>(t, s.rows, s.d, false, iters, 7);
        double pb = time_one<Phi6>(t, s.rows, s.d, true, iters, 7);
        double z = time_one<ZetaLn2>(t, s.rows, s.d, false, iters, 7);
        printf("%-18s %-8s phi6 %.4f ms %.2f TB/s | biasphi6 %.4f ms %.2f TB/s | zetaln2 %.4f ms %.2f TB/s\n", s.name, DTypeName(t),
               p, 2.0 * n * es / p / 1e9, pb, (2.0 * n + s.d) * es / pb / 1e9, z, 2.0 * n * es / z / 1e9);
      }
    }
    // odd bias dim (element mode) at size
    double big = time_one<Phi6>(DType::kFloat32, 1 << 17, 1024, false, 20, 5);
    printf("2^27 f32 phi6 (grid-stride loop path) %.4f ms %.2f TB/s\n", big, 2.0 * (1 << 27) * 4 / big / 1e9);
    double pe = time_one<Phi6>(DType::kFloat32, 8192, 4095, true, 200, 7);
    printf("8192x4095 f32 biasphi6 (element-bias mode) %.4f ms %.2f TB/s\n", pe, 2.0 * 8192 * 4095 * 4 / pe / 1e9);
  }
  return fails ? 1 : 0;
}
