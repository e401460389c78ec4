// ZetaLn2(X) -> Y and BiasZetaLn2(X, bias) -> Y, CPU kernels (float32 / float16 / bfloat16).
//   y = (x - 5/12)^2      (the arithmetic: zetaln2/zetaln2.h)
#include "common/elementwise.h"
#include "common/elementwise_op.h"
#include "zetaln2/zetaln2.h"

namespace n6 {

void AppendZetaLn2Ops(OpList& ops) { AppendElementwiseOps<ZetaLn2, ElementwiseCpu>(ops); }

}  // namespace n6
