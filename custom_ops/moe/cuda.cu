// MoE CUDA kernels (float32 / float16 storage, fp32 compute). Definition: n6onnx/ops/moe.py;
// routing and activations shared with the CPU kernel: moe/moe.h.
//
// Everything is enqueued on onnxruntime's compute stream for the node:
//   1. Route: one thread per token (moe::RouteToken on the fp32 logits): `keep` (expert, weight)
//      entries per token; a histogram of the entries of nonzero weight per expert (atomicAdd).
//   2. Scan (one thread): exclusive prefix sum of the histogram -> each expert's range in the
//      sorted entry list, and the list of 64-row tiles (expert, first row).
//   3. Fill: one thread per entry: its position in its expert's range (atomicAdd on a cursor).
//      The order inside an expert's range may vary from run to run; it never changes a value,
//      because every row of the GEMMs below is computed independently and written to its own
//      place.
//   4. Up GEMM: per (tile, 64 columns of H): rows of X gathered by token, times W1[e]
//      (and W3[e] for swiglu), + b1, activation -> an fp32 [entries, H] buffer.
//   5. Down GEMM: per (tile, 64 columns of D): that buffer times W2[e], + b2, times the routing
//      weight -> the entry's row of an fp32 [N * keep, D] buffer.
//   6. Reduce: per token, the sum of its entries in slot (= expert index) order, rounded once to T.
// Deterministic: no floating-point atomics; the sum order per token is fixed.
//
// GEMMs: shared-memory tiled (64 x 64 output tile, k-steps of 16, 256 threads x 4 x 4 outputs read
// with 128-bit shared loads, fp32 fused multiply-adds); float16 operands are widened when staged
// into shared memory (see below for the opt-in tensor-core path). The grid has one block row per
// possible tile (an upper bound computed on the host: entries / 64 + E); blocks past the real tile
// count (known on the device only) exit at once.
//
// Scratch memory: one ScratchAlloc / ScratchFree pair per call on the same stream
// (common/cuda_helpers.cuh: the stream-ordered allocator, freed memory kept in the pool).
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "common/cuda_helpers.cuh"
#include "moe/moe_cuda.h"

