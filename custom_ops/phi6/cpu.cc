// Phi6(X) -> Y and BiasPhi6(X, bias) -> Y, CPU kernels (float32 / float16 / bfloat16).
//   c = clamp(x, -2, 2);  y = c*c - c + 1      (the arithmetic: phi6/phi6.h)
#include "common/elementwise.h"
#include "common/elementwise_op.h"
#include "phi6/phi6.h"

namespace n6 {

void AppendPhi6Ops(OpList& ops) { AppendElementwiseOps<Phi6, ElementwiseCpu>(ops); }

}  // namespace n6
