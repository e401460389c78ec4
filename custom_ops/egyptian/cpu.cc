// EgyptianAttention(Q, K, V, key_padding_mask?) -> Y, CPU kernel (float32 / float16 storage, fp32
// compute). Shapes, attributes and head kinds: egyptian/egyptian.h.
//
// Work split: one task per (batch, head, block of kBQ queries), on the session's intra-op pool.
//   full / local heads: flash-style streaming softmax over key blocks of kBK. K is transposed
//     once per KV head into [dh, Lk] (a parallel pre-pass over only the keys some query of the
//     group can see); S = Q.K^T and O += P.V run as register tiles (AVX-512: 8 queries x 32
//     lanes, AVX2: 4 x 16, generic: 4 x 8: enough independent accumulators to hide the FMA
//     latency, none spilled; 1-row tiles for a block of fewer queries),
//     explicit vectors (common/vec16.h). Per query the running max m, sum l and output
//     accumulator are rescaled once per key block. Every query of a full / local head sees one
//     key interval [KeyLo(p), KeyHi(p)] (egyptian.h); a query block visits only the union of its
//     queries' intervals, masking per query. So a local head costs O(Lq * (window + kBQ) * dh),
//     a causal full head O(keys before each query block), a decode step O(keys it may see).
//   fewer than kRowsBelow queries (decode steps): one task per (batch, KV head, query block),
//     RowBlock: dot products with K rows, no transposed copy, each K / V row read once for all the
//     query heads of a KV group, O(keys seen * dh) per query and head.
//   global heads: two keys per query (causal=0), or the sinks and the query's own key
//     (causal=1): O(Lq * (sinks + 1) * dh).
// Grouped-query attention: query head h reads KV head h / (H / Hkv); nothing is copied.
// Exponentials use the branch-free polynomial exp of common/fastmath.h (Cephes expf form, ~2 ulp)
// so they vectorise.
// float16 inputs are widened once into fp32 copies; the output is rounded once.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>

#include "common/fastmath.h"
#include "common/half.h"
#include "common/isa.h"
#include "common/ort_glue.h"
#include "common/vec16.h"
#include "egyptian/cache_host.h"
#include "egyptian/op.h"

