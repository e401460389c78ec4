// EgyptianAttention(Q, K, V, key_padding_mask?) -> Y: the attribute handling and shape checks
// shared by egyptian/cpu.cc and the CUDA glue (plain C++, no onnxruntime or CUDA header).
// The definition: n6onnx/ops/egyptian_attention.py.
//
// Q [B, Lq, H*dh]; K, V [B, Lk, Hkv*dh] (Hkv = kv_heads, 0 = H, divides H: query head h reads KV
// head h / (H / Hkv)); mask [B, Lk] int32 (0 = padding) or absent. Query i sits at key index
// p = Lk - Lq + i. Allowed keys per head kind:
//   causal=0 (Lk == Lq)  full: all   local: |p - j| <= window / 2   global: {0, Lk-1}
//   causal=1 (Lk >= Lq)  full: j <= p   local: p - window < j <= p   global: j < min(sinks, p+1), j == p
// Full and local heads always see one contiguous key interval [KeyLo(p), KeyHi(p)]. A query with
// no allowed key outputs zeros. scale 0 means 1/sqrt(dh). With causal=1 and Hkv < H the query
// heads of one KV group share a kind.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/shape.h"
#include "egyptian/cache_geometry.h"

namespace n6 {
namespace egyptian {

enum Kind : int { kFull = 0, kLocal = 1, kGlobal = 2 };

struct Attrs {
  int64_t num_heads = 0;
  int64_t window = 64;
  float scale = 0.0f;
  std::vector<int64_t> head_kinds;  // empty or [-1]: the default split
  int64_t causal = 0;
  int64_t sinks = 1;
  int64_t kv_heads = 0;
  std::string error;                // set when reading the attributes failed
};

struct Problem {
  int64_t B = 0, Lq = 0, Lk = 0, H = 0, Hkv = 0, dh = 0;
  int64_t window = 64, half = 0;  // half = window / 2 (causal=0)
  int64_t sinks = 1;
  bool causal = false;
  float scale = 0.0f;
  std::vector<int> kinds;

