// Branch-free fp32 exp / erf / tanh shared by the CPU kernels (g++) and the CUDA kernels (nvcc).
// Each function is written once; the arithmetic is fixed (no FMA contraction where the build
// forbids it, see common/scalar.h), so every caller rounds identically.
//
//   Exp(x)       exp, ~2 ulp for x in [-87, 88] (inputs clamped to it); Cephes expf form.
//   ExpCore(x)   the Cephes reduction + polynomial for x already in [-87, 88], for a scalar
//                float or a GCC vector of floats (common/vec16.h builds its ExpV on it).
//   Erf(x)       |error| < 5e-7, the rational approximation of Eigen / XLA (x clamped to [-4, 4]).
//   Tanh(z)      1 - 2 / (exp(2z) + 1) through Exp.
#pragma once

#include <cstdint>

#include "common/scalar.h"

#if defined(__GNUC__) && !defined(__CUDACC__)
// ExpCore on 64-byte vectors (common/vec16.h) is always inlined into its ISA clone: the -Wpsabi
// note about the vector ABI of the generic target never applies.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace n6 {

// 2^n (n an integer-valued float in [-127, 128]) times p, by building the exponent bits.
N6_HD float ScaleByPow2(float p, float n) {
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
#if defined(__CUDA_ARCH__)
  return p * __int_as_float(e);
#else
  float scale;
  __builtin_memcpy(&scale, &e, sizeof scale);
  return p * scale;
#endif
}

// exp(x) = p * 2^n for x in [-87, 88]: returns p and stores n (integer-valued). F is float or
// a GCC float vector (common/vec16.h builds its ExpV on it). Every operation is written out (no
// FMA), in this order.
template <class F>
N6_HD F ExpCore(F x, F* n_out) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: round to nearest integer
  const F n = (x * 1.44269504088896341f + magic) - magic;
  const F r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  *n_out = n;
  return p;
}

// exp with ~2 ulp error for x in [-87, 88] (Cephes expf form, branch-free, vectorises).
N6_HD float Exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float n;
  const float p = ExpCore(x, &n);
  return ScaleByPow2(p, n);
}

// erf, |error| < 5e-7: the rational approximation used by Eigen / XLA (clamped to [-4, 4]).
N6_HD float Erf(float x) {
  x = x < -4.0f ? -4.0f : (x > 4.0f ? 4.0f : x);
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  p = p * x;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return p / q;
}

// tanh(z) = 1 - 2 / (exp(2z) + 1), saturating through Exp's clamp.
N6_HD float Tanh(float z) { return 1.0f - 2.0f / (Exp(2.0f * z) + 1.0f); }

}  // namespace n6
