// EgyptianAttention CUDA, full and local heads of a call with few queries (decode steps, Lq <
// kDecodeBelow): one block of kWarps warps per (batch, query, head); the warps take turns over
// chunks of 32 keys of the query's interval [KeyLo, KeyHi]. Per chunk each lane scores one key
// (a dot product with the query from shared memory), the warp does the online-softmax update
// with shuffles, and P.V accumulates channels lane + 32 c (head size up to 128, coalesced V rows).
// The warps' partial (max, sum, output) are merged through shared memory at the end. Cost
// O(keys seen * dh) per query and head, with B * Lq * heads * kWarps warps in flight (the tiled
// kernels would give one block of 64 mostly empty query rows per head).
#include "egyptian/cuda_params.cuh"

namespace n6 {
namespace cuda {
namespace egy {
namespace {

constexpr int kWarps = 8;
constexpr int kDecThreads = 32 * kWarps;
constexpr int kMaxDh = kEgyptianMaxHeadSize;
static_assert(kMaxDh <= 4 * 32, "four channels per lane");

template <class S>
__global__ void __launch_bounds__(kDecThreads) DecodeKernel(const Params p) {
  __shared__ float qs[kMaxDh];
  __shared__ float wm[kWarps], wl[kWarps];
  __shared__ float wacc[kWarps][kMaxDh];
  const int64_t blk = blockIdx.x;
  const int si = static_cast<int>(blk % p.nstream);
  const int64_t bi = blk / p.nstream, b = bi / p.Lq, i = bi % p.Lq;
  const int h = p.heads[si];
  const bool local = p.local[si] != 0;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const S* qg = static_cast<const S*>(p.q) + p.QOff(b, i, h);
  for (int d = tid; d < p.dh; d += kDecThreads) qs[d] = Ld(qg + d) * p.scale;
  __syncthreads();
  const int64_t pos = p.off + i, lo = p.KeyLo(local, pos), hi = p.KeyHi(local, pos);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float m = kNegInf, l = 0.0f;
  for (int64_t kc = lo + 32 * warp; kc <= hi; kc += 32 * kWarps) {
    const int64_t j = kc + lane;
    float s = kNegInf;
    if (j <= hi && (!p.mask || p.mask[b * p.Lk + j] != 0)) {
      const S* kr = static_cast<const S*>(p.k) + p.KOff(b, j, h);
      float dot = 0.0f;
      for (int64_t d = 0; d < p.dh; ++d) dot = fmaf(qs[d], Ld(kr + d), dot);
      s = dot;
    }
    float mx = s;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (mx == kNegInf) continue;  // the same for the whole warp
    const float mnew = fmaxf(m, mx);
    const float corr = m == kNegInf ? 0.0f : __expf(m - mnew);
    const float e = s == kNegInf ? 0.0f : __expf(s - mnew);
    float sum = e;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    l = l * corr + sum;
    m = mnew;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[c] *= corr;
    for (int t = 0; t < 32; ++t) {
      const float pj = __shfl_sync(0xffffffffu, e, t);
      if (pj == 0.0f) continue;  // the same for the whole warp
      const S* vr = static_cast<const S*>(p.v) + p.KOff(b, kc + t, h);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t d = lane + 32 * c;
        if (d < p.dh) acc[c] = fmaf(pj, Ld(vr + d), acc[c]);
      }
    }
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < p.dh) wacc[warp][d] = acc[c];
  }
  __syncthreads();
  float M = kNegInf;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm[w]);
  S* yrow = static_cast<S*>(p.y) + p.QOff(b, i, h);
  for (int d = tid; d < p.dh; d += kDecThreads) {
    float L = 0.0f, O = 0.0f;
    if (M != kNegInf) {
      for (int w = 0; w < kWarps; ++w) {
        if (wm[w] == kNegInf) continue;
        const float f = __expf(wm[w] - M);
        L += wl[w] * f;
        O += wacc[w][d] * f;
      }
    }
    St(yrow + d, L > 0.0f ? O / L : 0.0f);
  }
}

}  // namespace

Status LaunchDecode(const Params& p, DType dtype, cudaStream_t stream) {
  const int64_t blocks = p.B * p.Lq * p.nstream;
  if (blocks > 0x7FFFFFFF) return InvalidArgument("LaunchEgyptian", "tensor too large for the decode grid");
  if (dtype == DType::kFloat32) {
    return CheckedLaunch(&DecodeKernel<float>, static_cast<unsigned>(blocks), kDecThreads, 0, stream, p);
  }
  return CheckedLaunch(&DecodeKernel<uint16_t>, static_cast<unsigned>(blocks), kDecThreads, 0, stream, p);
}

}  // namespace egy
}  // namespace cuda
}  // namespace n6
