// EgyptianAttention cache mode on host memory (the CPU backend's RunCache): per head kind, the
// kind's past rows (contiguous in the packed cache: position-major within a kind) followed by its
// new rows, its heads' queries and its part of the absolute mask are gathered into a plain causal
// call on that kind's keys (the key-index convention of egyptian/egyptian.h gives the same answer
// on the truncated local / global caches), run by `run`; the presents are the rows each kind keeps
// (full: all, local: the last keep, global: the first keep), copied from the gathered keys. With
// one sequence the full groups' rows are gathered straight into the present (one copy of the past).
#pragma once

#include <cstring>
#include <memory>
#include <vector>

#include "common/ort_glue.h"
#include "egyptian/op.h"

namespace n6 {
namespace egyptian {

template <class T, class Run>
Ort::Status RunCacheByKind(const Problem& pr, const CacheLayout& c, const Io<T>& io, const CacheIo<T>& cio, Run run) {
  const int64_t B = pr.B, Lq = pr.Lq, dh = pr.dh, G = pr.Group(), Hkv = pr.Hkv, ld = pr.H * dh, A = c.P + Lq;
  for (int kind = 0; kind < 3; ++kind) {
    const int64_t n = c.n[kind], rows = c.rows[kind], Lk = rows + Lq, nd = n * dh, hd = n * G * dh;
    if (n == 0) continue;
    const size_t nkv = static_cast<size_t>(B * Lk * nd);
    const T* past[2] = {cio.pk, cio.pv};
    const T* fresh[2] = {io.k, io.v};
    T* out[2] = {cio.ok, cio.ov};
    const T* kv[2] = {nullptr, nullptr};
    std::unique_ptr<T[]> own[2];
    const int64_t first = kind == kLocal ? Lk - c.keep[kind] : 0;  // the first gathered row the present keeps
    for (int t = 0; t < 2; ++t) {
      // one sequence whose present keeps every gathered row (full groups): gathered into the present itself
      const bool in_present = B == 1 && out[t] && c.keep[kind] == Lk;
      T* dst = in_present ? out[t] + c.obase[kind] * dh : (own[t].reset(new T[nkv]), own[t].get());
      kv[t] = dst;
      for (int64_t b = 0; b < B; ++b) {
        if (rows) std::memcpy(dst + b * Lk * nd, past[t] + (b * c.S + c.base[kind]) * dh, sizeof(T) * rows * nd);
        for (int64_t i = 0; i < Lq; ++i) {
          std::memcpy(dst + (b * Lk + rows + i) * nd, fresh[t] + (b * Lq + i) * Hkv * dh + c.g0[kind] * dh,
                      sizeof(T) * nd);
        }
        if (out[t] && !in_present && c.keep[kind]) {
          std::memcpy(out[t] + (b * c.Sout + c.obase[kind]) * dh, dst + (b * Lk + first) * nd,
                      sizeof(T) * c.keep[kind] * nd);
        }
      }
    }
    if (Lq == 0) continue;
    std::vector<int32_t> mask;
    if (io.mask) {  // key j of the kind: its past rows (from position First), then the new tokens
      mask.resize(static_cast<size_t>(B * Lk));
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < Lk; ++j) {
          mask[b * Lk + j] = io.mask[b * A + (j < rows ? c.First(kind) + j : c.P + j - rows)];
        }
      }
    }
    std::vector<T> q(static_cast<size_t>(B * Lq * hd)), y(q.size());
    for (int64_t r = 0; r < B * Lq; ++r) std::memcpy(q.data() + r * hd, io.q + r * ld + c.g0[kind] * G * dh, sizeof(T) * hd);
    Problem sub = pr;
    sub.H = n * G;
    sub.Hkv = n;
    sub.Lk = Lk;
    sub.kinds.assign(static_cast<size_t>(n * G), kind);
    Io<T> s;
    s.q = q.data();
    s.k = kv[0];
    s.v = kv[1];
    s.mask = io.mask ? mask.data() : nullptr;
    s.y = y.data();
    s.n = q.size();
    s.nkv = nkv;
    Ort::Status st = run(sub, s);
    if (!st.IsOK()) return st;
    for (int64_t r = 0; r < B * Lq; ++r) std::memcpy(io.y + r * ld + c.g0[kind] * G * dh, y.data() + r * hd, sizeof(T) * hd);
  }
  return Ort::Status{nullptr};
}

}  // namespace egyptian
}  // namespace n6
