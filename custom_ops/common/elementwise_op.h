// The onnxruntime glue of the elementwise ops, for any backend: Fn::kName(X) -> Y and
// Fn::kBiasName(X, bias) -> Y for float32, float16 and bfloat16.
//
// Each op supplies only a scalar functor (common/scalar.h):
//
//   struct MyOp {
//     static constexpr const char* kName = "MyOp";          // plain op:  Y = f(X)
//     static constexpr const char* kBiasName = "BiasMyOp";  // bias op:   Y = f(X + bias)
//     static N6_HD float Apply(float x) { ... }              // branch-free, fp32
//   };
//
// and a backend provides
//
//   struct Backend {
//     static constexpr const char* kProvider = ...;
//     template <class Fn, class T>   // called with n > 0 after the shapes were checked
//     static Ort::Status Run(const char* op, OrtKernelContext*, const T* x, const T* bias_or_null,
//                            size_t bias_len, T* y, size_t n);
//   };
//
// ElementwiseCpu (common/elementwise.h) and ElementwiseCuda (common/elementwise_cuda.h).
// AppendElementwiseOps<Fn, Backend>(ops) registers the six kernels; onnxruntime merges
// same-named ops into one schema and dispatches on the input type.
#pragma once

#include <cstddef>
#include <vector>

#include "common/ort_glue.h"

namespace n6 {

// X must have rank >= 1 and bias must be 1-D with X's last dimension.
inline Ort::Status CheckBiasShape(const char* op, const std::vector<int64_t>& xs, const std::vector<int64_t>& bs) {
  if (xs.empty()) return OpError(op, "X must have rank >= 1 when a bias is given, got a scalar");
  if (bs.size() != 1) return OpError(op, "bias must be 1-D, got shape " + ShapeToString(bs));
  if (bs[0] != xs.back()) {
    return OpError(op, "bias length " + std::to_string(bs[0]) + " does not match the last dimension " +
                           std::to_string(xs.back()) + " of X (shape " + ShapeToString(xs) + ")");
  }
  return Ort::Status{nullptr};
}

template <class Fn, class Backend>
struct ElementwiseOp {
  template <class T>
  static Ort::Status Plain(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, Ort::Custom::Tensor<T>& Y) {
    try {
      const std::vector<int64_t>& shape = X.Shape();
      const size_t n = static_cast<size_t>(X.NumberOfElement());
      T* y = Y.Allocate(shape);
      if (n == 0) return Ort::Status{nullptr};
      return Backend::template Run<Fn, T>(Fn::kName, ctx, X.Data(), nullptr, 0, y, n);
    }
    N6_CATCH_ALL(Fn::kName)
  }

  template <class T>
  static Ort::Status Bias(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& B,
                          Ort::Custom::Tensor<T>& Y) {
    try {
      const std::vector<int64_t>& xs = X.Shape();
      Ort::Status bad = CheckBiasShape(Fn::kBiasName, xs, B.Shape());
      if (!bad.IsOK()) return bad;
      const size_t n = static_cast<size_t>(X.NumberOfElement());
      T* y = Y.Allocate(xs);
      if (n == 0) return Ort::Status{nullptr};
      return Backend::template Run<Fn, T>(Fn::kBiasName, ctx, X.Data(), B.Data(), static_cast<size_t>(xs.back()), y,
                                          n);
    }
    N6_CATCH_ALL(Fn::kBiasName)
  }
};

template <class Fn, class Backend>
void AppendElementwiseOps(OpList& ops) {
  using Op = ElementwiseOp<Fn, Backend>;
  const char* p = Backend::kProvider;
  ops.push_back(MakeOp(Fn::kName, &Op::template Plain<float>, p));
  ops.push_back(MakeOp(Fn::kName, &Op::template Plain<Ort::Float16_t>, p));
  ops.push_back(MakeOp(Fn::kName, &Op::template Plain<Ort::BFloat16_t>, p));
  ops.push_back(MakeOp(Fn::kBiasName, &Op::template Bias<float>, p));
  ops.push_back(MakeOp(Fn::kBiasName, &Op::template Bias<Ort::Float16_t>, p));
  ops.push_back(MakeOp(Fn::kBiasName, &Op::template Bias<Ort::BFloat16_t>, p));
}

}  // namespace n6
