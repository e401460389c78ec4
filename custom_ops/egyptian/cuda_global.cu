// EgyptianAttention CUDA, global heads: one warp per (batch, query, global head), a streaming
// softmax over its keys: {0, Lk-1} (causal=0), or the sinks j < min(sinks, p+1) and the query's
// own key p (causal=1). O(Lq * (sinks + 1) * dh). Each lane holds channels lane + 32 c (head size
// up to 128).
#include "egyptian/cuda_params.cuh"

namespace n6 {
namespace cuda {
namespace egy {
namespace {

constexpr int kThreads = 128;

template <class S>
__global__ void __launch_bounds__(kThreads) GlobalKernel(const Params p, int nglobal) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t total = p.B * p.Lq * nglobal;
  if (warp >= total) return;
  const int gi = static_cast<int>(warp % nglobal);
  const int64_t bi = warp / nglobal, b = bi / p.Lq, i = bi % p.Lq;
  const int h = p.heads[gi];
  const S* qg = static_cast<const S*>(p.q) + p.QOff(b, i, h);
  const int64_t pos = p.off + i;
  const int64_t nsink = p.causal ? (p.sinks < pos + 1 ? p.sinks : pos + 1) : 1;
  const int64_t last = p.causal ? pos : p.Lk - 1;
  const int64_t nkeys = nsink + (last >= nsink ? 1 : 0);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float m = kNegInf, l = 0.0f;
  for (int64_t t = 0; t < nkeys; ++t) {
    const int64_t j = t < nsink ? t : last;
    if (p.mask && p.mask[b * p.Lk + j] == 0) continue;  // the same for the whole warp
    const S* kg = static_cast<const S*>(p.k) + p.KOff(b, j, h);
    float dot = 0.0f;
    for (int64_t d = lane; d < p.dh; d += 32) dot = fmaf(Ld(qg + d), Ld(kg + d), dot);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float s = dot * p.scale;
    if (s > m) {  // rescale what was summed so far
      const float corr = m == kNegInf ? 0.0f : __expf(m - s);
      l *= corr;
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[c] *= corr;
      m = s;
    }
    const float e = __expf(s - m);
    l += e;
    const S* vg = static_cast<const S*>(p.v) + p.KOff(b, j, h);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < p.dh) acc[c] = fmaf(e, Ld(vg + d), acc[c]);
    }
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  S* yrow = static_cast<S*>(p.y) + p.QOff(b, i, h);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < p.dh) St(yrow + d, acc[c] * inv);
  }
}

}  // namespace

Status LaunchGlobal(const Params& p, int nglobal, DType dtype, cudaStream_t stream) {
  static_assert(kEgyptianMaxHeadSize <= 4 * 32, "four channels per lane");
  const int64_t warps = p.B * p.Lq * nglobal;
  const int64_t blocks = (warps * 32 + kThreads - 1) / kThreads;
  if (blocks > 0x7FFFFFFF) return InvalidArgument("LaunchEgyptian", "tensor too large for the global-head grid");
  if (dtype == DType::kFloat32) {
    return CheckedLaunch(&GlobalKernel<float>, static_cast<unsigned>(blocks), kThreads, 0, stream, p, nglobal);
  }
  return CheckedLaunch(&GlobalKernel<uint16_t>, static_cast<unsigned>(blocks), kThreads, 0, stream, p, nglobal);
}

}  // namespace egy
}  // namespace cuda
}  // namespace n6
