// Phi6(X) -> Y and BiasPhi6(X, bias) -> Y, CUDA kernels (float32 / float16 / bfloat16).
//   c = clamp(x, -2, 2);  y = c*c - c + 1      (the arithmetic: phi6/phi6.h, shared with cpu.cc)
// The kernels and their launcher: common/cuda_elementwise.cuh; the onnxruntime glue:
// register_cuda.cc.
#include "common/cuda_elementwise.cuh"
#include "phi6/phi6.h"

namespace n6 {
namespace cuda {

template Status LaunchElementwise<Phi6>(const ElementwiseArgs& args);

}  // namespace cuda
}  // namespace n6
