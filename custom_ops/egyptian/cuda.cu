// EgyptianAttention CUDA kernels (float32 / float16 storage, fp32 compute).
//
// Full and local heads: StreamKernel, flash-style. A block of 128 threads owns a tile of 64
// queries of one (batch, head); two threads per query, each holding half of the output channels
// and half of each key tile's scores in registers. Key tiles of 32 are staged in shared memory
// (K transposed, V as rows); per tile: scores (q pre-scaled), the online-softmax update (running
// max / sum, output rescale; the pair exchanges max and sum with one shuffle each), P.V. A local
// head visits only the key tiles within window/2 of its query tile: O(L * (window + 64) * dh).
// Global heads: GlobalKernel, one warp per (batch, query, head) over keys {0, L-1}: O(L * dh).
// Head size up to 128 (instantiations for 32, 64, 128 channels); larger is refused.
#include "common/cuda_helpers.cuh"
#include "egyptian/egyptian_cuda.h"

namespace n6 {
namespace cuda {
namespace {

constexpr int kQT = 64;        // queries per block
constexpr int kKT = 32;        // keys per tile
constexpr int kThreads = 128;  // 2 per query
constexpr float kNegInf = -__builtin_huge_valf();

template <class S>
__device__ __forceinline__ float Ld(const S* p);
template <>
__device__ __forceinline__ float Ld<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float Ld<uint16_t>(const uint16_t* p) { return CodecF16::Load1(p); }
template <class S>
__device__ __forceinline__ void St(S* p, float v);
template <>
__device__ __forceinline__ void St<float>(float* p, float v) { *p = v; }
template <>
__device__ __forceinline__ void St<uint16_t>(uint16_t* p, float v) { CodecF16::Store1(p, v); }

struct Params {
  const void* q;
  const void* k;
  const void* v;
  const int32_t* mask;
  void* y;
  int64_t B, L, H, dh, half, ld;
  float scale;
  int nq;                          // query tiles per sequence
  int nstream;                     // full + local heads
  int heads[kEgyptianMaxHeads];    // StreamKernel: the full / local heads; GlobalKernel: the global heads
  int local[kEgyptianMaxHeads];    // StreamKernel: 1 for a local head
};

template <int DH>
constexpr size_t SmemFloats() {
  return kQT * (DH + 1) + DH * kKT + kKT * DH + kQT * (kKT + 1);
}

template <class S, int DH>
__global__ void __launch_bounds__(kThreads) StreamKernel(const Params p) {
  extern __shared__ float smem[];
  float* Qs = smem;                    // [kQT][DH + 1]
  float* Kt = Qs + kQT * (DH + 1);     // [DH][kKT]
  float* Vs = Kt + DH * kKT;           // [kKT][DH]
  float* Ps = Vs + kKT * DH;           // [kQT][kKT + 1]
  constexpr int kHalfDH = DH / 2, kHalfKT = kKT / 2;

  const int tile = blockIdx.x % p.nq;
  const int bh = blockIdx.x / p.nq;
  const int b = bh / p.nstream;
  const int h = p.heads[bh % p.nstream];
  const bool local = p.local[bh % p.nstream] != 0;
  const int tid = threadIdx.x, r = tid >> 1, hf = tid & 1;
  const int64_t q0 = static_cast<int64_t>(tile) * kQT, i = q0 + r;
  const S* qg = static_cast<const S*>(p.q);
  const S* kg = static_cast<const S*>(p.k);
  const S* vg = static_cast<const S*>(p.v);
  const int64_t dh = p.dh;

  for (int e = tid; e < kQT * DH; e += kThreads) {  // Q tile, pre-scaled, zero padded
    const int rr = e / DH, dd = e % DH;
    const int64_t ii = q0 + rr;
    Qs[rr * (DH + 1) + dd] = (ii < p.L && dd < dh) ? Ld(qg + (b * p.L + ii) * p.ld + h * dh + dd) * p.scale : 0.0f;
  }

  float acc[kHalfDH];
#pragma unroll
  for (int c = 0; c < kHalfDH; ++c) acc[c] = 0.0f;
  float m = kNegInf, l = 0.0f;

  int64_t klo = 0, khi = p.L;  // keys [klo, khi)
  if (local) {
    klo = q0 - p.half > 0 ? q0 - p.half : 0;
    const int64_t last = q0 + kQT - 1 + p.half + 1;
    khi = last < p.L ? last : p.L;
  }
  for (int64_t kb = klo; kb < khi; kb += kKT) {
    __syncthreads();  // previous tile consumed (and Q tile written, first time)
    for (int e = tid; e < kKT * DH; e += kThreads) {
      const int j = e / DH, dd = e % DH;
      const int64_t key = kb + j;
      const bool in = key < khi && dd < dh;
      const int64_t off = (b * p.L + key) * p.ld + h * dh + dd;
      Kt[dd * kKT + j] = in ? Ld(kg + off) : 0.0f;
      Vs[j * DH + dd] = in ? Ld(vg + off) : 0.0f;
    }
    __syncthreads();
    // scores of keys hf*16 .. hf*16+15 of the tile
    float s[kHalfKT];
#pragma unroll
    for (int j = 0; j < kHalfKT; ++j) s[j] = 0.0f;
    const float* qrow = Qs + r * (DH + 1);
    for (int d = 0; d < DH; ++d) {
      const float qd = qrow[d];
      const float4* kr = reinterpret_cast<const float4*>(Kt + d * kKT + hf * kHalfKT);
#pragma unroll
      for (int j4 = 0; j4 < kHalfKT / 4; ++j4) {
        const float4 k4 = kr[j4];
        s[4 * j4 + 0] = fmaf(qd, k4.x, s[4 * j4 + 0]);
        s[4 * j4 + 1] = fmaf(qd, k4.y, s[4 * j4 + 1]);
        s[4 * j4 + 2] = fmaf(qd, k4.z, s[4 * j4 + 2]);
        s[4 * j4 + 3] = fmaf(qd, k4.w, s[4 * j4 + 3]);
      }
    }
    float mx = kNegInf;
#pragma unroll
    for (int j = 0; j < kHalfKT; ++j) {
      const int64_t key = kb + hf * kHalfKT + j;
      bool ok = i < p.L && key < khi && (!p.mask || p.mask[b * p.L + key] != 0);
      if (local) ok = ok && key >= i - p.half && key <= i + p.half;
      s[j] = ok ? s[j] : kNegInf;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mnew = fmaxf(m, mx);
    float sum = 0.0f;
    float* prow = Ps + r * (kKT + 1) + hf * kHalfKT;
    if (mnew == kNegInf) {
#pragma unroll
      for (int j = 0; j < kHalfKT; ++j) prow[j] = 0.0f;
    } else {
#pragma unroll
      for (int j = 0; j < kHalfKT; ++j) {
        const float e = s[j] == kNegInf ? 0.0f : __expf(s[j] - mnew);
        prow[j] = e;
        sum += e;
      }
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    const float corr = (m == kNegInf || mnew == kNegInf) ? 0.0f : __expf(m - mnew);
    if (mnew != kNegInf) {
      l = l * corr + sum;
#pragma unroll
      for (int c = 0; c < kHalfDH; ++c) acc[c] *= corr;
      m = mnew;
    }
    __syncwarp();
    const float* pr = Ps + r * (kKT + 1);
    for (int j = 0; j < kKT; ++j) {
      const float pj = pr[j];
      const float4* vr = reinterpret_cast<const float4*>(Vs + j * DH + hf * kHalfDH);
#pragma unroll
      for (int c4 = 0; c4 < kHalfDH / 4; ++c4) {
        const float4 v4 = vr[c4];
        acc[4 * c4 + 0] = fmaf(pj, v4.x, acc[4 * c4 + 0]);
        acc[4 * c4 + 1] = fmaf(pj, v4.y, acc[4 * c4 + 1]);
        acc[4 * c4 + 2] = fmaf(pj, v4.z, acc[4 * c4 + 2]);
        acc[4 * c4 + 3] = fmaf(pj, v4.w, acc[4 * c4 + 3]);
      }
    }
  }
  if (i >= p.L) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  S* yrow = static_cast<S*>(p.y) + (b * p.L + i) * p.ld + h * dh;
#pragma unroll
  for (int c = 0; c < kHalfDH; ++c) {
    const int dd = hf * kHalfDH + c;
    if (dd < dh) St(yrow + dd, acc[c] * inv);
  }
}

// One warp per (batch, query, global head): keys {0, L-1}.
template <class S>
__global__ void __launch_bounds__(kThreads) GlobalKernel(const Params p, int nglobal) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t total = p.B * p.L * nglobal;
  if (warp >= total) return;
  const int g = static_cast<int>(warp % nglobal);
  const int64_t bi = warp / nglobal, b = bi / p.L, i = bi % p.L;
  const int h = p.heads[g];
  const S* qg = static_cast<const S*>(p.q) + (b * p.L + i) * p.ld + h * p.dh;
  const int64_t keys[2] = {0, p.L - 1};
  const int nk = p.L > 1 ? 2 : 1;
  float s[2] = {kNegInf, kNegInf};
  for (int t = 0; t < nk; ++t) {
    const S* kg = static_cast<const S*>(p.k) + (b * p.L + keys[t]) * p.ld + h * p.dh;
    float dot = 0.0f;
    for (int64_t d = lane; d < p.dh; d += 32) dot = fmaf(Ld(qg + d), Ld(kg + d), dot);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const bool ok = !p.mask || p.mask[b * p.L + keys[t]] != 0;
    s[t] = ok ? dot * p.scale : kNegInf;
  }
  const float mx = fmaxf(s[0], s[1]);
  float w[2] = {0.0f, 0.0f};
  if (mx != kNegInf) {
    for (int t = 0; t < nk; ++t) w[t] = s[t] == kNegInf ? 0.0f : __expf(s[t] - mx);
    const float inv = 1.0f / (w[0] + w[1]);
    w[0] *= inv;
    w[1] *= inv;
  }
  S* yrow = static_cast<S*>(p.y) + (b * p.L + i) * p.ld + h * p.dh;
  const S* v0 = static_cast<const S*>(p.v) + (b * p.L + keys[0]) * p.ld + h * p.dh;
  const S* v1 = static_cast<const S*>(p.v) + (b * p.L + keys[1]) * p.ld + h * p.dh;
  for (int64_t d = lane; d < p.dh; d += 32) {
    float o = w[0] * Ld(v0 + d);
    if (nk > 1) o = fmaf(w[1], Ld(v1 + d), o);
    St(yrow + d, o);
  }
}

template <class S, int DH>
Status LaunchStream(const Params& p, cudaStream_t stream) {
  constexpr size_t smem = SmemFloats<DH>() * sizeof(float);
  if (smem > 48 * 1024) {
    Status st = CudaStatus(cudaFuncSetAttribute(&StreamKernel<S, DH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem)),
                           "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    if (!st.ok()) return st;
  }
  const int64_t blocks = static_cast<int64_t>(p.nq) * p.B * p.nstream;
  if (blocks > 0x7FFFFFFF) return InvalidArgument("LaunchEgyptian", "tensor too large for the attention grid");
  return CheckedLaunch(&StreamKernel<S, DH>, static_cast<unsigned>(blocks), kThreads, smem, stream, p);
}

template <class S>
Status LaunchTyped(const EgyptianArgs& a) {
  const cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  Params p{};
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.mask = a.mask;
  p.y = a.y;
  p.B = a.B;
  p.L = a.L;
  p.H = a.H;
  p.dh = a.dh;
  p.half = a.half;
  p.ld = a.H * a.dh;
  p.scale = a.scale;
  p.nq = static_cast<int>((a.L + kQT - 1) / kQT);
  Params g = p;
  int nglobal = 0;
  for (int h = 0; h < a.H; ++h) {
    if (a.kinds[h] == 2) {
      g.heads[nglobal++] = h;
    } else {
      p.local[p.nstream] = a.kinds[h] == 1;
      p.heads[p.nstream++] = h;
    }
  }
  if (p.nstream > 0) {
    Status st = a.dh <= 32 ? LaunchStream<S, 32>(p, stream)
                : a.dh <= 64 ? LaunchStream<S, 64>(p, stream)
                             : LaunchStream<S, 128>(p, stream);
    if (!st.ok()) return st;
  }
  if (nglobal > 0) {
    const int64_t warps = a.B * a.L * nglobal;
    const int64_t blocks = (warps * 32 + kThreads - 1) / kThreads;
    if (blocks > 0x7FFFFFFF) return InvalidArgument("LaunchEgyptian", "tensor too large for the global-head grid");
    return CheckedLaunch(&GlobalKernel<S>, static_cast<unsigned>(blocks), kThreads, 0, stream, g, nglobal);
  }
  return Status{};
}

}  // namespace

Status LaunchEgyptian(const EgyptianArgs& a) {
  if (a.B == 0 || a.L == 0 || a.H == 0 || a.dh == 0) return Status{};
  if (!a.q || !a.k || !a.v || !a.y) return InvalidArgument("LaunchEgyptian", "null pointer");
  if (a.H > kEgyptianMaxHeads) return InvalidArgument("LaunchEgyptian", "more than 64 heads");
  if (a.dh > kEgyptianMaxHeadSize) return InvalidArgument("LaunchEgyptian", "head size above 128");
  switch (a.dtype) {
    case DType::kFloat32: return LaunchTyped<float>(a);
    case DType::kFloat16: return LaunchTyped<uint16_t>(a);
    default: break;
  }
  return InvalidArgument("LaunchEgyptian", "unsupported element type (float32 and float16 only)");
}

}  // namespace cuda
}  // namespace n6
