// The boundary between the onnxruntime glue (common/ort_glue.h, <op>/cuda_glue.cc: the C++ compiler
// with the onnxruntime headers) and the CUDA kernels (<op>/cuda.cu, compiled by nvcc without them).
// Plain C++: no CUDA header is needed to include this file, and nvcc never parses the
// onnxruntime headers (faster device compilation: each architecture pass re-parses its TU).
#pragma once

#include <cstddef>

namespace n6 {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

// Outcome of a launch. code: 0 = success, > 0 = a cudaError_t value, < 0 = invalid arguments.
// The strings are static (CUDA's own error strings or literals): never freed.
struct Status {
  int code = 0;
  const char* where = nullptr;    // which step failed ("cudaGetDevice", "kernel launch", ...)
  const char* name = nullptr;     // cudaGetErrorName(), or "invalid argument"
  const char* message = nullptr;  // cudaGetErrorString(), or a description
  bool ok() const { return code == 0; }
};

// y[i] = Fn::Apply(x[i] (+ bias[i % bias_len])) for i in [0, n), enqueued on `stream`
// (a cudaStream_t; null = the legacy default stream) of the current device. bias may be null.
// x, y, bias are device pointers of `dtype` elements, with any alignment; x may equal y.
// The launch is asynchronous: errors raised later by the kernel surface at the next synchronizing
// call, like for any CUDA kernel.
struct ElementwiseArgs {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;
  const void* bias = nullptr;
  void* y = nullptr;
  size_t n = 0;
  size_t bias_len = 0;
  void* stream = nullptr;
};

// Defined in common/cuda_elementwise.cuh and explicitly instantiated in <op>/cuda.cu
// (template Status LaunchElementwise<Phi6>(const ElementwiseArgs&);).
template <class Fn>
Status LaunchElementwise(const ElementwiseArgs& args);

}  // namespace cuda
}  // namespace n6
