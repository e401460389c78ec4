// FFTMix(X, F6, F12, F24) -> Y [B, L, 3D], CUDA kernel (float32 / float16, fp32 compute).
// The math: fftmix/fftmix.h (direct symmetric windowed circular convolution).
//
// One thread per (channel group, 24-token block): it builds the taps of its channels from F
// (taps_w[t] = sum_m coef[t][m] F_w[m], coefficients passed by value; F stays in L1/L2), loads
// the block's 24 rows of its channels into registers (X is read once) and writes the three
// scales (three coalesced writes per token). 24 is a multiple of every window, so the
// block holds whole windows of all scales and the circular indices are compile-time after
// unrolling. Channel groups: 2 channels per thread (float2 / half2 loads) when D is even and the
// buffers allow it, else 1. Scales with w > L are written as zeros.
#include <algorithm>

#include "common/cuda_helpers.cuh"
#include "fftmix/fftmix_cuda.h"

namespace n6 {
namespace cuda {
namespace {

constexpr int kTokens = 24;
constexpr int kThreads = 128;
constexpr int kBlocksPerThread = 1;  // 24-token blocks per thread: 1 keeps enough threads in flight
                                     // (the taps cost ~40% of the convolution flops; the kernel is
                                     // bound by memory, not arithmetic)

template <class S, int C>
struct Io;
template <>
struct Io<float, 1> {
  __device__ static void Load(const float* p, float (&v)[1]) { v[0] = __ldg(p); }
  __device__ static void Store(float* p, const float (&v)[1]) { *p = v[0]; }
};
template <>
struct Io<float, 2> {
  __device__ static void Load(const float* p, float (&v)[2]) {
    const float2 t = __ldg(reinterpret_cast<const float2*>(p));
    v[0] = t.x;
    v[1] = t.y;
  }
  __device__ static void Store(float* p, const float (&v)[2]) { *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]); }
};
template <>
struct Io<uint16_t, 1> {
  __device__ static void Load(const uint16_t* p, float (&v)[1]) { v[0] = CodecF16::Load1(p); }
  __device__ static void Store(uint16_t* p, const float (&v)[1]) { CodecF16::Store1(p, v[0]); }
};
template <>
struct Io<uint16_t, 2> {
  __device__ static void Load(const uint16_t* p, float (&v)[2]) {
    const float2 t = CodecF16::Unpack2(__ldg(reinterpret_cast<const unsigned int*>(p)));
    v[0] = t.x;
    v[1] = t.y;
  }
  __device__ static void Store(uint16_t* p, const float (&v)[2]) {
    *reinterpret_cast<uint32_t*>(p) = CodecF16::Pack2(v[0], v[1]);
  }
};

struct Params {
  const void* x;
  const void* f[3];
  void* y;
  int64_t B, L, D;
  int64_t blocks;  // 24-token blocks per sequence
  int64_t gx;      // channel blocks
  FFTMixCoefs coefs;
};

// Taps of window W (H = W/2 + 1 of them) for the thread's C channels.
template <class S, int C, int W>
__device__ __forceinline__ void Taps(const S* f, const float (&coef)[W / 2 + 1][W / 2 + 1], int64_t D, int64_t d,
                                     float (&taps)[W / 2 + 1][C]) {
  constexpr int H = W / 2 + 1;
  float fm[H][C];
#pragma unroll
  for (int m = 0; m < H; ++m) Io<S, C>::Load(f + m * D + d, fm[m]);
#pragma unroll
  for (int t = 0; t < H; ++t) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      float acc = 0.0f;
#pragma unroll
      for (int m = 0; m < H; ++m) acc = fmaf(coef[t][m], fm[m][c], acc);
      taps[t][c] = acc;
    }
  }
}

// Writes scale `s` (window W) of the block's rows [0, n) to y.
template <class S, int C, int W>
__device__ __forceinline__ void Scale(const float (&x)[kTokens][C], const float (&taps)[W / 2 + 1][C], bool active,
                                      S* y, int64_t row_stride, int n) {
  constexpr int half = W / 2;
#pragma unroll
  for (int r = 0; r < kTokens; ++r) {
    if (r >= n) break;
    const int ws = (r / W) * W, i = r % W;
    float out[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      float acc = 0.0f;
      if (active) {
        acc = taps[0][c] * x[ws + i][c];
#pragma unroll
        for (int t = 1; t < half; ++t) acc = fmaf(taps[t][c], x[ws + (i + t) % W][c] + x[ws + (i - t + W) % W][c], acc);
        acc = fmaf(taps[half][c], x[ws + (i + half) % W][c], acc);
      }
      out[c] = acc;
    }
    Io<S, C>::Store(y + r * row_stride, out);
  }
}

