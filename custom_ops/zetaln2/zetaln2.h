// ZetaLn2(X) -> Y and BiasZetaLn2(X, bias) -> Y:  y = (x - 5/12)^2
// (= x*x - (5/6)x + 25/144, evaluated in the factored, more accurate form).
// Shared by zetaln2/cpu.cc and zetaln2/cuda.cu.
#pragma once

#include "common/scalar.h"

namespace n6 {

struct ZetaLn2 {
  static constexpr const char* kName = "ZetaLn2";
  static constexpr const char* kBiasName = "BiasZetaLn2";
  static constexpr float kShift = static_cast<float>(5.0 / 12.0);  // == numpy.float32(5/12)
  static N6_HD float Apply(float x) {
    const float d = x - kShift;
    return d * d;
  }
};

}  // namespace n6
