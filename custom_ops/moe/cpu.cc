// MoE(X, logits, W1, b1?, W2, b2?, W3?, importance?) -> Y, CPU kernel (float32 / float16 storage,
// fp32 compute). Definition: n6onnx/ops/moe.py; routing and activations: moe/moe.h.
//
// Sparse dispatch:
//   1. route every token (moe::RouteToken): `keep` (expert, weight) pairs per token, sorted by
//      expert index; pairs of weight 0 are skipped;
//   2. counting sort of the (token, slot) pairs by expert;
//   3. one task per (expert, tile of <= kTile of its tokens) on the session's intra-op pool
//      (KernelContext_ParallelFor): gather the tile's rows of X (fp16: widened), H = X W1[e] + b1,
//      activation (swiglu: silu(H) * X W3[e]), O = act W2[e] + b2, written times the routing
//      weight into the token's slot of a [N, keep, D] fp32 buffer;
//   4. per token, Y = sum of its slots in slot (= expert index) order, rounded once to T.
// Every expert runs only on its own tokens; the result does not depend on the thread count.
//
// GEMMs: register-tiled micro-kernels, 6 rows x 16 columns (AVX2 + FMA) or 6 x 32 (AVX-512),
// streaming the weight panel [K, 16|32] down the tile's rows (the panel stays in L1/L2 while the
// <= 64 rows of the tile reuse it); a scalar kernel for the generic x86-64 path and for the
// columns left over. float16 weights are widened once per call for the experts in use.
#include <algorithm>
#include <cmath>
#include <optional>

#include "common/half.h"
#include "common/isa.h"
#include "common/ort_glue.h"
#include "moe/op.h"