template <class S, int C>
__global__ void __launch_bounds__(kThreads) FFTMixKernel(const Params p) {
  // 1-D grid: block = (token group) * gx + (channel block)
  const int64_t cx = blockIdx.x % p.gx, ty = blockIdx.x / p.gx;
  const int64_t d = (cx * kThreads + threadIdx.x) * C;
  if (d >= p.D) return;
  const S* f6 = static_cast<const S*>(p.f[0]);
  const S* f12 = static_cast<const S*>(p.f[1]);
  const S* f24 = static_cast<const S*>(p.f[2]);
  const bool a6 = p.L >= 6, a12 = p.L >= 12, a24 = p.L >= 24;
  float t6[4][C], t12[7][C], t24[13][C];
  Taps<S, C, 6>(f6, p.coefs.c6, p.D, d, t6);
  Taps<S, C, 12>(f12, p.coefs.c12, p.D, d, t12);
  Taps<S, C, 24>(f24, p.coefs.c24, p.D, d, t24);
  const S* x = static_cast<const S*>(p.x);
  S* y = static_cast<S*>(p.y);
  const int64_t total = p.B * p.blocks;
  for (int k = 0; k < kBlocksPerThread; ++k) {
    const int64_t task = ty * kBlocksPerThread + k;
    if (task >= total) break;
    const int64_t b = task / p.blocks, l0 = (task % p.blocks) * kTokens;
    const int n = static_cast<int>(p.L - l0 < kTokens ? p.L - l0 : kTokens);
    float xr[kTokens][C];
#pragma unroll
    for (int r = 0; r < kTokens; ++r) {
      if (r < n) {
        Io<S, C>::Load(x + ((b * p.L + l0 + r) * p.D + d), xr[r]);
      } else {
#pragma unroll
        for (int c = 0; c < C; ++c) xr[r][c] = 0.0f;
      }
    }
    S* yb = y + (b * p.L + l0) * 3 * p.D + d;
    Scale<S, C, 6>(xr, t6, a6, yb, 3 * p.D, n);
    Scale<S, C, 12>(xr, t12, a12, yb + p.D, 3 * p.D, n);
    Scale<S, C, 24>(xr, t24, a24, yb + 2 * p.D, 3 * p.D, n);
  }
}

template <class S, int C>
Status Launch(const FFTMixArgs& a) {
  Params p;
  p.x = a.x;
  for (int s = 0; s < 3; ++s) p.f[s] = a.f[s];
  p.y = a.y;
  p.B = a.B;
  p.L = a.L;
  p.D = a.D;
  p.blocks = (a.L + kTokens - 1) / kTokens;
  p.coefs = a.coefs;
  const int64_t groups = (a.D + C - 1) / C;
  p.gx = (groups + kThreads - 1) / kThreads;
  const int64_t gy = (a.B * p.blocks + kBlocksPerThread - 1) / kBlocksPerThread;
  if (p.gx * gy > 0x7FFFFFFF) return InvalidArgument("LaunchFFTMix", "tensor too large for the FFTMix grid");
  return CheckedLaunch(&FFTMixKernel<S, C>, static_cast<unsigned>(p.gx * gy), kThreads, 0,
                       static_cast<cudaStream_t>(a.stream), p);
}

bool Aligned(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// ---- causal mode: one thread per output element (b, t, d), all three scales; coalesced along D.
// A 24-window holds whole windows of the smaller scales, so one pass over the <= 24 rows back to
// the window start serves all three.
template <class S>
__device__ __forceinline__ float Ld(const S* p) {
  float v[1];
  Io<S, 1>::Load(p, v);
  return v[0];
}

template <class S>
__global__ void __launch_bounds__(kThreads) FFTMixCausalKernel(const FFTMixCausalArgs a) {
  const S* x = static_cast<const S*>(a.x);
  const S* past = static_cast<const S*>(a.past);
  const S* k6 = static_cast<const S*>(a.k[0]);
  const S* k12 = static_cast<const S*>(a.k[1]);
  const S* k24 = static_cast<const S*>(a.k[2]);
  S* y = static_cast<S*>(a.y);
  const int64_t n = a.B * a.L * a.D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % a.D, bt = i / a.D, t = bt % a.L, b = bt / a.L;
    const int64_t pos = a.pl + t;
    const int back6 = static_cast<int>(pos % 6), back12 = static_cast<int>(pos % 12),
              back24 = static_cast<int>(pos % 24);
    float acc6 = 0.0f, acc12 = 0.0f, acc24 = 0.0f;
    for (int j = 0; j <= back24; ++j) {
      const int64_t q = pos - j;
      const float xv = q >= a.pl ? Ld(x + (b * a.L + q - a.pl) * a.D + d)
                                 : Ld(past + (b * a.P + q - (a.pl - a.P)) * a.D + d);
      if (j <= back6) acc6 = fmaf(Ld(k6 + j * a.D + d), xv, acc6);
      if (j <= back12) acc12 = fmaf(Ld(k12 + j * a.D + d), xv, acc12);
      acc24 = fmaf(Ld(k24 + j * a.D + d), xv, acc24);
    }
    S* yo = y + bt * 3 * a.D + d;
    const float o6[1] = {acc6}, o12[1] = {acc12}, o24[1] = {acc24};
    Io<S, 1>::Store(yo, o6);
    Io<S, 1>::Store(yo + a.D, o12);
    Io<S, 1>::Store(yo + 2 * a.D, o24);
  }
}

