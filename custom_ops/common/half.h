// Portable 16-bit float conversions for the CPU kernels (branch-free, auto-vectorisable,
// round-to-nearest-even). fp16 <-> fp32 follows the well-known bit-manipulation scheme of the
// FP16 library (M. Dukhan); it needs IEEE fp32 arithmetic in the default rounding mode, no
// fast-math. The CUDA kernels use the hardware conversions (common/cuda_helpers.cuh), which
// round the same way.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/isa.h"

namespace n6 {

N6_INLINE float BitsToF32(uint32_t w) {
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}
N6_INLINE uint32_t F32ToBits(float f) {
  uint32_t w;
  std::memcpy(&w, &f, sizeof w);
  return w;
}

struct F16Codec {
  static N6_INLINE float ToFloat(uint16_t h) {
    const uint32_t w = static_cast<uint32_t>(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    // Normal / inf / nan: shift exponent+mantissa into place and rebias by 2^-112.
    const float normalized = BitsToF32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    // Subnormal: build 0.5 + m * 2^-24 style value and subtract the magic bias.
    const float denormalized = BitsToF32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t result =
        sign | (two_w < (1u << 27) ? F32ToBits(denormalized) : F32ToBits(normalized));
    return BitsToF32(result);
  }
  static N6_INLINE uint16_t FromFloat(float f) {
    const float abs_f = BitsToF32(F32ToBits(f) & 0x7FFFFFFFu);
    float base = (abs_f * 0x1.0p+112f) * 0x1.0p-110f;  // overflow -> inf, keeps rounding exact
    const uint32_t w = F32ToBits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = BitsToF32((bias >> 1) + 0x07800000u) + base;  // the fp32 add performs the RNE rounding
    const uint32_t bits = F32ToBits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
  }
};

struct BF16Codec {
  static N6_INLINE float ToFloat(uint16_t h) { return BitsToF32(static_cast<uint32_t>(h) << 16); }
  static N6_INLINE uint16_t FromFloat(float f) {
    const uint32_t u = F32ToBits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // RNE; overflow -> inf
    const uint32_t quiet_nan = (u >> 16) | 0x0040u;
    return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
  }
};

// n fp16 values widened to fp32 (dst may not alias src).
N6_INLINE void WidenF16(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = F16Codec::ToFloat(src[i]);
}

}  // namespace n6
