// FFTMix(X, F6, F12, F24) -> Y [B, L, 3D]: shared by fftmix/cpu.cc and the CUDA glue.
//
// Per window w in (6, 12, 24), per channel: circular convolution inside each non-overlapping
// window with k_w = irfft(F_w, n=w) (symmetric: k[t] == k[w - t]), padded zeros (past L) taking
// part in the last window; a scale with w > L outputs zeros. This file turns the rfft-domain
// filters F_w [w/2+1, D] into the taps k_w[0 .. w/2] [w/2+1, D] (host code, in double).
//
// Why a direct convolution and not an FFT: w <= 24, so one output costs w/2+1 multiplies and
// w-1 adds with the symmetric taps (y[i] = k0 x[i] + sum_{t=1}^{w/2-1} k_t (x[i+t] + x[i-t]) +
// k_{w/2} x[i+w/2], indices mod w). A radix-2/3 FFT of length w plus its inverse costs
// ~2 * (w/2) log2(w) complex butterflies (about 4x the flops at w = 24) with strided complex
// shuffles, and the per-window FFT setup is not amortised over a longer transform. All three
// scales read the same 24-token block of X once.
#pragma once

#include <cmath>
#include <cstddef>

namespace n6 {
namespace fftmix {

inline constexpr int kNumScales = 3;
inline constexpr int kWindows[kNumScales] = {6, 12, 24};
inline constexpr int kBlock = 24;  // lcm of the windows: a block holds whole windows of every scale
inline constexpr int kMaxTaps = kBlock / 2 + 1;

// The irfft coefficient of rfft bin m for tap t of window w: irfft(F, n=w)[t] = sum_m coef * F[m].
inline double IrfftCoef(int w, int t, int m) {
  const double pi = 3.14159265358979323846;
  const double weight = (m == 0 || 2 * m == w) ? 1.0 : 2.0;
  return weight * std::cos(2.0 * pi * m * t / w) / w;
}

// taps[t * D + d] = irfft(F[:, d], n=w)[t] for t in [0, w/2], from f[m * D + d] = F_w[m, d].
inline void TapsFromFilter(const float* f, int w, size_t D, float* taps) {
  const int half = w / 2;
  for (int t = 0; t <= half; ++t) {
    double c[kMaxTaps];
    for (int m = 0; m <= half; ++m) c[m] = IrfftCoef(w, t, m);
    for (size_t d = 0; d < D; ++d) {
      double acc = 0.0;
      for (int m = 0; m <= half; ++m) acc += c[m] * static_cast<double>(f[m * D + d]);
      taps[t * D + d] = static_cast<float>(acc);
    }
  }
}

}  // namespace fftmix
}  // namespace n6
