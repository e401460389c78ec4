// FFTMix(X, F6, F12, F24 [, Past, PastLength]) -> Y [B, L, 3D] [, Present], attribute causal: the onnxruntime glue, shared by the CPU kernel
// (fftmix/cpu.cc) and the CUDA glue (fftmix/cuda_glue.cc). The math: fftmix/fftmix.h.
//
// A backend provides
//   static constexpr const char* kProvider;
//   template <class T> static Ort::Status Run(OrtKernelContext*, const Io<T>&);
//   template <class T> static Ort::Status RunCausal(OrtKernelContext*, const CausalIo<T>&);
// Run is called after the shape checks, with Y allocated and B, L, D > 0; RunCausal after the
// causal checks, with Y (and Present, when requested) allocated and B, D > 0 (L may be 0).
#pragma once

#include <optional>
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

// Causal mode (attribute causal=1): F_w are the taps [w, D]; Past [B, P, D] holds positions
// pl - P .. pl - 1 (pl = PastLength); Present [B, (pl + L) mod 24, D] (null when not requested).
template <class T>
struct CausalIo {
  const T* x = nullptr;           // [B, L, D]
  const T* f[kNumScales] = {};    // taps [w, D]
  const T* past = nullptr;        // [B, P, D] or null (P = 0)
  T* y = nullptr;                 // [B, L, 3D]
  T* present = nullptr;           // [B, keep, D] or null
  int64_t B = 0, L = 0, D = 0, P = 0, pl = 0, keep = 0;
};

// The shape checks of both modes (messages as in n6onnx/ops/fftmix*.py); "" when fine.
inline std::string CheckCausal(const std::vector<int64_t>& xs, const std::vector<int64_t>* fs[kNumScales],
                               const std::vector<int64_t>* ps, const std::vector<int64_t>* pls, const int64_t* pl_value,
                               int64_t* P, int64_t* pl) {
  for (int s = 0; s < kNumScales; ++s) {
    const std::vector<int64_t> want = {kWindows[s], xs[2]};
    if (*fs[s] != want)
      return "causal F" + std::to_string(kWindows[s]) + " must be the taps " + ShapeToString(want) + ", got " +
             ShapeToString(*fs[s]);
  }
  *P = 0;
  if (ps) {
    if (ps->size() != 3 || (*ps)[0] != xs[0] || (*ps)[2] != xs[2])
      return "Past must be [" + std::to_string(xs[0]) + ", P, " + std::to_string(xs[2]) + "] for X of shape " +
             ShapeToString(xs) + ", got shape " + ShapeToString(*ps);
    *P = (*ps)[1];
  }
  *pl = *P;
  if (pls) {
    int64_t n = 1;
    for (int64_t d : *pls) n *= d;
    if (pls->size() > 1 || n != 1) return "PastLength must be an int64 scalar or [1], got shape " + ShapeToString(*pls);
    *pl = *pl_value;
  }
  if (*pl < 0 || *P > *pl || *P < *pl % kBlock)
    return "Past [B, P=" + std::to_string(*P) + ", D] must hold the current 24-window's inputs: need PastLength mod 24 "
           "<= P <= PastLength, PastLength=" + std::to_string(*pl);
  return "";
}

template <class Backend, class T>
struct Op {
  int64_t causal = 0;

