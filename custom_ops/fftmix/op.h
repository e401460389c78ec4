// FFTMix(X, F6, F12, F24) -> Y [B, L, 3D]: the onnxruntime glue, shared by the CPU kernel
// (fftmix/cpu.cc) and the CUDA glue (fftmix/cuda_glue.cc). The math: fftmix/fftmix.h.
//
// A backend provides
//   static constexpr const char* kProvider;
//   template <class T> static Ort::Status Run(OrtKernelContext*, const Io<T>&);
// Run is called after the shape checks, with Y allocated and B, L, D > 0.
#pragma once

#include <string>
#include <vector>

#include "common/ort_glue.h"
#include "fftmix/fftmix.h"

namespace n6 {
namespace fftmix {

inline constexpr const char* kOpName = "FFTMix";

template <class T>
struct Io {
  const T* x = nullptr;                // [B, L, D]
  const T* f[kNumScales] = {};         // F6 [4, D], F12 [7, D], F24 [13, D]
  T* y = nullptr;                      // [B, L, 3D]
  int64_t B = 0, L = 0, D = 0;
};

// Y: X's element type, shape [B, L, 3D] (3D unknown when D is).
inline bool OutputShapeRule(std::vector<int64_t>& dims, std::vector<const char*>& syms) {
  if (dims.size() != 3) return false;
  for (auto& s : syms) s = s ? s : "";
  dims[2] = dims[2] >= 0 ? 3 * dims[2] : -1;
  syms[2] = "";
  return true;
}

template <class Backend, class T>
Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& F6,
                    const Ort::Custom::Tensor<T>& F12, const Ort::Custom::Tensor<T>& F24, Ort::Custom::Tensor<T>& Y) {
  try {
    const std::vector<int64_t>& xs = X.Shape();
    if (xs.size() != 3) return OpError(kOpName, "X must be [B, L, D], got shape " + ShapeToString(xs));
    const Ort::Custom::Tensor<T>* fs[kNumScales] = {&F6, &F12, &F24};
    Io<T> io;
    for (int s = 0; s < kNumScales; ++s) {
      const int w = kWindows[s];
      const std::vector<int64_t> want = {w / 2 + 1, xs[2]};
      if (fs[s]->Shape() != want) {
        return OpError(kOpName, "F" + std::to_string(w) + " must be " + ShapeToString(want) + " for X of shape " +
                                    ShapeToString(xs) + ", got " + ShapeToString(fs[s]->Shape()));
      }
    }
    io.y = Y.Allocate({xs[0], xs[1], 3 * xs[2]});
    io.B = xs[0];
    io.L = xs[1];
    io.D = xs[2];
    if (io.B == 0 || io.L == 0 || io.D == 0) return Ort::Status{nullptr};
    io.x = X.Data();
    for (int s = 0; s < kNumScales; ++s) io.f[s] = fs[s]->Data();
    return Backend::template Run<T>(ctx, io);
  }
  N6_CATCH_ALL(kOpName)
}

template <class Backend>
void AppendOps(OpList& ops) {
  constexpr InferFn infer = &InferFromInput<&OutputShapeRule>;
  ops.push_back(MakeOp(kOpName, &Compute<Backend, float>, Backend::kProvider, infer));
  ops.push_back(MakeOp(kOpName, &Compute<Backend, Ort::Float16_t>, Backend::kProvider, infer));
}

}  // namespace fftmix
}  // namespace n6
