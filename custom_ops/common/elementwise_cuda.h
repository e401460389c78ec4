// CUDA backend of the elementwise ops (libn6ops_cuda.so): ElementwiseOp (common/elementwise_op.h)
// hands the checked tensors to the launcher of common/cuda_elementwise.cuh (instantiated in
// <op>/cuda.cu), enqueued on onnxruntime's compute stream for the node. Compiled by the C++
// compiler: no CUDA header, only the plain interface of common/cuda_launch.h.
#pragma once

#include <string>

#include "common/cuda_launch.h"
#include "common/ort_glue.h"

namespace n6 {

struct ElementwiseCuda {
  static constexpr const char* kProvider = kCudaProvider;
  template <class Fn, class T>
  static Ort::Status Run(const char* op, OrtKernelContext* ctx, const T* x, const T* bias, size_t bias_len, T* y,
                         size_t n) {
    cuda::ElementwiseArgs a;
    a.dtype = DTypeOf<T>;
    a.x = x;
    a.bias = bias;
    a.bias_len = bias ? bias_len : 0;
    a.y = y;
    a.n = n;
    a.stream = GpuStream(ctx);
    const cuda::Status st = cuda::LaunchElementwise<Fn>(a);
    if (st.ok()) return Ort::Status{nullptr};
    std::string detail = std::string(cuda::DTypeName(a.dtype)) + ", " + std::to_string(n) + " elements";
    if (bias) detail += ", bias length " + std::to_string(bias_len);
    return CudaLaunchError(op, st, detail);
  }
};

}  // namespace n6
