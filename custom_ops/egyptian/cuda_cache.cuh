// EgyptianAttention CUDA, cache mode: the copies of the packed cache, as device loops that a kernel
// of its own (egyptian/cuda_cache.cu) or the spare blocks of the decode kernel
// (egyptian/cuda_decode.cu: the presents written in the same launch as the attention) run.
//   Present: each row of the presents [B, Sout, dh] is a kept past row or a new row (the copy a
//     Concat / Slice graph did).
//   Gather: the rows laid out as plain full-length K / V [B, P + Lq, Hkv*dh] (rows a group does not
//     keep are zeros: no query of that group can see them).
// Raw words are copied: W = 16-byte vectors when every row is a whole number of them and the
// tensors are 16-byte aligned (dh is then counted in vectors), else the element type.
#pragma once

#include "egyptian/cuda_params.cuh"

namespace n6 {
namespace cuda {
namespace egy {

struct CacheCopy {
  CacheView c;     // pk, pv, Lnew (= Lq), Hkv and the layout
  const void* k;   // new rows [B, Lq, Hkv*dh]
  const void* v;
  void* ok;        // presents [B, Sout, dh] (either may be null)
  void* ov;
  void* ak;        // Gather: full-length K / V [B, P + Lq, Hkv*dh]
  void* av;
  int64_t B, dh;   // dh in units of W
  int vec;         // 1: W = uint4

  __host__ __device__ int64_t PresentItems() const { return 2 * B * c.g.Sout * dh; }
  __host__ __device__ int64_t GatherItems() const { return 2 * B * (c.g.P + c.Lnew) * c.Hkv * dh; }
};

// item e (of PresentItems) of the presents: [K | V] x [B, Sout, dh]
template <class W>
__device__ __forceinline__ void PresentItem(const CacheCopy& c, int64_t e) {
  const egyptian::CacheGeometry& g = c.c.g;
  const int64_t total = c.B * g.Sout * c.dh;
  const int part = e >= total ? 1 : 0;
  W* out = static_cast<W*>(part ? c.ov : c.ok);
  if (!out) return;
  const int64_t x = e - part * total, ch = x % c.dh, r = (x / c.dh) % g.Sout, b = x / (c.dh * g.Sout);
  int k = 0;
  for (int kk = 1; kk < 3; ++kk) {
    if (g.n[kk] > 0 && r >= g.obase[kk]) k = kk;
  }
  const int64_t j = r - g.obase[k], gi = j % g.n[k];
  const int64_t a = j / g.n[k] + (k == 1 ? g.P + c.c.Lnew - g.keep[1] : 0);  // absolute position
  bool past;
  const int64_t o = c.c.Row(b, a, g.g0[k] + gi, c.dh, &past);
  const W* src = static_cast<const W*>(past ? (part ? c.c.pv : c.c.pk) : (part ? c.v : c.k));
  out[x] = o < 0 ? W{} : src[o + ch];
}

// item e (of GatherItems) of the full-length K / V: [K | V] x [B, P + Lq, Hkv, dh]
template <class W>
__device__ __forceinline__ void GatherItem(const CacheCopy& c, int64_t e) {
  const int64_t A = c.c.g.P + c.c.Lnew, total = c.B * A * c.c.Hkv * c.dh;
  const int part = e >= total ? 1 : 0;
  const int64_t x = e - part * total, ch = x % c.dh, g = (x / c.dh) % c.c.Hkv, a = (x / (c.dh * c.c.Hkv)) % A;
  const int64_t b = x / (c.dh * c.c.Hkv * A);
  bool past;
  const int64_t o = c.c.Row(b, a, g, c.dh, &past);
  const W* src = static_cast<const W*>(past ? (part ? c.c.pv : c.c.pk) : (part ? c.v : c.k));
  static_cast<W*>(part ? c.av : c.ak)[x] = o < 0 ? W{} : src[o + ch];
}

// The presents, items [first, PresentItems()) in steps of `stride` (one thread's share).
template <class S>
__device__ __forceinline__ void CopyPresents(const CacheCopy& c, int64_t first, int64_t stride) {
  const int64_t n = c.PresentItems();
  if (c.vec) {
    for (int64_t e = first; e < n; e += stride) PresentItem<uint4>(c, e);
  } else {
    for (int64_t e = first; e < n; e += stride) PresentItem<S>(c, e);
  }
}

// A CacheCopy for element type S (elem bytes), 16-byte words where the rows and pointers allow.
inline CacheCopy MakeCopy(const CacheView& view, const void* k, const void* v, void* ok, void* ov, void* ak, void* av,
                          int64_t B, int64_t dh, int64_t elem) {
  CacheCopy c{};
  c.c = view;
  c.k = k;
  c.v = v;
  c.ok = ok;
  c.ov = ov;
  c.ak = ak;
  c.av = av;
  c.B = B;
  c.dh = dh;
  const auto aligned = [](const void* p) { return p == nullptr || IsAligned16(p); };
  c.vec = (dh * elem) % 16 == 0 && aligned(k) && aligned(v) && aligned(view.pk) && aligned(view.pv) && aligned(ok) &&
          aligned(ov) && aligned(ak) && aligned(av);
  if (c.vec) c.dh = dh * elem / 16;  // rows in 16-byte units
  return c;
}

}  // namespace egy
}  // namespace cuda
}  // namespace n6
