// MoE(X, logits, W1, b1?, W2, b2?, W3?, importance?) -> Y: shared by moe/cpu.cc and moe/cuda.cu.
// The op's definition (routing, tie rule, group / drop, activations): n6onnx/ops/moe.py.
//
// This header holds what both kernels must agree on: attribute decoding and validation (host),
// the per-token routing (host and device: N6_HD) and the activations (fp32).
//
// Routing of one token (RouteToken): rank the G logits by a stable selection (repeated argmax
// with a strict '>', so equal logits go to the lower group index first); topk: softmax weights of
// the first k (over all G logits), renormalised when normalize = 1; egyptian: 1/2, 1/3, 1/6 for
// the first three. Each selected group expands into its `group` sub-experts with the group's
// weight; with drop > 0 the sub-experts are ranked by weight * importance[e] (descending, equal
// scores by the lower expert index first) and the last `drop` are removed. The kept (expert,
// weight) pairs come out sorted by expert index: the kernels add the expert outputs of a token in
// that fixed order, so results do not depend on threading.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/fastmath.h"
#include "common/shape.h"

namespace n6 {
namespace moe {

enum Act : int { kGelu = 0, kGeluTanh = 1, kSilu = 2, kRelu = 3, kSwiglu = 4, kPhi6 = 5 };
inline constexpr const char* kActNames[] = {"gelu", "gelu_tanh", "silu", "relu", "swiglu", "phi6"};
// Most sub-experts one token may select (k * group, or 3 * group for egyptian).
inline constexpr int kMaxSel = 64;

struct Attrs {
  std::string routing = "topk";
  std::string activation = "gelu";
  int64_t k = 2, normalize = 1, group = 1, drop = 0;
  // float16 tensor-core GEMMs (CUDA backend option, set by its Configure())
  bool tensor_cores = false;
};

struct Problem {
  int64_t N = 0, D = 0, H = 0, G = 0, E = 0;
  int group = 1, nsel = 0, S = 0, keep = 0, drop = 0;  // S = nsel * group selected, keep = S - drop
  bool egyptian = false, normalize = true;
  int act = kGelu;
  bool has_b1 = false, has_b2 = false, has_w3 = false, has_imp = false;
  bool tensor_cores = false;
};

// Validates attributes and shapes; returns an error message ("" when fine). Optional inputs: null.
inline std::string Resolve(const Attrs& a, const std::vector<int64_t>& x, const std::vector<int64_t>& logits,
                           const std::vector<int64_t>& w1, const std::vector<int64_t>* b1,
                           const std::vector<int64_t>& w2, const std::vector<int64_t>* b2,
                           const std::vector<int64_t>* w3, const std::vector<int64_t>* imp, Problem* p) {
  if (a.routing == "topk") p->egyptian = false;
  else if (a.routing == "egyptian") p->egyptian = true;
  else return "unknown routing '" + a.routing + "' (expected 'topk' or 'egyptian')";
  p->act = -1;
  for (int i = 0; i < 6; ++i)
    if (a.activation == kActNames[i]) p->act = i;
  if (p->act < 0) return "unknown activation '" + a.activation + "' (expected gelu, gelu_tanh, silu, relu, swiglu or phi6)";
  if (x.size() != 2) return "X must be [N, D], got " + ShapeToString(x);
  if (logits.size() != 2 || logits[0] != x[0]) return "logits must be [N=" + std::to_string(x[0]) + ", G], got " + ShapeToString(logits);
  if (w1.size() != 3 || w1[1] != x[1]) return "W1 must be [E, D=" + std::to_string(x[1]) + ", H], got " + ShapeToString(w1);
  p->N = x[0];
  p->D = x[1];
  p->G = logits[1];
  p->E = w1[0];
  p->H = w1[2];
  if (a.group < 1) return "group must be >= 1, got " + std::to_string(a.group);
  if (p->G * a.group != p->E)
    return "W1 has E=" + std::to_string(p->E) + " experts but logits have G=" + std::to_string(p->G) + " groups and group=" +
           std::to_string(a.group) + " (need E = G * group)";
  const std::vector<int64_t> eh = {p->E, p->H}, ehd = {p->E, p->H, p->D}, ed = {p->E, p->D};
  if (w2 != ehd) return "W2 must be " + ShapeToString(ehd) + ", got " + ShapeToString(w2);
  if (b1 && *b1 != eh) return "b1 must be " + ShapeToString(eh) + ", got " + ShapeToString(*b1);
  if (b2 && *b2 != ed) return "b2 must be " + ShapeToString(ed) + ", got " + ShapeToString(*b2);
  if (w3 && *w3 != w1) return "W3 must be " + ShapeToString(w1) + " like W1, got " + ShapeToString(*w3);
  if (p->act == kSwiglu && !w3) return "activation 'swiglu' needs the gate weights W3";
  if (imp && *imp != std::vector<int64_t>{p->E}) return "importance must be [E=" + std::to_string(p->E) + "], got " + ShapeToString(*imp);
  if (p->egyptian) {
    if (p->G < 3) return "egyptian routing needs G >= 3 routing groups, got G=" + std::to_string(p->G);
    p->nsel = 3;
  } else {
    if (a.k < 1 || a.k > p->G) return "k must be in [1, G=" + std::to_string(p->G) + "], got " + std::to_string(a.k);
    p->nsel = static_cast<int>(a.k);
  }
  if (p->nsel * a.group > kMaxSel)
    return "at most " + std::to_string(kMaxSel) + " selected sub-experts per token are supported (k * group = " +
           std::to_string(p->nsel * a.group) + ")";
  p->group = static_cast<int>(a.group);
  p->S = p->nsel * p->group;
  if (a.drop < 0 || a.drop >= p->S)
    return "drop must be in [0, " + std::to_string(p->S) + ") (selected sub-experts per token), got " + std::to_string(a.drop);
  if (a.drop > 0 && !imp) return "drop > 0 needs the importance input";
  p->drop = static_cast<int>(a.drop);
  p->keep = p->S - p->drop;
  p->normalize = a.normalize != 0;
  p->has_b1 = b1 != nullptr;
  p->has_b2 = b2 != nullptr;
  p->has_w3 = w3 != nullptr;
  p->has_imp = imp != nullptr;
  p->tensor_cores = a.tensor_cores;
  return "";
}

// Routes one token. l: its G logits (fp32); imp: [E] or null. Writes p.keep (expert, weight)
// pairs sorted by expert index. Returns p.keep.
N6_HD int RouteToken(const float* l, const Problem& p, const float* imp, int* experts, float* weights) {
  int sel[kMaxSel];
  sel[0] = 0;
  float w[kMaxSel];
  const int G = static_cast<int>(p.G);
  for (int j = 0; j < p.nsel; ++j) {  // stable: strict '>' keeps the lower index on ties
    int best = -1;
    for (int g = 0; g < G; ++g) {
      bool taken = false;
      for (int t = 0; t < j; ++t) taken = taken || sel[t] == g;
      if (!taken && (best < 0 || l[g] > l[best])) best = g;
    }
    sel[j] = best;
  }
  if (p.egyptian) {
    w[0] = 1.0f / 2.0f;
    w[1] = 1.0f / 3.0f;
    w[2] = 1.0f / 6.0f;
  } else {
    const float m = l[sel[0]];
    float sum = 0.0f;
    for (int g = 0; g < G; ++g) sum += expf(l[g] - m);
    float s2 = 0.0f;
    for (int j = 0; j < p.nsel; ++j) {
      w[j] = expf(l[sel[j]] - m) / sum;
      s2 += w[j];
    }
    if (p.normalize)
      for (int j = 0; j < p.nsel; ++j) w[j] = w[j] / s2;
  }
  int ex[kMaxSel];
  float ew[kMaxSel];
  for (int j = 0; j < p.nsel; ++j)
    for (int s = 0; s < p.group; ++s) {
      ex[j * p.group + s] = sel[j] * p.group + s;
      ew[j * p.group + s] = w[j];
    }
  int n = p.S;
  if (p.drop > 0) {  // keep the `keep` best by score, equal scores: lower expert index first
    bool kept[kMaxSel];
    for (int i = 0; i < n; ++i) kept[i] = false;
    for (int r = 0; r < p.keep; ++r) {
      int best = -1;
      float bs = 0.0f;
      for (int i = 0; i < n; ++i) {
        if (kept[i]) continue;
        const float sc = ew[i] * imp[ex[i]];
        if (best < 0 || sc > bs || (sc == bs && ex[i] < ex[best])) {
          best = i;
          bs = sc;
        }
      }
      kept[best] = true;
    }
    int c = 0;
    for (int i = 0; i < n; ++i)
      if (kept[i]) {
        ex[c] = ex[i];
        ew[c] = ew[i];
        ++c;
      }
    n = c;
  }
  for (int i = 1; i < n; ++i) {  // insertion sort by expert index
    const int e = ex[i];
    const float v = ew[i];
    int j = i - 1;
    while (j >= 0 && ex[j] > e) {
      ex[j + 1] = ex[j];
      ew[j + 1] = ew[j];
      --j;
    }
    ex[j + 1] = e;
    ew[j + 1] = v;
  }
  for (int i = 0; i < n; ++i) {
    experts[i] = ex[i];
    weights[i] = ew[i];
  }
  return n;
}

// act(h) (swiglu: silu(h) * gate), fp32.
template <int kAct>
N6_HD float Activate(float h, float gate) {
  if constexpr (kAct == kGelu) {
    return 0.5f * h * (1.0f + Erf(h * 0.70710678118654752f));
  } else if constexpr (kAct == kGeluTanh) {
    const float z = 0.79788456080286536f * (h + 0.044715f * h * h * h);
    return 0.5f * h * (1.0f + Tanh(z));
  } else if constexpr (kAct == kSilu) {
    return h / (1.0f + Exp(-h));
  } else if constexpr (kAct == kRelu) {
    return h > 0.0f ? h : 0.0f;
  } else if constexpr (kAct == kSwiglu) {
    return h / (1.0f + Exp(-h)) * gate;
  } else {
    const float c = h < -2.0f ? -2.0f : (h > 2.0f ? 2.0f : h);
    return c * c - c + 1.0f;
  }
}

}  // namespace moe
}  // namespace n6