// present[b, r] = input row at position pl + L - keep + r (from x or past)
template <class S>
__global__ void __launch_bounds__(kThreads) FFTMixPresentKernel(const FFTMixCausalArgs a) {
  const S* x = static_cast<const S*>(a.x);
  const S* past = static_cast<const S*>(a.past);
  S* out = static_cast<S*>(a.present);
  const int64_t n = a.B * a.keep * a.D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % a.D, br = i / a.D, r = br % a.keep, b = br / a.keep;
    const int64_t q = a.pl + a.L - a.keep + r;
    out[i] = q >= a.pl ? x[(b * a.L + q - a.pl) * a.D + d] : past[(b * a.P + q - (a.pl - a.P)) * a.D + d];
  }
}

template <class S>
Status LaunchCausal(const FFTMixCausalArgs& a) {
  constexpr int64_t kMaxBlocks = 65535 * 16;
  if (a.present && a.keep > 0) {
    const int64_t blocks = std::min<int64_t>((a.B * a.keep * a.D + kThreads - 1) / kThreads, kMaxBlocks);
    const Status st = CheckedLaunch(&FFTMixPresentKernel<S>, static_cast<unsigned>(blocks), kThreads, 0,
                                    static_cast<cudaStream_t>(a.stream), a);
    if (!st.ok()) return st;
  }
  if (a.L == 0) return Status{};
  const int64_t blocks = std::min<int64_t>((a.B * a.L * a.D + kThreads - 1) / kThreads, kMaxBlocks);
  return CheckedLaunch(&FFTMixCausalKernel<S>, static_cast<unsigned>(blocks), kThreads, 0,
                       static_cast<cudaStream_t>(a.stream), a);
}

}  // namespace

Status LaunchFFTMixCausal(const FFTMixCausalArgs& a) {
  if (a.B == 0 || a.D == 0 || (a.L == 0 && (!a.present || a.keep == 0))) return Status{};
  if (!a.x || !a.y || !a.k[0] || !a.k[1] || !a.k[2] || (a.P > 0 && !a.past))
    return InvalidArgument("LaunchFFTMixCausal", "null pointer");
  switch (a.dtype) {
    case DType::kFloat32: return LaunchCausal<float>(a);
    case DType::kFloat16: return LaunchCausal<uint16_t>(a);
    default: break;
  }
  return InvalidArgument("LaunchFFTMixCausal", "unsupported element type (float32 and float16 only)");
}

Status LaunchFFTMix(const FFTMixArgs& a) {
  if (a.B == 0 || a.L == 0 || a.D == 0) return Status{};
  if (!a.x || !a.y || !a.f[0] || !a.f[1] || !a.f[2]) return InvalidArgument("LaunchFFTMix", "null pointer");
  const size_t elem = a.dtype == DType::kFloat32 ? 4 : 2;
  const bool pair = a.D % 2 == 0 && Aligned(a.x, 2 * elem) && Aligned(a.y, 2 * elem) && Aligned(a.f[0], 2 * elem) &&
                    Aligned(a.f[1], 2 * elem) && Aligned(a.f[2], 2 * elem);
  switch (a.dtype) {
    case DType::kFloat32: return pair ? Launch<float, 2>(a) : Launch<float, 1>(a);
    case DType::kFloat16: return pair ? Launch<uint16_t, 2>(a) : Launch<uint16_t, 1>(a);
    default: break;
  }
  return InvalidArgument("LaunchFFTMix", "unsupported element type (float32 and float16 only)");
}

}  // namespace cuda
}  // namespace n6