  Op(const OrtApi*, const OrtKernelInfo* info) { ReadAttr(info, "causal", &causal); }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& F6,
                      const Ort::Custom::Tensor<T>& F12, const Ort::Custom::Tensor<T>& F24,
                      std::optional<const Ort::Custom::Tensor<T>*> past,
                      std::optional<const Ort::Custom::Tensor<int64_t>*> past_length, Ort::Custom::Tensor<T>& Y,
                      std::optional<Ort::Custom::Tensor<T>*> present) {
    try {
      const std::vector<int64_t>& xs = X.Shape();
      if (xs.size() != 3) return OpError(kOpName, "X must be [B, L, D], got shape " + ShapeToString(xs));
      const Ort::Custom::Tensor<T>* fs[kNumScales] = {&F6, &F12, &F24};
      const Ort::Custom::Tensor<T>* p = past.has_value() ? *past : nullptr;
      const Ort::Custom::Tensor<int64_t>* plt = past_length.has_value() ? *past_length : nullptr;
      Ort::Custom::Tensor<T>* pr = present.has_value() ? *present : nullptr;
      if (causal != 0 && causal != 1) return OpError(kOpName, "causal must be 0 or 1, got " + std::to_string(causal));
      if (!causal) {
        if (p || plt || pr) return OpError(kOpName, "Past, PastLength and Present need causal=1");
        return ComputePlain(ctx, xs, fs, X, Y);
      }
      const std::vector<int64_t>* fshapes[kNumScales] = {&F6.Shape(), &F12.Shape(), &F24.Shape()};
      CausalIo<T> io;
      int64_t pl_value = 0;
      // PastLength is declared a CPU input (GetInputMemoryType below): onnxruntime hands it to the
      // kernel in host memory on every provider, so it is read here directly
      if (plt && plt->NumberOfElement() == 1) pl_value = *plt->Data();
      std::string err = CheckCausal(xs, fshapes, p ? &p->Shape() : nullptr, plt ? &plt->Shape() : nullptr, &pl_value,
                                    &io.P, &io.pl);
      if (!err.empty()) return OpError(kOpName, err);
      io.B = xs[0];
      io.L = xs[1];
      io.D = xs[2];
      io.keep = (io.pl + io.L) % kBlock;
      io.y = Y.Allocate({io.B, io.L, 3 * io.D});
      if (pr) io.present = pr->Allocate({io.B, io.keep, io.D});
      if (io.B == 0 || io.D == 0) return Ort::Status{nullptr};
      io.x = io.L ? X.Data() : nullptr;
      for (int s = 0; s < kNumScales; ++s) io.f[s] = fs[s]->Data();
      io.past = (p && io.P) ? p->Data() : nullptr;
      return Backend::template RunCausal<T>(ctx, io);
    }
    N6_CATCH_ALL(kOpName)
  }

  static Ort::Status ComputePlain(OrtKernelContext* ctx, const std::vector<int64_t>& xs,
                                  const Ort::Custom::Tensor<T>* const* fs, const Ort::Custom::Tensor<T>& X,
                                  Ort::Custom::Tensor<T>& Y) {
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
};

// An unbound Past with PastLength bound would crash onnxruntime's lite-op wrapper
// (common/ort_glue.h, InputGuard): an error instead (that form runs in the numpy reference and the
// function fallback).
inline OrtStatusPtr CheckUnbound(OrtKernelContext* ctx) {
  size_t n = 0;
  int64_t i = -1;
  if (OrtStatusPtr st = FirstUnbound(ctx, 4, &n, &i)) return st;
  if (n <= 5 || i != 4) return nullptr;
  return OpError(kOpName, "PastLength without Past is not supported by the kernel: bind Past (an empty "
                          "[B, 0, D] tensor when PastLength is a multiple of 24)")
      .release();
}

template <class Kernel>
Ort::Custom::OrtLiteCustomOp* MakeGuardedOp(const char* provider, InferFn infer) {
  Ort::Custom::OrtLiteCustomOp* op = MakeGuardedKernelOp<Kernel, &CheckUnbound>(kOpName, provider, infer);
  // PastLength (input 5) lives in host memory on every provider (a CUDA kernel reads its value on
  // the host; the lite API's Tensor::IsCpuTensor cannot tell, it always says "Cpu")
  op->GetInputMemoryType = [](const OrtCustomOp*, size_t index) {
    return index == 5 ? OrtMemTypeCPUInput : OrtMemTypeDefault;
  };
  return op;
}

template <class Backend>
void AppendOps(OpList& ops) {
  constexpr InferFn infer = &InferFromInput<&OutputShapeRule>;
  ops.push_back(MakeGuardedOp<Op<Backend, float>>(Backend::kProvider, infer));
  ops.push_back(MakeGuardedOp<Op<Backend, Ort::Float16_t>>(Backend::kProvider, infer));
}

}  // namespace fftmix
}  // namespace n6
