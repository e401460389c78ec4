// ZetaLn2(X) -> Y and BiasZetaLn2(X, bias) -> Y, CPU kernels (float32 / float16 / bfloat16).
//   y = (x - 5/12)^2   (= x*x - (5/6)x + 25/144, evaluated in the factored, more accurate form)
#include "common/elementwise.h"

namespace n6 {
namespace {

struct ZetaLn2 {
  static constexpr const char* kName = "ZetaLn2";
  static constexpr const char* kBiasName = "BiasZetaLn2";
  static constexpr float kShift = static_cast<float>(5.0 / 12.0);  // == numpy.float32(5/12)
  static N6_INLINE float Apply(float x) {
    const float d = x - kShift;
    return d * d;
  }
};

}  // namespace

void AppendZetaLn2Ops(OpList& ops) { AppendElementwiseOps<ZetaLn2>(ops); }

}  // namespace n6
