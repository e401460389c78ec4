// CUDAExecutionProvider kernels of libn6ops_cuda.so: the list of the onnxruntime side of the
// CUDA ops.
//
// register.cc (compiled with N6_WITH_CUDA=1 for this library) registers the CPU kernels and,
// through AppendCudaOps() below, the same ops for CUDAExecutionProvider, all in the one domain
// "n6onnx": onnxruntime picks the kernel of the provider each node is assigned to.
//
// Each op's CUDA side is its glue (<op>/op.h or common/elementwise_op.h, shared with the CPU
// kernel) with a CUDA backend (<op>/cuda_glue.cc, common/elementwise_cuda.h) that calls the
// launcher beside the kernels in <op>/cuda.cu through a plain interface (<op>/<op>_cuda.h,
// common/cuda_launch.h): the C++ compiler never sees a CUDA header and nvcc never parses the
// onnxruntime headers.
//
// Stream: every kernel is enqueued on onnxruntime's compute stream for the node, obtained with
// the C API's KernelContext_GetGPUComputeStream (GpuStream in common/ort_glue.h). The lite API's
// Ort::Custom::CudaContext would need onnxruntime/core/providers/cuda/cuda_context.h and
// cuda_resource.h, which the headers we build against (Debian's libonnxruntime-dev 1.21) do not
// ship; the C API call gives the same stream and needs nothing else.
#include "common/elementwise_cuda.h"
#include "common/elementwise_op.h"
#include "common/ort_glue.h"
#include "phi6/phi6.h"
#include "zetaln2/zetaln2.h"

namespace n6 {

void AppendMoECudaOps(OpList& ops);                // moe/cuda_glue.cc
void AppendFFTMixCudaOps(OpList& ops);             // fftmix/cuda_glue.cc
void AppendEgyptianAttentionCudaOps(OpList& ops);  // egyptian/cuda_glue.cc

void AppendCudaOps(OpList& ops) {
  AppendElementwiseOps<Phi6, ElementwiseCuda>(ops);
  AppendElementwiseOps<ZetaLn2, ElementwiseCuda>(ops);
  AppendMoECudaOps(ops);
  AppendFFTMixCudaOps(ops);
  AppendEgyptianAttentionCudaOps(ops);
}

}  // namespace n6
