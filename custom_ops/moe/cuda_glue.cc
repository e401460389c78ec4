// MoE for CUDAExecutionProvider: the onnxruntime side (C++ compiler, onnxruntime headers). The
// kernels are in moe/cuda.cu behind the plain interface of moe/moe_cuda.h; they run on
// onnxruntime's compute stream for the node (KernelContext_GetGPUComputeStream).
#include <cstdlib>
#include <string>

#include "common/ort_glue.h"
#include "moe/moe_cuda.h"
#include "moe/op.h"

namespace n6 {
namespace {

struct CudaBackend {
  static constexpr const char* kProvider = kCudaProvider;
  // float16 tensor-core GEMMs, opt-in: N6ONNX_MOE_CUDA_TC=1 when the session creates the kernel.
  static void Configure(moe::Attrs& a) {
    const char* tc = std::getenv("N6ONNX_MOE_CUDA_TC");
    a.tensor_cores = tc && tc[0] == '1';
  }

  template <bool kHalf>
  static Ort::Status Run(OrtKernelContext* ctx, const moe::Problem& pr, const moe::Inputs& in, void* y) {
    moe::cuda::Args a;
    a.pr = pr;
    a.half = kHalf;
    a.x = in.data[moe::kX];
    a.logits = in.data[moe::kLogits];
    a.w1 = in.data[moe::kW1];
    a.b1 = pr.has_b1 ? in.data[moe::kB1] : nullptr;
    a.w2 = in.data[moe::kW2];
    a.b2 = pr.has_b2 ? in.data[moe::kB2] : nullptr;
    a.w3 = pr.has_w3 ? in.data[moe::kW3] : nullptr;
    a.importance = pr.has_imp ? static_cast<const float*>(in.data[moe::kImportance]) : nullptr;
    a.y = y;
    a.stream = GpuStream(ctx);
    return FromCuda(moe::kOpName, moe::cuda::Launch(a));
  }
};

}  // namespace

void AppendMoECudaOps(OpList& ops) { moe::AppendOps<CudaBackend>(ops); }

}  // namespace n6
