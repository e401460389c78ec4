// EgyptianAttention(Q, K, V, key_padding_mask?) -> Y: the onnxruntime glue, shared by the CPU
// kernel (egyptian/cpu.cc) and the CUDA glue (egyptian/cuda_glue.cc). Attributes and shape checks:
// egyptian/egyptian.h.
//
// A backend provides
//   static constexpr const char* kProvider;
//   static std::string Check(const Problem&);          // its own limits ("" = fine)
//   template <class T> static Ort::Status Run(OrtKernelContext*, const Problem&, const Io<T>&);
// Run is called after validation, with Y allocated and at least one element.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/ort_glue.h"
#include "egyptian/egyptian.h"

namespace n6 {
namespace egyptian {

inline constexpr const char* kOpName = "EgyptianAttention";

template <class T>
struct Io {
  const T* q = nullptr;  // [B, Lq, H*dh]
  const T* k = nullptr;  // [B, Lk, Hkv*dh]
  const T* v = nullptr;
  const int32_t* mask = nullptr;  // [B, Lk] or null
  T* y = nullptr;  // [B, Lq, H*dh]
  size_t n = 0;    // elements of each of q and y
  size_t nkv = 0;  // elements of each of k and v
};

// The node's attributes (absent optional ones keep their defaults; a missing num_heads is
// reported at run time).
inline Attrs ReadAttrs(const OrtKernelInfo* info) {
  Attrs attrs;
  if (!ReadAttr(info, "num_heads", &attrs.num_heads)) attrs.error = "the attribute num_heads (int) is required";
  ReadAttr(info, "window", &attrs.window);
  ReadAttr(info, "scale", &attrs.scale);
  std::vector<int64_t> kinds;
  if (ReadAttr(info, "head_kinds", &kinds)) attrs.head_kinds = kinds;
  ReadAttr(info, "causal", &attrs.causal);
  ReadAttr(info, "sinks", &attrs.sinks);
  ReadAttr(info, "kv_heads", &attrs.kv_heads);
  return attrs;
}

template <class Backend, class T>
struct Op {
  Attrs attrs;

  Op(const OrtApi*, const OrtKernelInfo* info) : attrs(ReadAttrs(info)) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& Q, const Ort::Custom::Tensor<T>& K,
                      const Ort::Custom::Tensor<T>& V, std::optional<const Ort::Custom::Tensor<int32_t>*> mask,
                      Ort::Custom::Tensor<T>& Y) {
    try {
      const Ort::Custom::Tensor<int32_t>* m = mask.has_value() ? *mask : nullptr;
      Problem pr;
      std::string err = Resolve(attrs, Q.Shape(), K.Shape(), V.Shape(), m ? &m->Shape() : nullptr, &pr);
      if (err.empty()) err = Backend::Check(pr);
      if (!err.empty()) return OpError(kOpName, err);
      Io<T> io;
      io.y = Y.Allocate(Q.Shape());
      io.n = static_cast<size_t>(Q.NumberOfElement());
      io.nkv = static_cast<size_t>(K.NumberOfElement());
      if (io.n == 0) return Ort::Status{nullptr};
      io.q = Q.Data();
      io.k = K.Data();
      io.v = V.Data();
      io.mask = m ? m->Data() : nullptr;
      return Backend::template Run<T>(ctx, pr, io);
    }
    N6_CATCH_ALL(kOpName)
  }
};

template <class Backend>
void AppendOps(OpList& ops) {
  ops.push_back(MakeKernelOp<Op<Backend, float>>(kOpName, Backend::kProvider));
  ops.push_back(MakeKernelOp<Op<Backend, Ort::Float16_t>>(kOpName, Backend::kProvider));
}

}  // namespace egyptian
}  // namespace n6
