// EgyptianAttention(Q, K, V, key_padding_mask?) -> Y: the attribute handling and shape checks
// shared by egyptian/cpu.cc and the CUDA glue (plain C++, no onnxruntime or CUDA header).
//
// Q, K, V [B, L, H*dh]; mask [B, L] int32 (0 = padding) or absent. Per head kind:
//   full (0):   softmax over every unmasked key            O(L^2 dh) per head
//   local (1):  keys |i - j| <= window / 2                 O(L window dh)
//   global (2): keys {0, L-1}                               O(L dh)
// A query with no allowed key outputs zeros. scale 0 means 1/sqrt(dh).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/shape.h"

namespace n6 {
namespace egyptian {

enum Kind : int { kFull = 0, kLocal = 1, kGlobal = 2 };

inline std::vector<int> DefaultKinds(int64_t heads) {
  const int64_t n_full = heads / 2, n_local = heads / 3;
  std::vector<int> k(static_cast<size_t>(heads), kGlobal);
  for (int64_t h = 0; h < heads; ++h) k[h] = h < n_full ? kFull : (h < n_full + n_local ? kLocal : kGlobal);
  return k;
}

struct Attrs {
  int64_t num_heads = 0;
  int64_t window = 64;
  float scale = 0.0f;
  std::vector<int64_t> head_kinds;  // empty or [-1]: the default split
  std::string error;                // set when reading the attributes failed
};

struct Problem {
  int64_t B = 0, L = 0, H = 0, dh = 0;
  int64_t half = 0;  // window / 2
  float scale = 0.0f;
  std::vector<int> kinds;
};

// Checks the shapes and attributes; returns an error message or "" (and fills *p).
inline std::string Resolve(const Attrs& a, const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                           const std::vector<int64_t>& v, const std::vector<int64_t>* mask, Problem* p) {
  const auto& shape = ShapeToString;
  if (!a.error.empty()) return a.error;
  if (q.size() != 3) return "Q must be [B, L, num_heads*head_size], got shape " + shape(q);
  if (k != q || v != q) return "Q, K and V must have the same shape, got " + shape(q) + ", " + shape(k) + ", " + shape(v);
  if (a.num_heads < 1) return "num_heads must be >= 1, got " + std::to_string(a.num_heads);
  if (q[2] % a.num_heads != 0) {
    return "num_heads=" + std::to_string(a.num_heads) + " does not divide the hidden size " + std::to_string(q[2]);
  }
  if (a.window < 0) return "window must be >= 0, got " + std::to_string(a.window);
  if (mask && *mask != std::vector<int64_t>{q[0], q[1]}) {
    return "key_padding_mask must be [B, L] = " + shape({q[0], q[1]}) + ", got " + shape(*mask);
  }
  p->B = q[0];
  p->L = q[1];
  p->H = a.num_heads;
  p->dh = q[2] / a.num_heads;
  p->half = a.window / 2;
  p->scale = a.scale != 0.0f ? a.scale : (p->dh > 0 ? 1.0f / std::sqrt(static_cast<float>(p->dh)) : 1.0f);
  const bool by_index = a.head_kinds.empty() || (a.head_kinds.size() == 1 && a.head_kinds[0] == -1);
  if (by_index) {
    p->kinds = DefaultKinds(a.num_heads);
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
  return "";
}

}  // namespace egyptian
}  // namespace n6