namespace n6 {
namespace {

constexpr int kBQ = 32;  // queries per task
constexpr int kBK = 64;  // keys per block
constexpr int kRowsBelow = 4;  // fewer queries than this: RowBlock
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const VI kLane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

struct Plan {
  const egyptian::Problem* pr;
  const float* q;  // [B, Lq, H*dh] fp32 (widened copies for fp16)
  const float* k;  // [B, Lk, Hkv*dh]
  const float* v;
  const int32_t* mask;  // [B, Lk] or null
  float* y32;           // fp32 output, or null
  uint16_t* y16;        // fp16 output, or null
  int64_t B, Lq, Lk, H, G, dh, ld, ldk, nqb;
  float scale;
  const int* kinds;
  bool rows;                    // few queries (decode): RowBlock on K rows, no transposed copy
  float* kt;                    // [B, Hkv, dh, lp]: K transposed per KV head, zero past Lk
  const int64_t* kt_lo;         // [Hkv]: the first column of kt written (the rest is never read)
  int64_t lp;                   // Lk rounded up to kBK
};

N6_INLINE bool KeyValid(const Plan& p, int64_t b, int64_t j) { return !p.mask || p.mask[b * p.Lk + j] != 0; }
N6_INLINE const float* KRow(const Plan& p, const float* base, int64_t b, int64_t j, int64_t h) {
  return base + (b * p.Lk + j) * p.ldk + (h / p.G) * p.dh;
}

N6_INLINE void StoreRow(const Plan& p, int64_t b, int64_t i, int64_t h, const float* acc, float inv) {
  const size_t off = static_cast<size_t>((b * p.Lq + i) * p.ld + h * p.dh);
  if (p.y32) {
    float* dst = p.y32 + off;
    for (int64_t d = 0; d < p.dh; ++d) dst[d] = acc[d] * inv;
  } else {
    uint16_t* dst = p.y16 + off;
    for (int64_t d = 0; d < p.dh; ++d) dst[d] = F16Codec::FromFloat(acc[d] * inv);
  }
}

// Global head: keys {0, Lk-1} (causal=0), or keys j < min(sinks, p+1) and p (causal=1); a
// streaming softmax over them, one key at a time.
N6_INLINE void GlobalBlock(const Plan& p, int64_t b, int64_t h, int64_t i0, int64_t i1, float* acc) {
  const egyptian::Problem& pr = *p.pr;
  for (int64_t i = i0; i < i1; ++i) {
    const float* q = p.q + (b * p.Lq + i) * p.ld + h * p.dh;
    const int64_t pos = pr.Offset() + i;
    // keys: [0, nsink) then `last` unless it is among them
    const int64_t nsink = pr.causal ? std::min<int64_t>(pr.sinks, pos + 1) : 1;
    const int64_t last = pr.causal ? pos : p.Lk - 1;
    const int64_t nkeys = nsink + (last >= nsink ? 1 : 0);
    for (int64_t d = 0; d < p.dh; ++d) acc[d] = 0.0f;
    float m = kNegInf, l = 0.0f;
    for (int64_t t = 0; t < nkeys; ++t) {
      const int64_t j = t < nsink ? t : last;
      if (!KeyValid(p, b, j)) continue;
      const float* k = KRow(p, p.k, b, j, h);
      float dot = 0.0f;
      for (int64_t d = 0; d < p.dh; ++d) dot += q[d] * k[d];
      const float s = dot * p.scale;
      if (s > m) {  // rescale what was summed so far
        const float corr = m == kNegInf ? 0.0f : Exp(m - s);
        l *= corr;
        for (int64_t d = 0; d < p.dh; ++d) acc[d] *= corr;
        m = s;
      }
      const float e = Exp(s - m);
      l += e;
      const float* v = KRow(p, p.v, b, j, h);
      for (int64_t d = 0; d < p.dh; ++d) acc[d] += e * v[d];
    }
    StoreRow(p, b, i, h, acc, l > 0.0f ? 1.0f / l : 0.0f);
  }
}

static_assert(kBK % (2 * kVF) == 0 && kBQ % 8 == 0, "key blocks of whole register tiles");

struct Scratch {
  std::vector<float> s, o, m, l, zero;
};

// S[r][jc .. jc+W) = q_r . kt[:, jc .. jc+W), W = kCV * lanes of V, for kRows query rows:
// kRows*kCV independent vector accumulators (AVX-512: 8 x 2 zmm of its 32 registers, which hides
// the FMA latency and loads 0.6 operands per FMA; AVX2: 4 x 2 ymm; generic: 4 x 2 xmm).
template <class V, int kRows, int kCV>
N6_INLINE void ScoreTile(const float* const* q, const float* __restrict kt, int64_t ldk, int64_t dh, int jc,
                         float* __restrict S) {
  constexpr int N = kLanes<V>;
  V acc[kRows][kCV];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCV; ++c) acc[r][c] = V{};
  for (int64_t d = 0; d < dh; ++d) {
    V kr[kCV];
    for (int c = 0; c < kCV; ++c) kr[c] = LoadT<V>(kt + d * ldk + jc + c * N);
    for (int r = 0; r < kRows; ++r) {
      const float qd = q[r][d];
      for (int c = 0; c < kCV; ++c) acc[r][c] += kr[c] * qd;
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCV; ++c) StoreT<V>(S + r * kBK + jc + c * N, acc[r][c]);
}

// O[r][d0 .. d0+W) += sum_j P[r][j] v_j[d0 .. d0+W) for kRows query rows.
template <class V, int kRows, int kCV>
N6_INLINE void PvTile(const float* __restrict P, const float* const* v, int nk, int64_t d0, float* __restrict O,
                      int64_t ldo) {
  constexpr int N = kLanes<V>;
  V acc[kRows][kCV];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCV; ++c) acc[r][c] = LoadT<V>(O + r * ldo + d0 + c * N);
  for (int j = 0; j < nk; ++j) {
    V vr[kCV];
    for (int c = 0; c < kCV; ++c) vr[c] = LoadT<V>(v[j] + d0 + c * N);
    for (int r = 0; r < kRows; ++r) {
      const float pj = P[r * kBK + j];
      for (int c = 0; c < kCV; ++c) acc[r][c] += vr[c] * pj;
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCV; ++c) StoreT<V>(O + r * ldo + d0 + c * N, acc[r][c]);
}

// Channels past the last whole vector (dh % 16).
template <int kRows>
N6_INLINE void PvTail(const float* __restrict P, const float* const* v, int nk, int64_t d0, int64_t dh,
                      float* __restrict O) {
  for (int r = 0; r < kRows; ++r) {
    for (int64_t d = d0; d < dh; ++d) {
      float acc = O[r * dh + d];
      for (int j = 0; j < nk; ++j) acc += P[r * kBK + j] * v[j][d];
      O[r * dh + d] = acc;
    }
  }
}

// Full / local head: streaming softmax over key blocks of kBK, register-tiled Q.K^T and P.V.
template <class V, int kRows, int kCV>
N6_INLINE void StreamBlock(const Plan& p, int64_t b, int64_t h, int64_t i0, int64_t i1, bool local, Scratch& sc) {
  const int64_t dh = p.dh, nq = i1 - i0;
  const int64_t nqp = (nq + kRows - 1) / kRows * kRows;  // padded with zero queries
  sc.s.assign(static_cast<size_t>(nqp * kBK), 0.0f);
  sc.o.assign(static_cast<size_t>(nqp * dh), 0.0f);
  sc.m.assign(static_cast<size_t>(nqp), kNegInf);
  sc.l.assign(static_cast<size_t>(nqp), 0.0f);
  sc.zero.assign(static_cast<size_t>(dh), 0.0f);
  const egyptian::Problem& pr = *p.pr;
  const float* kth = p.kt + (b * (p.H / p.G) + h / p.G) * dh * p.lp;
  float* __restrict S = sc.s.data();
  float* __restrict O = sc.o.data();
  const float* qrows[kBQ];
  for (int64_t qi = 0; qi < nqp; ++qi) {
    qrows[qi] = qi < nq ? p.q + (b * p.Lq + i0 + qi) * p.ld + h * dh : sc.zero.data();
  }
  const float* vrows[kBK];
  // the union of the block's key intervals (both ends grow with the query)
  const int64_t p0 = pr.Offset() + i0;
  const int64_t klo = pr.KeyLo(local, p0), khi = pr.KeyHi(local, p0 + nq - 1);
  for (int64_t kb = klo; kb <= khi; kb += kBK) {
    const int nk = static_cast<int>(std::min<int64_t>(kBK, khi + 1 - kb));
    for (int j = 0; j < nk; ++j) vrows[j] = KRow(p, p.v, b, kb + j, h);
    constexpr int kW = kCV * kLanes<V>;
    // kBK is a multiple of kW; columns past nk (zeros past Lk, or another head's) are masked below
    for (int64_t qi = 0; qi < nqp; qi += kRows) {
      for (int jc = 0; jc < (nk + kW - 1) / kW * kW; jc += kW) {
        ScoreTile<V, kRows, kCV>(qrows + qi, kth + kb, p.lp, dh, jc, S + qi * kBK);
      }
    }
    // key padding of this block as an additive bias (0 or -inf; -inf past nk)
    float kbias[kBK];
    for (int j = 0; j < kBK; ++j) kbias[j] = (j < nk && KeyValid(p, b, kb + j)) ? 0.0f : kNegInf;
    bool any = false;
    for (int64_t qi = 0; qi < nq; ++qi) {  // online softmax update of query row qi
      const int64_t pos = p0 + qi;
      float* __restrict s = S + qi * kBK;
      VF sv[kBK / kVF];
      for (int c = 0; c < kBK / kVF; ++c) sv[c] = LoadV(s + c * kVF) * p.scale + LoadV(kbias + c * kVF);
      {  // keys outside this query's interval, and columns past nk (a select: they may hold anything)
        const VI jlo = VI{} + static_cast<int32_t>(std::max<int64_t>(-1, pr.KeyLo(local, pos) - kb));
        const VI jhi = VI{} + static_cast<int32_t>(std::min<int64_t>(nk - 1, pr.KeyHi(local, pos) - kb));
        for (int c = 0; c < kBK / kVF; ++c) {
          const VI j = kLane + c * kVF;
          sv[c] = (j < jlo || j > jhi) ? Splat(kNegInf) : sv[c];
        }
      }
      VF mv = sv[0];
      for (int c = 1; c < kBK / kVF; ++c) mv = MaxV(mv, sv[c]);
      const float mx = HMax(mv);
      if (mx == kNegInf) {
        for (int c = 0; c < kBK / kVF; ++c) StoreV(s + c * kVF, Splat(0.0f));
        continue;
      }
      any = true;
      float& m = sc.m[qi];
      const float mnew = mx > m ? mx : m;
      if (mnew != m) {
        const float corr = m == kNegInf ? 0.0f : Exp(m - mnew);
        sc.l[qi] *= corr;
        float* __restrict o = O + qi * dh;
        for (int64_t d = 0; d < dh; ++d) o[d] *= corr;
        m = mnew;
      }
      VF sum = Splat(0.0f);
      for (int c = 0; c < kBK / kVF; ++c) {
        const VF e = ExpV(sv[c] - mnew);
        sum += e;
        StoreV(s + c * kVF, e);
      }
      sc.l[qi] += HSum(sum);
    }
    if (!any) continue;
    for (int64_t qi = 0; qi < nqp; qi += kRows) {
      int64_t d0 = 0;
      constexpr int N = kLanes<V>;
      for (; d0 + kCV * N <= dh; d0 += kCV * N) PvTile<V, kRows, kCV>(S + qi * kBK, vrows, nk, d0, O + qi * dh, dh);
      for (; d0 + N <= dh; d0 += N) PvTile<V, kRows, 1>(S + qi * kBK, vrows, nk, d0, O + qi * dh, dh);
      if (d0 < dh) PvTail<kRows>(S + qi * kBK, vrows, nk, d0, dh, O + qi * dh);
    }
  }
  for (int64_t qi = 0; qi < nq; ++qi) {
    const float l = sc.l[qi];
    StoreRow(p, b, i0 + qi, h, O + qi * dh, l > 0.0f ? 1.0f / l : 0.0f);
  }
}

// Full / local heads h0 .. h0+nh-1 of one KV head, same kind, for a few queries (decode steps):
// per query a streaming softmax over key blocks; each visited block of K is transposed into a
// small [dh, kBK] buffer once for all nh heads (no transposed copy of all of K), then scores and
// P.V run as 1-row register tiles. O(keys seen * dh) per query and head.
template <class V, int kCV>
N6_INLINE void RowBlock(const Plan& p, int64_t b, int64_t h0, int64_t nh, int64_t i0, int64_t i1, bool local,
                        Scratch& sc) {
  constexpr int kW = kCV * kLanes<V>, N = kLanes<V>;
  const egyptian::Problem& pr = *p.pr;
  const int64_t dh = p.dh;
  sc.o.resize(static_cast<size_t>(nh * dh));
  sc.s.resize(static_cast<size_t>(nh * kBK));
  sc.m.resize(static_cast<size_t>(nh));
  sc.l.resize(static_cast<size_t>(nh));
  sc.zero.resize(static_cast<size_t>(dh * kBK));  // the K block, transposed
  float* __restrict O = sc.o.data();
  float* __restrict S = sc.s.data();
  float* __restrict kt = sc.zero.data();
  const float* vrows[kBK];
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t pos = pr.Offset() + i, lo = pr.KeyLo(local, pos), hi = pr.KeyHi(local, pos);
    for (int64_t e = 0; e < nh * dh; ++e) O[e] = 0.0f;
    for (int64_t hh = 0; hh < nh; ++hh) sc.m[hh] = kNegInf, sc.l[hh] = 0.0f;
    for (int64_t kb = lo; kb <= hi; kb += kBK) {
      const int nk = static_cast<int>(std::min<int64_t>(kBK, hi + 1 - kb));
      for (int j = 0; j < kBK; ++j) {
        if (j < nk) {
          const float* k = KRow(p, p.k, b, kb + j, h0);
          for (int64_t d = 0; d < dh; ++d) kt[d * kBK + j] = k[d];
          vrows[j] = KRow(p, p.v, b, kb + j, h0);
        } else {
          for (int64_t d = 0; d < dh; ++d) kt[d * kBK + j] = 0.0f;
        }
      }
      float kbias[kBK];  // padding, and columns past nk
      for (int j = 0; j < kBK; ++j) kbias[j] = (j < nk && KeyValid(p, b, kb + j)) ? 0.0f : kNegInf;
      for (int64_t hh = 0; hh < nh; ++hh) {
        const float* q = p.q + (b * p.Lq + i) * p.ld + (h0 + hh) * dh;
        float* __restrict s = S + hh * kBK;
        for (int jc = 0; jc < (nk + kW - 1) / kW * kW; jc += kW) ScoreTile<V, 1, kCV>(&q, kt, kBK, dh, jc, s);
        VF sv[kBK / kVF];
        VF mv = Splat(kNegInf);
        for (int c = 0; c < kBK / kVF; ++c) {
          // columns past the last whole tile were not written: select them away
          const VI j = kLane + c * kVF;
          sv[c] = j < nk ? LoadV(s + c * kVF) * p.scale + LoadV(kbias + c * kVF) : Splat(kNegInf);
          mv = MaxV(mv, sv[c]);
        }
        const float mx = HMax(mv);
        float& m = sc.m[hh];
        if (mx == kNegInf) {
          for (int c = 0; c < kBK / kVF; ++c) StoreV(s + c * kVF, Splat(0.0f));
          continue;
        }
        if (mx > m) {
          const float corr = m == kNegInf ? 0.0f : Exp(m - mx);
          sc.l[hh] *= corr;
          for (int64_t d = 0; d < dh; ++d) O[hh * dh + d] *= corr;
          m = mx;
        }
        VF sum = Splat(0.0f);
        for (int c = 0; c < kBK / kVF; ++c) {
          const VF e = ExpV(sv[c] - m);
          sum += e;
          StoreV(s + c * kVF, e);
        }
        sc.l[hh] += HSum(sum);
        float* __restrict o = O + hh * dh;
        int64_t d0 = 0;
        for (; d0 + kW <= dh; d0 += kW) PvTile<V, 1, kCV>(s, vrows, nk, d0, o, dh);
        for (; d0 + N <= dh; d0 += N) PvTile<V, 1, 1>(s, vrows, nk, d0, o, dh);
        if (d0 < dh) PvTail<1>(s, vrows, nk, d0, dh, o);
      }
    }
    for (int64_t hh = 0; hh < nh; ++hh) {
      const float l = sc.l[hh];
      StoreRow(p, b, i, h0 + hh, O + hh * dh, l > 0.0f ? 1.0f / l : 0.0f);
    }
  }
}

// Rows mode: one task per (batch, KV head, block of queries); runs of query heads of one kind
// share the K / V reads.
template <class V, int kCV>
N6_INLINE void RowTask(const Plan& p, size_t task, Scratch& sc) {
  const int64_t qb = static_cast<int64_t>(task) % p.nqb;
  const int64_t bg = static_cast<int64_t>(task) / p.nqb;
  const int64_t hkv = p.H / p.G, g = bg % hkv, b = bg / hkv;
  const int64_t i0 = qb * kBQ, i1 = std::min<int64_t>(p.Lq, i0 + kBQ);
  for (int64_t h = g * p.G; h < (g + 1) * p.G;) {
    const int kind = p.kinds[h];
    int64_t e = h + 1;
    while (e < (g + 1) * p.G && p.kinds[e] == kind) ++e;
    if (kind == egyptian::kGlobal) {
      sc.o.resize(static_cast<size_t>(p.dh));
      for (int64_t hh = h; hh < e; ++hh) GlobalBlock(p, b, hh, i0, i1, sc.o.data());
    } else {
      RowBlock<V, kCV>(p, b, h, e - h, i0, i1, kind == egyptian::kLocal, sc);
    }
    h = e;
  }
}

template <class V, int kRows, int kCV>
N6_INLINE void RunTaskImpl(const Plan& p, size_t task) {
  thread_local Scratch sc;
  if (p.rows) return RowTask<V, kCV>(p, task, sc);
  const int64_t qb = static_cast<int64_t>(task) % p.nqb;
  const int64_t bh = static_cast<int64_t>(task) / p.nqb;
  const int64_t h = bh % p.H, b = bh / p.H;
  const int64_t i0 = qb * kBQ, i1 = std::min<int64_t>(p.Lq, i0 + kBQ);
  const int kind = p.kinds[h];
  if (kind == egyptian::kGlobal) {
    sc.o.resize(static_cast<size_t>(p.dh));
    GlobalBlock(p, b, h, i0, i1, sc.o.data());
  } else if (i1 - i0 < kRows) {  // the last few queries of a block: no padded rows
    StreamBlock<V, 1, kCV>(p, b, h, i0, i1, kind == egyptian::kLocal, sc);
  } else {
    StreamBlock<V, kRows, kCV>(p, b, h, i0, i1, kind == egyptian::kLocal, sc);
  }
}

using TaskFn = void (*)(const Plan&, size_t);
void TaskGeneric(const Plan& p, size_t t) { RunTaskImpl<VF4, 4, 2>(p, t); }
#if N6_HAVE_ISA_CLONES
N6_TARGET_AVX2 void TaskAvx2(const Plan& p, size_t t) { RunTaskImpl<VF8, 4, 2>(p, t); }
N6_TARGET_AVX512 void TaskAvx512(const Plan& p, size_t t) { RunTaskImpl<VF, 8, 2>(p, t); }
#endif
TaskFn SelectTaskFn() { return SelectIsa<TaskFn>(&TaskGeneric, N6_CLONE(&TaskAvx2), N6_CLONE(&TaskAvx512)); }

// K of KV head (b, g) transposed into p.kt: [dh, lp], columns [kt_lo[g], Lk) from K, zero past Lk.
void TransposeTask(void* data, size_t task) {
  const Plan& p = *static_cast<const Plan*>(data);
  const int64_t hkv = p.H / p.G;
  const int64_t g = static_cast<int64_t>(task) % hkv, b = static_cast<int64_t>(task) / hkv;
  const int64_t lo = p.kt_lo[g];
  if (lo >= p.lp) return;  // only global heads read this KV head
  float* dst = p.kt + (b * hkv + g) * p.dh * p.lp;
  for (int64_t j0 = lo; j0 < p.lp; j0 += kBK) {  // blocks of keys: rows stay in cache
    for (int64_t j = j0; j < std::min<int64_t>(j0 + kBK, p.lp); ++j) {
      if (j < p.Lk) {
        const float* k = p.k + (b * p.Lk + j) * p.ldk + g * p.dh;
        for (int64_t d = 0; d < p.dh; ++d) dst[d * p.lp + j] = k[d];
      } else {
        for (int64_t d = 0; d < p.dh; ++d) dst[d * p.lp + j] = 0.0f;
      }
    }
  }
}

struct Widen {
  const uint16_t* src[3];
  float* dst[3];
  size_t n[3];
  size_t per;  // chunks per tensor (of the largest)
};
constexpr size_t kWidenChunk = size_t{1} << 15;
void WidenTask(void* data, size_t task) {
  const Widen& w = *static_cast<const Widen*>(data);
  const size_t t = task / w.per, c = task % w.per;
  const size_t begin = c * kWidenChunk, end = std::min(w.n[t], begin + kWidenChunk);
  if (begin < end) WidenF16(w.src[t] + begin, w.dst[t] + begin, end - begin);
}

struct CpuBackend {
  static constexpr const char* kProvider = kCpuProvider;
  static std::string Check(const egyptian::Problem&) { return ""; }

