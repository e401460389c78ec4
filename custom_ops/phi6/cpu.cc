// Phi6(X) -> Y and BiasPhi6(X, bias) -> Y, CPU kernels (float32 / float16 / bfloat16).
//   c = clamp(x, -2, 2);  y = c*c - c + 1
#include "common/elementwise.h"

namespace n6 {
namespace {

struct Phi6 {
  static constexpr const char* kName = "Phi6";
  static constexpr const char* kBiasName = "BiasPhi6";
  static N6_INLINE float Apply(float x) {
    // Two selects on x (not chained): compiles to 2 compares + 2 blends per vector, and a NaN
    // input falls through both selects, so NaN propagates like numpy.clip.
    const float hi = x > 2.0f ? 2.0f : x;
    const float c = x < -2.0f ? -2.0f : hi;
    return c * c - c + 1.0f;
  }
};

}  // namespace

void AppendPhi6Ops(OpList& ops) { AppendElementwiseOps<Phi6>(ops); }

}  // namespace n6
