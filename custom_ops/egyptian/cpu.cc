// EgyptianAttention(Q, K, V, key_padding_mask?) -> Y, CPU kernel (float32 / float16 storage, fp32
// compute). Shapes, attributes and head kinds: egyptian/egyptian.h.
//
// Work split: one task per (batch, head, block of kBQ queries), on the session's intra-op pool.
//   full / local heads: flash-style streaming softmax over key blocks of kBK. K is transposed
//     once per head into [dh, L] (a parallel pre-pass); S = Q.K^T and O += P.V run as register
//     tiles (AVX-512: 8 queries x 32 lanes, AVX2: 4 x 16, generic: 4 x 8: enough independent
//     accumulators to hide the FMA latency, none spilled), explicit vectors (common/vec16.h). Per query the running max m, sum l
//     and output accumulator are rescaled once per key block. A local head visits only the keys
//     [i0 - w/2, i1 - 1 + w/2] of its query block (O(L * (window + kBQ) * dh)), masking per query
//     |i - j| > w/2.
//   global heads: two keys per query, O(L * dh).
// Exponentials use the branch-free polynomial exp of common/fastmath.h (Cephes expf form, ~2 ulp)
// so they vectorise.
// float16 inputs are widened once into fp32 copies; the output is rounded once.
#include <cmath>
#include <limits>
#include <optional>

#include "common/fastmath.h"
#include "common/half.h"
#include "common/isa.h"
#include "common/ort_glue.h"
#include "common/vec16.h"
#include "egyptian/op.h"