namespace n6 {
namespace moe {
namespace cuda {
namespace {

using n6::cuda::CheckedLaunch;
using n6::cuda::CudaStatus;
using n6::cuda::InvalidArgument;
using n6::cuda::ScratchAlloc;
using n6::cuda::ScratchFree;
using n6::cuda::Status;

constexpr int kTM = 64, kTN = 64, kTK = 16, kThreads = 256;

__device__ __forceinline__ float Ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float Ld(const __half* p, size_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void St(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void St(__half* p, size_t i, float v) { p[i] = __float2half_rn(v); }

struct Lists {
  float* lf;          // [N, G] fp32 logits
  int* tok_e;         // [N * keep]
  float* tok_w;       // [N * keep]
  int* counts;        // [E] (zeroed)
  int* offsets;       // [E + 1]
  int* cursor;        // [E]
  int* order;         // [entries] sorted by expert: entry = token * keep + slot
  int* tile_expert;   // [max_tiles]
  int* tile_start;    // [max_tiles]
  int* ntiles;        // [1]
  float* hbuf;        // [N * keep, H] rows in sorted order
  float* contrib;     // [N * keep, D]
};

template <class T>
__global__ void ToFloatKernel(const T* src, float* dst, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dst[i] = Ld(src, i);
}

__global__ void RouteKernel(Problem pr, const float* importance, Lists l) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < pr.N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int* e = l.tok_e + n * pr.keep;
    float* w = l.tok_w + n * pr.keep;
    RouteToken(l.lf + n * pr.G, pr, importance, e, w);
    for (int s = 0; s < pr.keep; ++s)
      if (w[s] != 0.0f) atomicAdd(l.counts + e[s], 1);
  }
}

__global__ void ScanKernel(int E, Lists l) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int off = 0, nt = 0;
  for (int e = 0; e < E; ++e) {
    l.offsets[e] = off;
    l.cursor[e] = off;
    const int c = l.counts[e];
    for (int t = 0; t < c; t += kTM) {
      l.tile_expert[nt] = e;
      l.tile_start[nt] = off + t;
      ++nt;
    }
    off += c;
  }
  l.offsets[E] = off;
  *l.ntiles = nt;
}

__global__ void FillKernel(int64_t entries, Lists l) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < entries;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (l.tok_w[i] == 0.0f) continue;
    const int pos = atomicAdd(l.cursor + l.tok_e[i], 1);
    l.order[pos] = static_cast<int>(i);
  }
}

// kUp: hbuf[row, :] = act(X[token] W1[e] + b1[e] (, X[token] W3[e]));  K = D, n = H.
// !kUp: contrib[entry, :] = w * (hbuf[row] W2[e] + b2[e]);             K = H, n = D.
template <class T, bool kUp, int kAct>
__global__ void __launch_bounds__(kThreads) ExpertGemm(Problem pr, const T* x, const T* w, const T* w3, const T* bias,
                                                       Lists l) {
  const int tile = blockIdx.x;
  if (tile >= *l.ntiles) return;
  constexpr bool kGate = kUp && kAct == kSwiglu;
  const int e = l.tile_expert[tile];
  const int start = l.tile_start[tile];
  const int rows = min(kTM, l.offsets[e + 1] - start);
  const int K = static_cast<int>(kUp ? pr.D : pr.H);
  const int n = static_cast<int>(kUp ? pr.H : pr.D);
  const int c0 = blockIdx.y * kTN;
  const T* B = w + static_cast<size_t>(e) * K * n;
  const T* B3 = kGate ? w3 + static_cast<size_t>(e) * K * n : nullptr;

  __shared__ __align__(16) float As[kTK][kTM + 4];  // rows of 68 floats: float4-aligned
  __shared__ __align__(16) float Bs[kTK][kTN];
  __shared__ __align__(16) float Bs3[kGate ? kTK : 1][kGate ? kTN : 4];
  __shared__ int src_row[kTM];  // X token (up) or hbuf row (down)
  const int tid = threadIdx.x;
  if (tid < kTM) {
    const int r = tid < rows ? tid : 0;
    src_row[tid] = kUp ? l.order[start + r] / pr.keep : start + r;
  }
  __syncthreads();
  const int tx = tid % 16, ty = tid / 16;
  float acc[4][4], acc3[kGate ? 4 : 1][kGate ? 4 : 1];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  if constexpr (kGate) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc3[i][j] = 0.0f;
  }
  for (int k0 = 0; k0 < K; k0 += kTK) {
#pragma unroll
    for (int q = 0; q < (kTM * kTK) / kThreads; ++q) {
      const int idx = tid + q * kThreads;
      const int r = idx / kTK, kk = idx % kTK;
      float v = 0.0f;
      if (r < rows && k0 + kk < K) {
        const size_t off = static_cast<size_t>(src_row[r]) * K + k0 + kk;
        v = kUp ? Ld(x, off) : l.hbuf[off];
      }
      As[kk][r] = v;
    }
#pragma unroll
    for (int q = 0; q < (kTK * kTN) / kThreads; ++q) {
      const int idx = tid + q * kThreads;
      const int kk = idx / kTN, c = idx % kTN;
      const bool in = k0 + kk < K && c0 + c < n;
      const size_t off = static_cast<size_t>(k0 + kk) * n + c0 + c;
      Bs[kk][c] = in ? Ld(B, off) : 0.0f;
      if constexpr (kGate) Bs3[kk][c] = in ? Ld(B3, off) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTK; ++kk) {
      // 128-bit shared loads: 4 rows of A, 4 adjacent columns of B (the thread's 4 x 4 outputs)
      const float4 av = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
      const float4 bv = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
      const float a[4] = {av.x, av.y, av.z, av.w};
      const float b[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      if constexpr (kGate) {
        const float4 b3v = *reinterpret_cast<const float4*>(&Bs3[kk][tx * 4]);
        const float b3[4] = {b3v.x, b3v.y, b3v.z, b3v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc3[i][j] = fmaf(a[i], b3[j], acc3[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= rows) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = c0 + tx * 4 + j;
      if (c >= n) continue;
      float v = acc[i][j];
      if (bias) v += Ld(bias, static_cast<size_t>(e) * n + c);
      if constexpr (kUp) {
        float g = 0.0f;
        if constexpr (kGate) g = acc3[i][j];
        l.hbuf[static_cast<size_t>(start + r) * n + c] = Activate<kAct>(v, g);
      } else {
        const int entry = l.order[start + r];
        l.contrib[static_cast<size_t>(entry) * n + c] = l.tok_w[entry] * v;
      }
    }
  }
}


// ---------------------------------------------------------------- tensor-core path (float16)
// Opt-in (N6ONNX_MOE_CUDA_TC=1 when the session creates the kernel). WMMA 16x16x16 fragments,
// fp16 operands, fp32 accumulators; 64 x 64 block tile, k-steps of 32, 4 warps of 32 x 32.
// Up GEMM: X and W1 (W3) are float16 inputs, so every product is exact and accumulated in fp32.
// Down GEMM: its A operand is the fp32 activation; it is split into hi = fp16(a) and
// lo = fp16(a - hi), and both are multiplied by W2 (two MMAs): a is carried to ~22 bits, so the
// op still computes in fp32 (no extra rounding of the intermediate to float16).
namespace wmma = nvcuda::wmma;
constexpr int kTcBM = 64, kTcBN = 64, kTcBK = 32, kTcThreads = 128;
constexpr int kLdA = kTcBK + 8;  // halves; multiple of 8, rows stay 32-byte aligned
constexpr int kLdB = kTcBN + 8;  // halves
constexpr int kLdC = kTcBN + 4;  // floats; multiple of 4
static_assert(kTcBN == kTN && kTcBM == kTM, "both GEMM paths share the tile list and the column-block grid");

template <bool kUp, int kAct>
__global__ void __launch_bounds__(kTcThreads) ExpertGemmTc(Problem pr, const __half* x, const __half* w,
                                                         const __half* w3, const __half* bias, Lists l) {
  const int tile = blockIdx.x;
  if (tile >= *l.ntiles) return;
  constexpr bool kGate = kUp && kAct == kSwiglu;
  constexpr bool kSplit = !kUp;
  constexpr int kSmemAB = (kTcBM * kLdA * (kSplit ? 2 : 1) + kTcBK * kLdB * (kGate ? 2 : 1)) * 2;
  constexpr int kSmemC = kTcBM * kLdC * 4 * (kGate ? 2 : 1);
  __shared__ __align__(128) unsigned char smem[kSmemAB > kSmemC ? kSmemAB : kSmemC];
  __shared__ int src_row[kTcBM];
  __half* As = reinterpret_cast<__half*>(smem);
  __half* As_lo = As + kTcBM * kLdA;
  __half* Bs = As + kTcBM * kLdA * (kSplit ? 2 : 1);
  __half* Bs3 = Bs + kTcBK * kLdB;
  float* Cs = reinterpret_cast<float*>(smem);  // reused after the main loop
  float* Cs3 = Cs + kTcBM * kLdC;

  const int e = l.tile_expert[tile];
  const int start = l.tile_start[tile];
  const int rows = min(kTcBM, l.offsets[e + 1] - start);
  const int K = static_cast<int>(kUp ? pr.D : pr.H);
  const int n = static_cast<int>(kUp ? pr.H : pr.D);
  const int c0 = blockIdx.y * kTcBN;
  const __half* B = w + static_cast<size_t>(e) * K * n;
  const __half* B3 = kGate ? w3 + static_cast<size_t>(e) * K * n : nullptr;
  const int tid = threadIdx.x;
  if (tid < kTcBM) {
    const int r = tid < rows ? tid : 0;
    src_row[tid] = kUp ? l.order[start + r] / pr.keep : start + r;
  }
  __syncthreads();
  const int warp = tid / 32, wm = warp / 2, wn = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2], acc3[kGate ? 2 : 1][kGate ? 2 : 1];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  if constexpr (kGate) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc3[i][j], 0.0f);
  }
  const __half zero = __float2half_rn(0.0f);
  for (int k0 = 0; k0 < K; k0 += kTcBK) {
#pragma unroll
    for (int q = 0; q < (kTcBM * kTcBK) / kTcThreads; ++q) {
      const int idx = tid + q * kTcThreads;
      const int r = idx / kTcBK, kk = idx % kTcBK;
      const bool in = r < rows && k0 + kk < K;
      const size_t off = static_cast<size_t>(src_row[r]) * K + k0 + kk;
      if constexpr (kUp) {
        As[r * kLdA + kk] = in ? x[off] : zero;
      } else {
        const float v = in ? l.hbuf[off] : 0.0f;
        const __half hi = __float2half_rn(v);
        As[r * kLdA + kk] = hi;
        As_lo[r * kLdA + kk] = __float2half_rn(v - __half2float(hi));
      }
    }
#pragma unroll
    for (int q = 0; q < (kTcBK * kTcBN) / kTcThreads; ++q) {
      const int idx = tid + q * kTcThreads;
      const int kk = idx / kTcBN, c = idx % kTcBN;
      const bool in = k0 + kk < K && c0 + c < n;
      const size_t off = static_cast<size_t>(k0 + kk) * n + c0 + c;
      Bs[kk * kLdB + c] = in ? B[off] : zero;
      if constexpr (kGate) Bs3[kk * kLdB + c] = in ? B3[off] : zero;
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kTcBK; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2], alo[kSplit ? 2 : 1];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * kLdA + ks, kLdA);
        if constexpr (kSplit) wmma::load_matrix_sync(alo[i], As_lo + (wm * 32 + i * 16) * kLdA + ks, kLdA);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
        wmma::load_matrix_sync(b, Bs + ks * kLdB + wn * 32 + j * 16, kLdB);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          wmma::mma_sync(acc[i][j], a[i], b, acc[i][j]);
          if constexpr (kSplit) wmma::mma_sync(acc[i][j], alo[i], b, acc[i][j]);
        }
        if constexpr (kGate) {
          wmma::load_matrix_sync(b, Bs3 + ks * kLdB + wn * 32 + j * 16, kLdB);
#pragma unroll
          for (int i = 0; i < 2; ++i) wmma::mma_sync(acc3[i][j], a[i], b, acc3[i][j]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLdC + wn * 32 + j * 16, acc[i][j], kLdC, wmma::mem_row_major);
      if constexpr (kGate)
        wmma::store_matrix_sync(Cs3 + (wm * 32 + i * 16) * kLdC + wn * 32 + j * 16, acc3[i][j], kLdC,
                                wmma::mem_row_major);
    }
  __syncthreads();
  for (int idx = tid; idx < kTcBM * kTcBN; idx += kTcThreads) {
    const int r = idx / kTcBN, c = c0 + idx % kTcBN;
    if (r >= rows || c >= n) continue;
    float v = Cs[r * kLdC + idx % kTcBN];
    if (bias) v += Ld(bias, static_cast<size_t>(e) * n + c);
    if constexpr (kUp) {
      float g = 0.0f;
      if constexpr (kGate) g = Cs3[r * kLdC + idx % kTcBN];
      l.hbuf[static_cast<size_t>(start + r) * n + c] = Activate<kAct>(v, g);
    } else {
      const int entry = l.order[start + r];
      l.contrib[static_cast<size_t>(entry) * n + c] = l.tok_w[entry] * v;
    }
  }
}