  int64_t Group() const { return H / Hkv; }  // query heads per KV head
  int64_t Offset() const { return Lk - Lq; }  // key index of query 0
  // The key interval of a full / local head's query at key index p (empty when lo > hi).
  int64_t KeyLo(bool local, int64_t p) const {
    if (!local) return 0;
    const int64_t lo = causal ? p - window + 1 : p - half;
    return lo > 0 ? lo : 0;
  }
  int64_t KeyHi(bool local, int64_t p) const {
    if (causal) return p;
    if (!local) return Lk - 1;
    return p + half < Lk - 1 ? p + half : Lk - 1;
  }
};

// Kinds per query head: the 1/2, 1/3, 1/6 split over the kv_heads groups (kv_heads == heads: by
// head index), as n6onnx.ops.egyptian_attention.default_group_kinds.
inline std::vector<int> DefaultGroupKinds(int64_t heads, int64_t kv_heads) {
  const int64_t n_full = kv_heads / 2, n_local = kv_heads / 3, group = heads / kv_heads;
  std::vector<int> k(static_cast<size_t>(heads), kGlobal);
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t g = h / group;
    k[h] = g < n_full ? kFull : (g < n_full + n_local ? kLocal : kGlobal);
  }
  return k;
}

// Checks the shapes and attributes; returns an error message or "" (and fills *p).
inline std::string Resolve(const Attrs& a, const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                           const std::vector<int64_t>& v, const std::vector<int64_t>* mask, Problem* p) {
  const auto& shape = ShapeToString;
  if (!a.error.empty()) return a.error;
  if (q.size() != 3) return "Q must be [B, Lq, num_heads*head_size], got shape " + shape(q);
  if (a.num_heads < 1) return "num_heads must be >= 1, got " + std::to_string(a.num_heads);
  if (q[2] % a.num_heads != 0) {
    return "num_heads=" + std::to_string(a.num_heads) + " does not divide the hidden size " + std::to_string(q[2]);
  }
  const int64_t hkv = a.kv_heads != 0 ? a.kv_heads : a.num_heads;
  if (hkv < 1 || a.num_heads % hkv != 0) {
    return "kv_heads=" + std::to_string(a.kv_heads) + " must divide num_heads=" + std::to_string(a.num_heads);
  }
  const int64_t dh = q[2] / a.num_heads;
  if (k.size() != 3 || k[0] != q[0] || k[2] != hkv * dh || v != k) {
    return "K and V must both be [B, Lk, kv_heads*dh] = [" + std::to_string(q[0]) + ", Lk, " +
           std::to_string(hkv * dh) + "], got " + shape(k) + " and " + shape(v);
  }
  if (a.causal != 0 && a.causal != 1) return "causal must be 0 or 1, got " + std::to_string(a.causal);
  if (a.causal == 0 && k[1] != q[1]) {
    return "causal=0 needs as many keys as queries, got Lq=" + std::to_string(q[1]) + ", Lk=" + std::to_string(k[1]);
  }
  if (a.causal == 1 && k[1] < q[1]) {
    return "causal=1 needs Lk >= Lq, got Lq=" + std::to_string(q[1]) + ", Lk=" + std::to_string(k[1]);
  }
  if (a.window < 0 || a.sinks < 0) {
    return "window and sinks must be >= 0, got " + std::to_string(a.window) + ", " + std::to_string(a.sinks);
  }
  if (mask && *mask != std::vector<int64_t>{q[0], k[1]}) {
    return "key_padding_mask must be [B, Lk] = " + shape({q[0], k[1]}) + ", got " + shape(*mask);
  }
  p->B = q[0];
  p->Lq = q[1];
  p->Lk = k[1];
  p->H = a.num_heads;
  p->Hkv = hkv;
  p->dh = dh;
  p->window = a.window;
  p->half = a.window / 2;
  p->sinks = a.sinks;
  p->causal = a.causal == 1;
  p->scale = a.scale != 0.0f ? a.scale : (p->dh > 0 ? 1.0f / std::sqrt(static_cast<float>(p->dh)) : 1.0f);
  const bool by_index = a.head_kinds.empty() || (a.head_kinds.size() == 1 && a.head_kinds[0] == -1);
  if (by_index) {
    p->kinds = DefaultGroupKinds(a.num_heads, hkv);
  } else {
    if (static_cast<int64_t>(a.head_kinds.size()) != a.num_heads) {
      return "head_kinds must have num_heads=" + std::to_string(a.num_heads) + " values, got " +
             std::to_string(a.head_kinds.size());
    }
    p->kinds.clear();
    for (int64_t kind : a.head_kinds) {
      if (kind < 0 || kind > 2) return "head_kinds values must be 0 (full), 1 (local) or 2 (global), got " + std::to_string(kind);
      p->kinds.push_back(static_cast<int>(kind));
    }
  }
  const int64_t group = p->Group();
  if (p->causal && group > 1) {
    for (int64_t h = 0; h < p->H; ++h) {
      if (p->kinds[h] != p->kinds[h - h % group]) {
        return "the query heads of KV group " + std::to_string(h / group) +
               " mix kinds; with kv_heads < num_heads each group has one kind";
      }
    }
  }
  return "";
}

// Cache mode (PastKey / PastValue bound, causal=1): K, V hold the Lq new tokens; the mask [B, P + Lq]
// covers past and new (P, the absolute past length, is its length - Lq); PastKey / PastValue are the
// packed cache [B, 1, S, dh] (n6onnx/ops/egyptian_cache.py): the KV groups ordered full, local,
// global; per group of kind k, rows[k] past rows (full P, local min(P, window - 1), global
// min(P, sinks)), position-major within a kind (position t of the kind's r-th group at row
// base[k] + t * n[k] + r). The presents: the same layout for P + Lq positions (keep[k], obase[k]).
struct CacheLayout : CacheGeometry {
  // the first position the kind's past / present rows hold
  int64_t First(int kind) const { return kind == kLocal ? P - rows[kLocal] : 0; }
  int64_t FirstOut(int kind, int64_t Lq) const { return kind == kLocal ? P + Lq - keep[kLocal] : 0; }
};

inline int64_t KeptRows(int kind, int64_t positions, int64_t window, int64_t sinks) {
  if (kind == kFull) return positions;
  const int64_t cap = kind == kLocal ? (window > 1 ? window - 1 : 0) : sinks;
  return positions < cap ? positions : cap;
}

// Checks a cache-mode call after Resolve (called with no mask): returns an error message or "".
inline std::string ResolveCache(const Problem& p, const std::vector<int64_t>* mask, const std::vector<int64_t>& pk,
                                const std::vector<int64_t>& pv, CacheLayout* c) {
  if (!p.causal) return "PastKey/PastValue need causal=1";
  if (p.Lk != p.Lq) {
    return "with PastKey, K and V hold the " + std::to_string(p.Lq) + " new tokens only, got Lk=" + std::to_string(p.Lk);
  }
  if (!mask || mask->size() != 2 || (*mask)[0] != p.B || (*mask)[1] < p.Lq) {
    return "with PastKey, key_padding_mask [B, past + Lq] = [" + std::to_string(p.B) + ", P + " + std::to_string(p.Lq) +
           "] is required (it gives the past length), got " + (mask ? ShapeToString(*mask) : std::string("none"));
  }
  c->P = (*mask)[1] - p.Lq;
  const int64_t G = p.Group();
  int last = kFull;
  for (int64_t g = 0; g < p.Hkv; ++g) {
    const int kind = p.kinds[g * G];
    if (kind < last) return "with PastKey the KV groups must be ordered full, local, global";
    last = kind;
    if (c->n[kind]++ == 0) c->g0[kind] = g;
  }
  for (int k = 0; k < 3; ++k) {
    c->rows[k] = KeptRows(k, c->P, p.window, p.sinks);
    c->keep[k] = KeptRows(k, c->P + p.Lq, p.window, p.sinks);
    c->base[k] = c->S;
    c->obase[k] = c->Sout;
    c->S += c->n[k] * c->rows[k];
    c->Sout += c->n[k] * c->keep[k];
  }
  const std::vector<int64_t> want = {p.B, 1, c->S, p.dh};
  if (pk != want || pv != want) {
    return "PastKey and PastValue must be the packed cache [B, 1, S, dh] = " + ShapeToString(want) +
           " for past length " + std::to_string(c->P) + ", got " + ShapeToString(pk) + " and " + ShapeToString(pv);
  }
  return "";
}

}  // namespace egyptian
}  // namespace n6