namespace n6 {
namespace {

constexpr int kBQ = 32;  // queries per task
constexpr int kBK = 64;  // keys per block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const VI kLane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

struct Plan {
  const float* q;  // [B, L, H*dh] fp32 (widened copies for fp16)
  const float* k;
  const float* v;
  const int32_t* mask;  // [B, L] or null
  float* y32;           // fp32 output, or null
  uint16_t* y16;        // fp16 output, or null
  int64_t B, L, H, dh, ld, half, nqb;
  float scale;
  const int* kinds;
  float* kt;   // [B, H, dh, lp]: K transposed per head (full / local heads), zero past L
  int64_t lp;  // L rounded up to kBK
};

N6_INLINE bool KeyValid(const Plan& p, int64_t b, int64_t j) { return !p.mask || p.mask[b * p.L + j] != 0; }

N6_INLINE void StoreRow(const Plan& p, int64_t b, int64_t i, int64_t h, const float* acc, float inv) {
  const size_t off = static_cast<size_t>((b * p.L + i) * p.ld + h * p.dh);
  if (p.y32) {
    float* dst = p.y32 + off;
    for (int64_t d = 0; d < p.dh; ++d) dst[d] = acc[d] * inv;
  } else {
    uint16_t* dst = p.y16 + off;
    for (int64_t d = 0; d < p.dh; ++d) dst[d] = F16Codec::FromFloat(acc[d] * inv);
  }
}

// Global head: keys {0, L-1}.
N6_INLINE void GlobalBlock(const Plan& p, int64_t b, int64_t h, int64_t i0, int64_t i1, float* acc) {
  int64_t keys[2] = {0, p.L - 1};
  const int nk = p.L > 1 ? 2 : 1;
  for (int64_t i = i0; i < i1; ++i) {
    const float* q = p.q + (b * p.L + i) * p.ld + h * p.dh;
    float s[2] = {kNegInf, kNegInf};
    for (int t = 0; t < nk; ++t) {
      if (!KeyValid(p, b, keys[t])) continue;
      const float* k = p.k + (b * p.L + keys[t]) * p.ld + h * p.dh;
      float dot = 0.0f;
      for (int64_t d = 0; d < p.dh; ++d) dot += q[d] * k[d];
      s[t] = dot * p.scale;
    }
    const float m = s[0] > s[1] ? s[0] : s[1];
    for (int64_t d = 0; d < p.dh; ++d) acc[d] = 0.0f;
    float l = 0.0f;
    if (m != kNegInf) {
      for (int t = 0; t < nk; ++t) {
        if (s[t] == kNegInf) continue;
        const float e = Exp(s[t] - m);
        l += e;
        const float* v = p.v + (b * p.L + keys[t]) * p.ld + h * p.dh;
        for (int64_t d = 0; d < p.dh; ++d) acc[d] += e * v[d];
      }
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
  const float* kth = p.kt + (b * p.H + h) * dh * p.lp;
  float* __restrict S = sc.s.data();
  float* __restrict O = sc.o.data();
  const float* qrows[kBQ];
  for (int64_t qi = 0; qi < nqp; ++qi) {
    qrows[qi] = qi < nq ? p.q + (b * p.L + i0 + qi) * p.ld + h * dh : sc.zero.data();
  }
  const float* vrows[kBK];
  const int64_t klo = local ? std::max<int64_t>(0, i0 - p.half) : 0;
  const int64_t khi = local ? std::min<int64_t>(p.L - 1, i1 - 1 + p.half) : p.L - 1;
  for (int64_t kb = klo; kb <= khi; kb += kBK) {
    const int nk = static_cast<int>(std::min<int64_t>(kBK, khi + 1 - kb));
    for (int j = 0; j < nk; ++j) vrows[j] = p.v + (b * p.L + kb + j) * p.ld + h * dh;
    constexpr int kW = kCV * kLanes<V>;
    const int ncol = (nk + kW - 1) / kW * kW;  // kBK is a multiple of kW; kt is zero past L
    for (int64_t qi = 0; qi < nqp; qi += kRows) {
      for (int jc = 0; jc < ncol; jc += kW) ScoreTile<V, kRows, kCV>(qrows + qi, kth + kb, p.lp, dh, jc, S + qi * kBK);
    }
    // key padding of this block as an additive bias (0 or -inf; -inf past nk)
    float kbias[kBK];
    for (int j = 0; j < kBK; ++j) kbias[j] = (j < nk && KeyValid(p, b, kb + j)) ? 0.0f : kNegInf;
    bool any = false;
    for (int64_t qi = 0; qi < nq; ++qi) {  // online softmax update of query row qi
      const int64_t i = i0 + qi;
      float* __restrict s = S + qi * kBK;
      VF sv[kBK / kVF];
      for (int c = 0; c < kBK / kVF; ++c) sv[c] = LoadV(s + c * kVF) * p.scale + LoadV(kbias + c * kVF);
      if (local) {  // keys outside |i - j| <= half
        const VI jlo = VI{} + static_cast<int32_t>(std::max<int64_t>(-1, i - p.half - kb));
        const VI jhi = VI{} + static_cast<int32_t>(std::min<int64_t>(kBK, i + p.half - kb));
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

template <class V, int kRows, int kCV>
N6_INLINE void RunTaskImpl(const Plan& p, size_t task) {
  thread_local Scratch sc;
  const int64_t qb = static_cast<int64_t>(task) % p.nqb;
  const int64_t bh = static_cast<int64_t>(task) / p.nqb;
  const int64_t h = bh % p.H, b = bh / p.H;
  const int64_t i0 = qb * kBQ, i1 = std::min<int64_t>(p.L, i0 + kBQ);
  const int kind = p.kinds[h];
  if (kind == egyptian::kGlobal) {
    sc.o.resize(static_cast<size_t>(p.dh));
    GlobalBlock(p, b, h, i0, i1, sc.o.data());
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

// K of head (b, h) transposed into p.kt: [dh, lp], zero past L.
void TransposeTask(void* data, size_t task) {
  const Plan& p = *static_cast<const Plan*>(data);
  const int64_t h = static_cast<int64_t>(task) % p.H, b = static_cast<int64_t>(task) / p.H;
  if (p.kinds[h] == egyptian::kGlobal) return;
  float* dst = p.kt + (b * p.H + h) * p.dh * p.lp;
  for (int64_t j0 = 0; j0 < p.lp; j0 += kBK) {  // blocks of keys: rows stay in cache
    for (int64_t j = j0; j < j0 + kBK; ++j) {
      if (j < p.L) {
        const float* k = p.k + (b * p.L + j) * p.ld + h * p.dh;
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
  size_t n;
};
constexpr size_t kWidenChunk = size_t{1} << 15;
void WidenTask(void* data, size_t task) {
  const Widen& w = *static_cast<const Widen*>(data);
  const size_t per = (w.n + kWidenChunk - 1) / kWidenChunk;
  const size_t t = task / per, c = task % per;
  const size_t begin = c * kWidenChunk, end = std::min(w.n, begin + kWidenChunk);
  if (begin < end) WidenF16(w.src[t] + begin, w.dst[t] + begin, end - begin);
}

struct CpuBackend {
  static constexpr const char* kProvider = kCpuProvider;
  static std::string Check(const egyptian::Problem&) { return ""; }

  template <class T>
  static Ort::Status Run(OrtKernelContext* ctx, const egyptian::Problem& pr, const egyptian::Io<T>& io) {
    const size_t n = io.n;
    Plan p{};
    std::vector<float> wide;
    if constexpr (std::is_same<T, float>::value) {
      p.q = io.q;
      p.k = io.k;
      p.v = io.v;
      p.y32 = io.y;
    } else {
      wide.resize(3 * n);
      Widen w{{reinterpret_cast<const uint16_t*>(io.q), reinterpret_cast<const uint16_t*>(io.k),
               reinterpret_cast<const uint16_t*>(io.v)},
              {wide.data(), wide.data() + n, wide.data() + 2 * n},
              n};
      Ort::Status st = RunParallel(ctx, &WidenTask, 3 * ((n + kWidenChunk - 1) / kWidenChunk), &w);
      if (!st.IsOK()) return st;
      p.q = wide.data();
      p.k = wide.data() + n;
      p.v = wide.data() + 2 * n;
      p.y16 = reinterpret_cast<uint16_t*>(io.y);
    }
    p.mask = io.mask;
    p.B = pr.B;
    p.L = pr.L;
    p.H = pr.H;
    p.dh = pr.dh;
    p.ld = pr.H * pr.dh;
    p.half = pr.half;
    p.scale = pr.scale;
    p.kinds = pr.kinds.data();
    p.nqb = (pr.L + kBQ - 1) / kBQ;
    p.lp = (pr.L + kBK - 1) / kBK * kBK;
    std::vector<float> kt;
    bool streamed = false;
    for (int kind : pr.kinds) streamed = streamed || kind != egyptian::kGlobal;
    if (streamed) {
      // + kBK: a local head's key blocks start anywhere, so a register tile may read up to a tile
      // past L (those columns are masked); the last head's last row must not end the buffer there
      kt.resize(static_cast<size_t>(p.B * p.H * p.dh * p.lp + kBK));
      p.kt = kt.data();
      Ort::Status st = RunParallel(ctx, &TransposeTask, static_cast<size_t>(p.B * p.H), &p);
      if (!st.IsOK()) return st;
    }
    static const TaskFn fn = SelectTaskFn();
    return RunPlanTasks(ctx, fn, p, static_cast<size_t>(p.B * p.H * p.nqb));
  }
};

}  // namespace

void AppendEgyptianAttentionOps(OpList& ops) { egyptian::AppendOps<CpuBackend>(ops); }

}  // namespace n6
