// ZetaLn2(X) -> Y and BiasZetaLn2(X, bias) -> Y, CUDA kernels (float32 / float16 / bfloat16).
//   y = (x - 5/12)^2      (the arithmetic: zetaln2/zetaln2.h, shared with cpu.cc)
// The kernels and their launcher: common/cuda_elementwise.cuh; the onnxruntime glue:
// register_cuda.cc.
#include "common/cuda_elementwise.cuh"
#include "zetaln2/zetaln2.h"

namespace n6 {
namespace cuda {

template Status LaunchElementwise<ZetaLn2>(const ElementwiseArgs& args);

}  // namespace cuda
}  // namespace n6
