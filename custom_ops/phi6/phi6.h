// Phi6(X) -> Y and BiasPhi6(X, bias) -> Y:  c = clamp(x, -2, 2);  y = c*c - c + 1.
// Shared by phi6/cpu.cc and phi6/cuda.cu.
#pragma once

#include "common/scalar.h"

namespace n6 {

struct Phi6 {
  static constexpr const char* kName = "Phi6";
  static constexpr const char* kBiasName = "BiasPhi6";
  static N6_HD float Apply(float x) {
    // Two selects on x (not chained): on the CPU this compiles to 2 compares + 2 blends per
    // vector; a NaN input falls through both selects, so NaN propagates like numpy.clip (fminf /
    // fmaxf would turn it into a clamp bound).
    const float hi = x > 2.0f ? 2.0f : x;
    const float c = x < -2.0f ? -2.0f : hi;
    return c * c - c + 1.0f;
  }
};

}  // namespace n6