template <class T>
__global__ void ReduceKernel(int64_t N, int64_t D, int keep, Lists l, T* y) {
  const int64_t total = N * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, d = i % D;
    float acc = 0.0f;
    for (int s = 0; s < keep; ++s) {  // slot order = expert index order
      const int64_t entry = t * keep + s;
      if (l.tok_w[entry] != 0.0f) acc += l.contrib[entry * D + d];
    }
    St(y, i, acc);
  }
}

unsigned Blocks(int64_t items, int threads) {
  const int64_t b = (items + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

template <class T, bool kUp>
Status LaunchGemm(const Problem& pr, unsigned tiles, cudaStream_t s, const T* x, const T* w, const T* w3,
                  const T* bias, const Lists& l) {
  const int n = static_cast<int>(kUp ? pr.H : pr.D);
  const unsigned col_blocks = static_cast<unsigned>((n + kTN - 1) / kTN);  // kTN == kTcBN
  if (col_blocks > 65535) return InvalidArgument("ExpertGemm", "too many output columns");
  const dim3 grid(tiles, col_blocks);
  constexpr bool kHalf = std::is_same<T, __half>::value;
  const bool tc = kHalf && pr.tensor_cores;
#define N6_MOE_GO(A)                                                                                         \
  do {                                                                                                       \
    if constexpr (kHalf) {                                                                                   \
      if (tc) {                                                                                              \
        ExpertGemmTc<kUp, A><<<grid, kTcThreads, 0, s>>>(pr, x, w, w3, bias, l);                             \
        break;                                                                                               \
      }                                                                                                      \
    }                                                                                                        \
    ExpertGemm<T, kUp, A><<<grid, kThreads, 0, s>>>(pr, x, w, w3, bias, l);                                  \
  } while (0)
  if constexpr (kUp) {
    switch (pr.act) {
      case kGelu: N6_MOE_GO(kGelu); break;
      case kGeluTanh: N6_MOE_GO(kGeluTanh); break;
      case kSilu: N6_MOE_GO(kSilu); break;
      case kRelu: N6_MOE_GO(kRelu); break;
      case kSwiglu: N6_MOE_GO(kSwiglu); break;
      case kPhi6: N6_MOE_GO(kPhi6); break;
      default: return InvalidArgument("ExpertGemm", "unknown activation");
    }
  } else {
    N6_MOE_GO(kGelu);
  }
#undef N6_MOE_GO
  return CudaStatus(cudaGetLastError(), tc ? (kUp ? "ExpertGemmTc (up) launch" : "ExpertGemmTc (down) launch")
                                           : (kUp ? "ExpertGemm (up) launch" : "ExpertGemm (down) launch"));
}

size_t Align(size_t v) { return (v + 255) & ~size_t{255}; }

template <class T>
Status Run(const Args& a) {
  const Problem& pr = a.pr;
  cudaStream_t s = static_cast<cudaStream_t>(a.stream);
  const int64_t N = pr.N, D = pr.D, H = pr.H, E = pr.E, G = pr.G, keep = pr.keep;
  const int64_t entries = N * keep;
  const int64_t max_tiles = entries / kTM + E + 1;
  size_t sizes[12] = {sizeof(float) * N * G, sizeof(int) * entries, sizeof(float) * entries, sizeof(int) * E,
                      sizeof(int) * (E + 1), sizeof(int) * E, sizeof(int) * entries, sizeof(int) * max_tiles,
                      sizeof(int) * max_tiles, sizeof(int), sizeof(float) * entries * H, sizeof(float) * entries * D};
  size_t total = 0;
  for (size_t v : sizes) total += Align(v);
  char* base = nullptr;
  Status st = ScratchAlloc(reinterpret_cast<void**>(&base), total, s);
  if (!st.ok()) return st;
  char* p = base;
  void* parts[12];
  for (int i = 0; i < 12; ++i) {
    parts[i] = p;
    p += Align(sizes[i]);
  }
  Lists l{static_cast<float*>(parts[0]), static_cast<int*>(parts[1]),   static_cast<float*>(parts[2]),
          static_cast<int*>(parts[3]),   static_cast<int*>(parts[4]),   static_cast<int*>(parts[5]),
          static_cast<int*>(parts[6]),   static_cast<int*>(parts[7]),   static_cast<int*>(parts[8]),
          static_cast<int*>(parts[9]),   static_cast<float*>(parts[10]), static_cast<float*>(parts[11])};
  const T* x = static_cast<const T*>(a.x);
  auto steps = [&]() -> Status {
    Status r = CudaStatus(cudaMemsetAsync(l.counts, 0, sizeof(int) * E, s), "cudaMemsetAsync");
    if (!r.ok()) return r;
    r = CheckedLaunch(ToFloatKernel<T>, Blocks(N * G, 256), 256, 0, s, static_cast<const T*>(a.logits), l.lf,
                      static_cast<size_t>(N * G));
    if (!r.ok()) return r;
    r = CheckedLaunch(RouteKernel, Blocks(N, 128), 128, 0, s, pr, a.importance, l);
    if (!r.ok()) return r;
    r = CheckedLaunch(ScanKernel, 1, 1, 0, s, static_cast<int>(E), l);
    if (!r.ok()) return r;
    r = CheckedLaunch(FillKernel, Blocks(entries, 256), 256, 0, s, entries, l);
    if (!r.ok()) return r;
    if (max_tiles > 0x7FFFFFFF) return InvalidArgument("ExpertGemm", "too many tiles");
    const unsigned tiles = static_cast<unsigned>(max_tiles);
    if (H > 0) {
      r = LaunchGemm<T, true>(pr, tiles, s, x, static_cast<const T*>(a.w1), static_cast<const T*>(a.w3),
                              static_cast<const T*>(a.b1), l);
      if (!r.ok()) return r;
    }
    r = LaunchGemm<T, false>(pr, tiles, s, x, static_cast<const T*>(a.w2), nullptr, static_cast<const T*>(a.b2), l);
    if (!r.ok()) return r;
    return CheckedLaunch(ReduceKernel<T>, Blocks(N * D, 256), 256, 0, s, N, D, static_cast<int>(keep), l,
                         static_cast<T*>(a.y));
  };
  st = steps();
  const Status fr = ScratchFree(base, s);
  return st.ok() ? fr : st;
}

}  // namespace

Status Launch(const Args& a) {
  if (a.pr.N == 0 || a.pr.D == 0) return Status{};
  return a.half ? Run<__half>(a) : Run<float>(a);
}

}  // namespace cuda
}  // namespace moe
}  // namespace n6