namespace n6 {
namespace {

constexpr int kTile = 64;  // tokens per task

// ------------------------------------------------------------------ GEMM: C = A B (+ bias)
// A [m, K] (row stride lda), B [K, n] (row stride ldb), C [m, n] (row stride ldc), bias [n] or null.
N6_INLINE void GemmScalar(const float* A, int lda, int m, int K, const float* B, int ldb, int j0, int n,
                          const float* bias, float* C, int ldc, bool acc) {
  for (int i = 0; i < m; ++i) {
    float* c = C + static_cast<size_t>(i) * ldc;
    if (!acc)
      for (int j = j0; j < n; ++j) c[j] = bias ? bias[j] : 0.0f;
    const float* a = A + static_cast<size_t>(i) * lda;
    for (int k = 0; k < K; ++k) {
      const float av = a[k];
      const float* b = B + static_cast<size_t>(k) * ldb;
      for (int j = j0; j < n; ++j) c[j] += av * b[j];
    }
  }
}

void GemmGeneric(const float* A, int lda, int m, int K, const float* B, int ldb, int n, const float* bias, float* C,
                 int ldc, bool acc) {
  GemmScalar(A, lda, m, K, B, ldb, 0, n, bias, C, ldc, acc);
}

using KernelFn = void (*)(const float*, int, int, int, const float*, int, int, const float*, float*, int, bool);

#if N6_HAVE_ISA_CLONES
constexpr int kPf = 12;  // weight rows prefetched ahead (prefetches past the end are harmless hints)

// One register vector of each ISA clone. The members carry their ISA's target and are plain
// `inline`: they inline into GemmSimd only where it is itself inlined into a clone of that ISA
// (an always_inline intrinsic cannot be reached from the default-target template).
struct Avx2Vec {
  using R = __m256;
  static constexpr int kW = 8;
  N6_TARGET_AVX2 static inline R Load(const float* p) { return _mm256_loadu_ps(p); }
  N6_TARGET_AVX2 static inline void Store(float* p, R v) { _mm256_storeu_ps(p, v); }
  N6_TARGET_AVX2 static inline R Zero() { return _mm256_setzero_ps(); }
  N6_TARGET_AVX2 static inline R Bcast(const float* p) { return _mm256_broadcast_ss(p); }
  N6_TARGET_AVX2 static inline R Fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
};
struct Avx512Vec {
  using R = __m512;
  static constexpr int kW = 16;
  N6_TARGET_AVX512 static inline R Load(const float* p) { return _mm512_loadu_ps(p); }
  N6_TARGET_AVX512 static inline void Store(float* p, R v) { _mm512_storeu_ps(p, v); }
  N6_TARGET_AVX512 static inline R Zero() { return _mm512_setzero_ps(); }
  N6_TARGET_AVX512 static inline R Bcast(const float* p) { return _mm512_set1_ps(*p); }
  N6_TARGET_AVX512 static inline R Fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
};

// The 6 x (2 vectors) register tile over the columns that fill whole tiles; the columns left over
// go to `tail` (a narrower ISA's kernel, or the scalar one).
template <class V>
N6_INLINE void GemmSimd(const float* A, int lda, int m, int K, const float* B, int ldb, int n, const float* bias,
                        float* C, int ldc, bool acc, KernelFn tail) {
  using R = typename V::R;
  constexpr int MR = 6, W = V::kW, NR = 2 * W;
  int j0 = 0;
  for (; j0 + NR <= n; j0 += NR) {
    for (int i0 = 0; i0 < m; i0 += MR) {
      const int mr = std::min(MR, m - i0);
      const float* a[MR];
      for (int r = 0; r < MR; ++r) a[r] = A + static_cast<size_t>(i0 + std::min(r, mr - 1)) * lda;
      R c0[MR], c1[MR];
      if (acc) {  // continue a K block: start from C (rows past m read a valid row, never stored)
        for (int r = 0; r < MR; ++r) {
          const float* c = C + static_cast<size_t>(i0 + std::min(r, mr - 1)) * ldc + j0;
          c0[r] = V::Load(c);
          c1[r] = V::Load(c + W);
        }
      } else {
        const R z0 = bias ? V::Load(bias + j0) : V::Zero();
        const R z1 = bias ? V::Load(bias + j0 + W) : V::Zero();
        for (int r = 0; r < MR; ++r) {
          c0[r] = z0;
          c1[r] = z1;
        }
      }
      const float* b = B + j0;
      for (int k = 0; k < K; ++k, b += ldb) {
        // the panel walks down K rows ldb apart (a new page per row): prefetch kPf rows ahead
        const char* pf = reinterpret_cast<const char*>(b + kPf * static_cast<size_t>(ldb));
        for (int line = 0; line < NR * static_cast<int>(sizeof(float)) / 64; ++line)
          _mm_prefetch(pf + 64 * line, _MM_HINT_T0);
        const R b0 = V::Load(b), b1 = V::Load(b + W);
        for (int r = 0; r < MR; ++r) {
          const R av = V::Bcast(a[r] + k);
          c0[r] = V::Fma(av, b0, c0[r]);
          c1[r] = V::Fma(av, b1, c1[r]);
        }
      }
      for (int r = 0; r < mr; ++r) {
        float* c = C + static_cast<size_t>(i0 + r) * ldc + j0;
        V::Store(c, c0[r]);
        V::Store(c + W, c1[r]);
      }
    }
  }
  if (j0 < n) tail(A, lda, m, K, B + j0, ldb, n - j0, bias ? bias + j0 : nullptr, C + j0, ldc, acc);
}

N6_TARGET_AVX2 void GemmAvx2(const float* A, int lda, int m, int K, const float* B, int ldb, int n, const float* bias,
                             float* C, int ldc, bool acc) {
  GemmSimd<Avx2Vec>(A, lda, m, K, B, ldb, n, bias, C, ldc, acc, &GemmGeneric);
}
N6_TARGET_AVX512 void GemmAvx512(const float* A, int lda, int m, int K, const float* B, int ldb, int n,
                                 const float* bias, float* C, int ldc, bool acc) {
  GemmSimd<Avx512Vec>(A, lda, m, K, B, ldb, n, bias, C, ldc, acc, &GemmAvx2);
}
#endif

KernelFn SelectKernel() { return SelectIsa<KernelFn>(&GemmGeneric, N6_CLONE(&GemmAvx2), N6_CLONE(&GemmAvx512)); }

// C = A B + bias in K blocks of kKC rows of B: a [kKC, 16|32] weight panel (32 KB) stays in L1
// while every row block of the tile uses it; C carries the partial sums between K blocks.
constexpr int kKC = 256;
void Gemm(const float* A, int lda, int m, int K, const float* B, int ldb, int n, const float* bias, float* C, int ldc) {
  static const KernelFn kernel = SelectKernel();
  int k0 = 0;
  do {
    const int kc = std::min(kKC, K - k0);
    kernel(A + k0, lda, m, kc, B + static_cast<size_t>(k0) * ldb, ldb, n, bias, C, ldc, k0 > 0);
    k0 += kc;
  } while (k0 < K);
}

using GemmFn = void (*)(const float*, int, int, int, const float*, int, int, const float*, float*, int);
GemmFn SelectGemm() { return &Gemm; }

// ------------------------------------------------------------------ activations over a tile
template <int kAct>
N6_INLINE void ActRows(float* h, const float* g, size_t n) {
  for (size_t i = 0; i < n; ++i) h[i] = moe::Activate<kAct>(h[i], g ? g[i] : 0.0f);
}
using ActFn = void (*)(float*, const float*, size_t);
template <int kAct>
ActFn SelectActOne() {
  return IsaClones<void(float*, const float*, size_t), &ActRows<kAct>, false>::Select();
}
ActFn SelectAct(int act) {
  static const ActFn fns[6] = {SelectActOne<0>(), SelectActOne<1>(), SelectActOne<2>(),
                               SelectActOne<3>(), SelectActOne<4>(), SelectActOne<5>()};
  return fns[act];
}

// ------------------------------------------------------------------ plan and tasks
struct Plan {
  moe::Problem pr;
  const void* x = nullptr;  // [N, D] T
  bool half = false;
  const float* w1 = nullptr;  // [E, D, H] fp32 (widened copies for fp16)
  const float* w2 = nullptr;  // [E, H, D]
  const float* w3 = nullptr;  // [E, D, H] or null
  const float* b1 = nullptr;  // [E, H] or null
  const float* b2 = nullptr;  // [E, D] or null
  const int32_t* order = nullptr;  // (token * keep + slot) entries grouped by expert
  std::vector<int64_t> tasks;      // (expert << 32) | first entry of the tile
  const int32_t* offsets = nullptr;  // [E + 1] into order
  const float* tok_w = nullptr;      // [N * keep]
  float* contrib = nullptr;          // [N * keep, D]
  GemmFn gemm = nullptr;
  ActFn act = nullptr;
};

struct Scratch {
  std::vector<float> x, h, g, o;
};

void ExpertTask(void* data, size_t t) {
  const Plan& p = *static_cast<const Plan*>(data);
  const int e = static_cast<int>(p.tasks[t] >> 32);
  const int32_t first = static_cast<int32_t>(p.tasks[t] & 0xffffffff);
  const int m = std::min<int32_t>(kTile, p.offsets[e + 1] - first);
  const int D = static_cast<int>(p.pr.D), H = static_cast<int>(p.pr.H);
  thread_local Scratch s;
  s.x.resize(static_cast<size_t>(m) * D);
  s.h.resize(static_cast<size_t>(m) * H);
  s.o.resize(static_cast<size_t>(m) * D);
  for (int i = 0; i < m; ++i) {  // gather the tile's rows of X
    const int tok = p.order[first + i] / p.pr.keep;
    float* dst = s.x.data() + static_cast<size_t>(i) * D;
    if (p.half) {
      const uint16_t* src = static_cast<const uint16_t*>(p.x) + static_cast<size_t>(tok) * D;
      WidenF16(src, dst, D);
    } else {
      std::memcpy(dst, static_cast<const float*>(p.x) + static_cast<size_t>(tok) * D, D * sizeof(float));
    }
  }
  const size_t dh = static_cast<size_t>(D) * H;
  p.gemm(s.x.data(), D, m, D, p.w1 + e * dh, H, H, p.b1 ? p.b1 + static_cast<size_t>(e) * H : nullptr, s.h.data(), H);
  const float* gate = nullptr;
  if (p.pr.act == moe::kSwiglu) {
    s.g.resize(static_cast<size_t>(m) * H);
    p.gemm(s.x.data(), D, m, D, p.w3 + e * dh, H, H, nullptr, s.g.data(), H);
    gate = s.g.data();
  }
  p.act(s.h.data(), gate, static_cast<size_t>(m) * H);
  p.gemm(s.h.data(), H, m, H, p.w2 + e * dh, D, D, p.b2 ? p.b2 + static_cast<size_t>(e) * D : nullptr, s.o.data(), D);
  for (int i = 0; i < m; ++i) {
    const int32_t slot = p.order[first + i];
    const float w = p.tok_w[slot];
    const float* o = s.o.data() + static_cast<size_t>(i) * D;
    float* dst = p.contrib + static_cast<size_t>(slot) * D;
    for (int d = 0; d < D; ++d) dst[d] = w * o[d];
  }
}

struct Reduce {
  const Plan* p;
  void* y;
  size_t chunk;
};
void ReduceTask(void* data, size_t t) {
  const Reduce& r = *static_cast<const Reduce*>(data);
  const Plan& p = *r.p;
  const size_t D = static_cast<size_t>(p.pr.D), keep = static_cast<size_t>(p.pr.keep);
  const size_t n0 = t * r.chunk, n1 = std::min<size_t>(p.pr.N, n0 + r.chunk);
  thread_local std::vector<float> acc;
  acc.resize(D);
  for (size_t n = n0; n < n1; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (size_t s = 0; s < keep; ++s) {  // slot order = expert index order
      if (p.tok_w[n * keep + s] == 0.0f) continue;
      const float* c = p.contrib + (n * keep + s) * D;
      for (size_t d = 0; d < D; ++d) acc[d] += c[d];
    }
    if (p.half) {
      uint16_t* y = static_cast<uint16_t*>(r.y) + n * D;
      for (size_t d = 0; d < D; ++d) y[d] = F16Codec::FromFloat(acc[d]);
    } else {
      std::memcpy(static_cast<float*>(r.y) + n * D, acc.data(), D * sizeof(float));
    }
  }
}

struct Widen {
  const uint16_t* src;
  float* dst;
  const int32_t* experts;  // experts to widen
  size_t per;              // elements per expert
};
void WidenTask(void* data, size_t t) {
  const Widen& w = *static_cast<const Widen*>(data);
  const size_t off = static_cast<size_t>(w.experts[t]) * w.per;
  WidenF16(w.src + off, w.dst + off, w.per);
}

template <bool kHalf>
std::vector<float> ToF32Vec(const void* src, size_t n) {
  std::vector<float> out(n);
  if constexpr (kHalf) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    WidenF16(s, out.data(), n);
  } else {
    std::memcpy(out.data(), src, n * sizeof(float));
  }
  return out;
}

struct CpuBackend {
  static constexpr const char* kProvider = kCpuProvider;
  static void Configure(moe::Attrs&) {}