  template <class T>
  static Ort::Status Run(OrtKernelContext* ctx, const egyptian::Problem& pr, const egyptian::Io<T>& io) {
    const size_t n = io.n, nkv = io.nkv;
    Plan p{};
    std::vector<float> wide;
    if constexpr (std::is_same<T, float>::value) {
      p.q = io.q;
      p.k = io.k;
      p.v = io.v;
      p.y32 = io.y;
    } else {
      wide.resize(n + 2 * nkv);
      const size_t per = (std::max(n, nkv) + kWidenChunk - 1) / kWidenChunk;
      Widen w{{reinterpret_cast<const uint16_t*>(io.q), reinterpret_cast<const uint16_t*>(io.k),
               reinterpret_cast<const uint16_t*>(io.v)},
              {wide.data(), wide.data() + n, wide.data() + n + nkv},
              {n, nkv, nkv},
              per};
      Ort::Status st = RunParallel(ctx, &WidenTask, 3 * per, &w);
      if (!st.IsOK()) return st;
      p.q = wide.data();
      p.k = wide.data() + n;
      p.v = wide.data() + n + nkv;
      p.y16 = reinterpret_cast<uint16_t*>(io.y);
    }
    p.pr = &pr;
    p.mask = io.mask;
    p.B = pr.B;
    p.Lq = pr.Lq;
    p.Lk = pr.Lk;
    p.H = pr.H;
    p.G = pr.Group();
    p.dh = pr.dh;
    p.ld = pr.H * pr.dh;
    p.ldk = pr.Hkv * pr.dh;
    p.scale = pr.scale;
    p.kinds = pr.kinds.data();
    p.nqb = (pr.Lq + kBQ - 1) / kBQ;
    p.lp = (pr.Lk + kBK - 1) / kBK * kBK;
    // per KV head, the first key a full / local query head of it can see (lp: none)
    std::vector<int64_t> kt_lo(static_cast<size_t>(pr.Hkv), p.lp);
    bool streamed = false;
    for (int64_t h = 0; h < pr.H; ++h) {
      if (pr.kinds[h] == egyptian::kGlobal) continue;
      streamed = true;
      int64_t& lo = kt_lo[static_cast<size_t>(h / p.G)];
      lo = std::min(lo, pr.KeyLo(pr.kinds[h] == egyptian::kLocal, pr.Offset()));
    }
    p.kt_lo = kt_lo.data();
    // a few queries read K rows directly: the transposed copy would cost as much as the attention
    p.rows = pr.Lq < kRowsBelow;
    std::unique_ptr<float[]> kt;
    if (streamed && !p.rows) {
      // uninitialised: only the columns some query can see are written; a register tile may read
      // up to a tile past them (columns masked by a select), + kBK so that the last row does not
      // end the buffer there
      kt.reset(new float[static_cast<size_t>(p.B * pr.Hkv * p.dh * p.lp + kBK)]);
      p.kt = kt.get();
      Ort::Status st = RunParallel(ctx, &TransposeTask, static_cast<size_t>(p.B * pr.Hkv), &p);
      if (!st.IsOK()) return st;
    }
    static const TaskFn fn = SelectTaskFn();
    return RunPlanTasks(ctx, fn, p, static_cast<size_t>(p.B * (p.rows ? pr.Hkv : p.H) * p.nqb));
  }

  // cache mode: per head kind, a plain causal call on the kind's gathered keys (egyptian/cache_host.h)
  template <class T>
  static Ort::Status RunCache(OrtKernelContext* ctx, const egyptian::Problem& pr, const egyptian::CacheLayout& c,
                              const egyptian::Io<T>& io, const egyptian::CacheIo<T>& cio) {
    return egyptian::RunCacheByKind<T>(pr, c, io, cio, [ctx](const egyptian::Problem& sub, const egyptian::Io<T>& s) {
      return Run<T>(ctx, sub, s);
    });
  }
};

}  // namespace

void AppendEgyptianAttentionOps(OpList& ops) { egyptian::AppendOps<CpuBackend>(ops); }

}  // namespace n6
