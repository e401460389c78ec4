// EgyptianAttention(Q, K, V, key_padding_mask?, PastKey?, PastValue?) -> Y, PresentKey?, PresentValue?:
// the onnxruntime glue, shared by the CPU kernel (egyptian/cpu.cc) and the CUDA glue
// (egyptian/cuda_glue.cc). Attributes and shape checks: egyptian/egyptian.h.
//
// A backend provides
//   static constexpr const char* kProvider;
//   static std::string Check(const Problem&);          // its own limits ("" = fine)
//   template <class T> static Ort::Status Run(OrtKernelContext*, const Problem&, const Io<T>&);
//   template <class T> static Ort::Status RunCache(OrtKernelContext*, const Problem&, const CacheLayout&,
//                                                  const Io<T>&, const CacheIo<T>&);
// Run is called after validation, with Y allocated and at least one element; RunCache (cache mode:
// PastKey / PastValue bound) with Y and the requested presents allocated, B, Lq, dh > 0.
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

// Cache mode: the packed past and the presents (null when not requested); layout: CacheLayout.
template <class T>
struct CacheIo {
  const T* pk = nullptr;  // [B, 1, S, dh] (null when S = 0)
  const T* pv = nullptr;
  T* ok = nullptr;        // [B, 1, Sout, dh] or null
  T* ov = nullptr;
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
                      std::optional<const Ort::Custom::Tensor<T>*> past_key,
                      std::optional<const Ort::Custom::Tensor<T>*> past_value, Ort::Custom::Tensor<T>& Y,
                      std::optional<Ort::Custom::Tensor<T>*> present_key,
                      std::optional<Ort::Custom::Tensor<T>*> present_value) {
    try {
      const Ort::Custom::Tensor<int32_t>* m = mask.has_value() ? *mask : nullptr;
      const Ort::Custom::Tensor<T>* pk = past_key.has_value() ? *past_key : nullptr;
      const Ort::Custom::Tensor<T>* pv = past_value.has_value() ? *past_value : nullptr;
      Ort::Custom::Tensor<T>* ok = present_key.has_value() ? *present_key : nullptr;
      Ort::Custom::Tensor<T>* ov = present_value.has_value() ? *present_value : nullptr;
      const bool cached = pk || pv;
      if (!cached && (ok || ov)) return OpError(kOpName, "PresentKey/PresentValue need PastKey and PastValue");
      if (cached && !(pk && pv)) return OpError(kOpName, "PastKey and PastValue go together");
      Problem pr;
      std::string err = Resolve(attrs, Q.Shape(), K.Shape(), V.Shape(), (m && !cached) ? &m->Shape() : nullptr, &pr);
      CacheLayout c;
      if (err.empty() && cached) err = ResolveCache(pr, m ? &m->Shape() : nullptr, pk->Shape(), pv->Shape(), &c);
      if (err.empty()) err = Backend::Check(pr);
      if (!err.empty()) return OpError(kOpName, err);
      Io<T> io;
      io.y = Y.Allocate(Q.Shape());
      io.n = static_cast<size_t>(Q.NumberOfElement());
      io.nkv = static_cast<size_t>(K.NumberOfElement());
      CacheIo<T> cio;
      const std::vector<int64_t> out = {pr.B, 1, c.Sout, pr.dh};
      if (ok) cio.ok = ok->Allocate(out);
      if (ov) cio.ov = ov->Allocate(out);
      if (io.n == 0 && !(cached && pr.B > 0 && pr.dh > 0 && c.Sout > 0)) return Ort::Status{nullptr};
      io.q = io.n ? Q.Data() : nullptr;
      io.k = io.nkv ? K.Data() : nullptr;
      io.v = io.nkv ? V.Data() : nullptr;
      io.mask = (m && m->NumberOfElement()) ? m->Data() : nullptr;
      if (!cached) return Backend::template Run<T>(ctx, pr, io);
      cio.pk = c.S ? pk->Data() : nullptr;
      cio.pv = c.S ? pv->Data() : nullptr;
      return Backend::template RunCache<T>(ctx, pr, c, io, cio);
    }
    N6_CATCH_ALL(kOpName)
  }
};

// An unbound optional input (mask with PastKey bound, or a listed PastKey / PastValue) would crash
// onnxruntime's lite-op wrapper (common/ort_glue.h, InputGuard): an error instead.
inline OrtStatusPtr CheckUnbound(OrtKernelContext* ctx) {
  size_t n = 0;
  int64_t i = -1;
  if (OrtStatusPtr st = FirstUnbound(ctx, 3, &n, &i)) return st;
  if (i < 0) return nullptr;
  return OpError(kOpName, i > 3 ? "PastKey and PastValue go together"
                          : n > 4 ? "with PastKey/PastValue the key_padding_mask [B, past + Lq] is required"
                                  : "the key_padding_mask input is listed but empty: leave it out")
      .release();
}

template <class Backend>
void AppendOps(OpList& ops) {
  ops.push_back(MakeGuardedKernelOp<Op<Backend, float>, &CheckUnbound>(kOpName, Backend::kProvider));
  ops.push_back(MakeGuardedKernelOp<Op<Backend, Ort::Float16_t>, &CheckUnbound>(kOpName, Backend::kProvider));
}

}  // namespace egyptian
}  // namespace n6