  template <bool kHalf>
  static Ort::Status Run(OrtKernelContext* ctx, const moe::Problem& pr, const moe::Inputs& in, void* y) {
    using moe::Input;
    Plan p;
    p.pr = pr;
    const size_t N = pr.N, D = pr.D, H = pr.H, E = pr.E, G = pr.G, keep = pr.keep;
    // 1. routing
    const std::vector<float> lf = ToF32Vec<kHalf>(in.data[moe::kLogits], N * G);
    const float* imp = pr.has_imp ? static_cast<const float*>(in.data[moe::kImportance]) : nullptr;
    std::vector<int32_t> tok_e(N * keep);
    std::vector<float> tok_w(N * keep);
    for (size_t n = 0; n < N; ++n)
      moe::RouteToken(lf.data() + n * G, pr, imp, tok_e.data() + n * keep, tok_w.data() + n * keep);
    // 2. counting sort by expert (entries of weight 0 are skipped)
    std::vector<int32_t> offsets(E + 1, 0), order;
    for (size_t i = 0; i < N * keep; ++i)
      if (tok_w[i] != 0.0f) ++offsets[tok_e[i] + 1];
    for (size_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
    order.resize(offsets[E]);
    {
      std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
      for (size_t i = 0; i < N * keep; ++i)
        if (tok_w[i] != 0.0f) order[fill[tok_e[i]]++] = static_cast<int32_t>(i);
    }
    std::vector<int32_t> used;
    for (size_t e = 0; e < E; ++e) {
      if (offsets[e + 1] == offsets[e]) continue;
      used.push_back(static_cast<int32_t>(e));
      for (int32_t f = offsets[e]; f < offsets[e + 1]; f += kTile) p.tasks.push_back((static_cast<int64_t>(e) << 32) | f);
    }
    // weights: fp32 pointers, or widened copies of the experts in use
    std::vector<float> w1f, w2f, w3f, b1f, b2f;
    p.half = kHalf;
    const bool swiglu = pr.act == moe::kSwiglu;
    if constexpr (!kHalf) {
      p.w1 = static_cast<const float*>(in.data[moe::kW1]);
      p.w2 = static_cast<const float*>(in.data[moe::kW2]);
      p.w3 = swiglu ? static_cast<const float*>(in.data[moe::kW3]) : nullptr;
    } else {
      const size_t per = D * H;
      auto widen = [&](const void* W, std::vector<float>& dst) -> Ort::Status {
        dst.resize(E * per);
        Widen wj{static_cast<const uint16_t*>(W), dst.data(), used.data(), per};
        return RunParallel(ctx, &WidenTask, used.size(), &wj);
      };
      Ort::Status st = widen(in.data[moe::kW1], w1f);
      if (st.IsOK()) st = widen(in.data[moe::kW2], w2f);
      if (st.IsOK() && swiglu) st = widen(in.data[moe::kW3], w3f);
      if (!st.IsOK()) return st;
      p.w1 = w1f.data();
      p.w2 = w2f.data();
      p.w3 = swiglu ? w3f.data() : nullptr;
    }
    if (pr.has_b1) {
      b1f = ToF32Vec<kHalf>(in.data[moe::kB1], E * H);
      p.b1 = b1f.data();
    }
    if (pr.has_b2) {
      b2f = ToF32Vec<kHalf>(in.data[moe::kB2], E * D);
      p.b2 = b2f.data();
    }
    p.x = in.data[moe::kX];
    p.order = order.data();
    p.offsets = offsets.data();
    p.tok_w = tok_w.data();
    std::vector<float> contrib(N * keep * D);
    p.contrib = contrib.data();
    static const GemmFn gemm = SelectGemm();
    p.gemm = gemm;
    p.act = SelectAct(pr.act);
    // 3. experts on their tokens
    Ort::Status st = RunParallel(ctx, &ExpertTask, p.tasks.size(), &p);
    if (!st.IsOK()) return st;
    // 4. per-token sums in expert order
    Reduce r{&p, y, std::max<size_t>(1, 16384 / std::max<size_t>(1, D * keep))};
    return RunParallel(ctx, &ReduceTask, (N + r.chunk - 1) / r.chunk, &r);
  }
};

}  // namespace

void AppendMoEOps(OpList& ops) { moe::AppendOps<CpuBackend>(ops); }

}  // namespace n6
