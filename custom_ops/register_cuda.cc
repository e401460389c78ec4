// CUDAExecutionProvider kernels of libn6ops_cuda.so: the onnxruntime side of the CUDA ops.
//
// register.cc (compiled with N6_WITH_CUDA=1 for this library) registers the CPU kernels and,
// through AppendCudaOps() below, the same ops for CUDAExecutionProvider, all in the one domain
// "n6onnx": onnxruntime picks the kernel of the provider each node is assigned to.
//
// Stream: every kernel is enqueued on onnxruntime's compute stream for the node, obtained with
// the C API's KernelContext_GetGPUComputeStream (Ort::KernelContext::GetGPUComputeStream). The
// lite API's Ort::Custom::CudaContext would need onnxruntime/core/providers/cuda/cuda_context.h
// and cuda_resource.h, which the headers we build against (Debian's libonnxruntime-dev 1.21)
// do not ship; the C API call gives the same stream and needs nothing else.
//
// This file is compiled by the C++ compiler with the onnxruntime headers and no CUDA header: the
// kernels are reached through the plain interface of common/cuda_launch.h.
#include <string>

#include "common/cuda_launch.h"
#include "common/elementwise.h"
#include "phi6/phi6.h"
#include "zetaln2/zetaln2.h"

namespace n6 {
namespace {

inline constexpr const char* kCudaProvider = "CUDAExecutionProvider";

template <class T>
struct CudaDType;
template <>
struct CudaDType<float> {
  static constexpr cuda::DType kValue = cuda::DType::kFloat32;
};
template <>
struct CudaDType<Ort::Float16_t> {
  static constexpr cuda::DType kValue = cuda::DType::kFloat16;
};
template <>
struct CudaDType<Ort::BFloat16_t> {
  static constexpr cuda::DType kValue = cuda::DType::kBFloat16;
};

Ort::Status LaunchError(const char* op, const cuda::Status& st, const cuda::ElementwiseArgs& a) {
  std::string msg = std::string("CUDA kernel failed at ") + (st.where ? st.where : "?") + ": " +
                    (st.name ? st.name : "error") + " (" + (st.message ? st.message : "") + ")";
  msg += "; " + std::string(cuda::DTypeName(a.dtype)) + ", " + std::to_string(a.n) + " elements";
  if (a.bias) msg += ", bias length " + std::to_string(a.bias_len);
  return Ort::Status((std::string(kDomain) + "::" + op + ": " + msg).c_str(), ORT_EP_FAIL);
}

template <class Fn>
Ort::Status Launch(const char* op, OrtKernelContext* ctx, cuda::ElementwiseArgs& a) {
  a.stream = Ort::KernelContext(ctx).GetGPUComputeStream();
  const cuda::Status st = cuda::LaunchElementwise<Fn>(a);
  return st.ok() ? Ort::Status{nullptr} : LaunchError(op, st, a);
}

template <class Fn, class T>
Ort::Status CudaPlain(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, Ort::Custom::Tensor<T>& Y) {
  try {
    const std::vector<int64_t>& shape = X.Shape();
    const size_t n = static_cast<size_t>(X.NumberOfElement());
    T* y = Y.Allocate(shape);
    if (n == 0) return Ort::Status{nullptr};
    cuda::ElementwiseArgs a;
    a.dtype = CudaDType<T>::kValue;
    a.x = X.Data();
    a.y = y;
    a.n = n;
    return Launch<Fn>(Fn::kName, ctx, a);
  }
  N6_CATCH_ALL(Fn::kName)
}

template <class Fn, class T>
Ort::Status CudaBias(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& B,
                     Ort::Custom::Tensor<T>& Y) {
  try {
    const std::vector<int64_t>& xs = X.Shape();
    Ort::Status bad = CheckBiasShape(Fn::kBiasName, xs, B.Shape());
    if (!bad.IsOK()) return bad;
    const size_t n = static_cast<size_t>(X.NumberOfElement());
    T* y = Y.Allocate(xs);
    if (n == 0) return Ort::Status{nullptr};
    cuda::ElementwiseArgs a;
    a.dtype = CudaDType<T>::kValue;
    a.x = X.Data();
    a.bias = B.Data();
    a.bias_len = static_cast<size_t>(xs.back());
    a.y = y;
    a.n = n;
    return Launch<Fn>(Fn::kBiasName, ctx, a);
  }
  N6_CATCH_ALL(Fn::kBiasName)
}

// Fn::kName(X) and Fn::kBiasName(X, bias) for float, float16 and bfloat16 on CUDA.
template <class Fn>
void AppendElementwiseCudaOps(OpList& ops) {
  ops.push_back(MakeOp(Fn::kName, &CudaPlain<Fn, float>, kCudaProvider));
  ops.push_back(MakeOp(Fn::kName, &CudaPlain<Fn, Ort::Float16_t>, kCudaProvider));
  ops.push_back(MakeOp(Fn::kName, &CudaPlain<Fn, Ort::BFloat16_t>, kCudaProvider));
  ops.push_back(MakeOp(Fn::kBiasName, &CudaBias<Fn, float>, kCudaProvider));
  ops.push_back(MakeOp(Fn::kBiasName, &CudaBias<Fn, Ort::Float16_t>, kCudaProvider));
  ops.push_back(MakeOp(Fn::kBiasName, &CudaBias<Fn, Ort::BFloat16_t>, kCudaProvider));
}

}  // namespace

void AppendMoECudaOps(OpList& ops);  // moe/cuda_glue.cc

void AppendFFTMixCudaOps(OpList& ops);             // fftmix/cuda_op.cc
void AppendEgyptianAttentionCudaOps(OpList& ops);  // egyptian/cuda_op.cc

void AppendCudaOps(OpList& ops) {
  AppendElementwiseCudaOps<Phi6>(ops);
  AppendElementwiseCudaOps<ZetaLn2>(ops);
  AppendMoECudaOps(ops);
  AppendFFTMixCudaOps(ops);
  AppendEgyptianAttentionCudaOps(ops);
}

}  // namespace n6
