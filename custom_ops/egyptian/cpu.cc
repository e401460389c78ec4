// EgyptianAttention(Q, K, V, key_padding_mask?) -> Y, CPU kernel (float32 / float16 storage, fp32
// compute). Shapes, attributes and head kinds: egyptian/egyptian.h.
//
// Work split: one task per (batch, head, block of kBQ queries), on the session's intra-op pool.
//   full / local heads: flash-style streaming softmax over key blocks of kBK: the key block is
//     transposed into a [dh, kBK] scratch so the scores of a query are a vertical (vectorised)
//     multiply-add over dh; per query the running max m, sum l and output accumulator are
//     rescaled once per key block. A local head visits only the keys [i0 - w/2, i1 - 1 + w/2] of
//     its query block (O(L * (window + kBQ) * dh)), masking per query |i - j| > w/2.
//   global heads: two keys per query, O(L * dh).
// Exponentials use a branch-free polynomial exp (Cephes expf form, ~2 ulp) so they vectorise.
// float16 inputs are widened once into fp32 copies; the output is rounded once.
#include <cmath>
#include <limits>
#include <optional>

#include "common/elementwise.h"
#include "egyptian/egyptian.h"

namespace n6 {
namespace {

constexpr const char* kOp = "EgyptianAttention";
constexpr int kBQ = 32;  // queries per task
constexpr int kBK = 64;  // keys per block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

N6_INLINE float FastExp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: round to nearest integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * BitsToF32(static_cast<uint32_t>(e));
}

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
        const float e = FastExp(s[t] - m);
        l += e;
        const float* v = p.v + (b * p.L + keys[t]) * p.ld + h * p.dh;
        for (int64_t d = 0; d < p.dh; ++d) acc[d] += e * v[d];
      }
    }
    StoreRow(p, b, i, h, acc, l > 0.0f ? 1.0f / l : 0.0f);
  }
}

struct Scratch {
  std::vector<float> kt, s, acc, m, l;
};

// Full / local head: streaming softmax over key blocks.
N6_INLINE void StreamBlock(const Plan& p, int64_t b, int64_t h, int64_t i0, int64_t i1, bool local, Scratch& sc) {
  const int64_t dh = p.dh, nq = i1 - i0;
  sc.kt.resize(static_cast<size_t>(dh * kBK));
  sc.s.resize(kBK);
  sc.acc.assign(static_cast<size_t>(nq * dh), 0.0f);
  sc.m.assign(static_cast<size_t>(nq), kNegInf);
  sc.l.assign(static_cast<size_t>(nq), 0.0f);
  float* __restrict kt = sc.kt.data();
  float* __restrict s = sc.s.data();
  const int64_t klo = local ? std::max<int64_t>(0, i0 - p.half) : 0;
  const int64_t khi = local ? std::min<int64_t>(p.L - 1, i1 - 1 + p.half) : p.L - 1;
  for (int64_t kb = klo; kb <= khi; kb += kBK) {
    const int64_t nk = std::min<int64_t>(kBK, khi + 1 - kb);
    for (int64_t j = 0; j < nk; ++j) {  // transpose the key block: kt[d][j]
      const float* k = p.k + (b * p.L + kb + j) * p.ld + h * dh;
      for (int64_t d = 0; d < dh; ++d) kt[d * kBK + j] = k[d];
    }
    for (int64_t qi = 0; qi < nq; ++qi) {
      const int64_t i = i0 + qi;
      const float* __restrict q = p.q + (b * p.L + i) * p.ld + h * dh;
      for (int64_t j = 0; j < nk; ++j) s[j] = 0.0f;
      for (int64_t d = 0; d < dh; ++d) {
        const float qd = q[d];
        const float* __restrict row = kt + d * kBK;
        for (int64_t j = 0; j < nk; ++j) s[j] += qd * row[j];
      }
      const int64_t lo = local ? i - p.half : 0, hi = local ? i + p.half : p.L - 1;
      float mx = kNegInf;
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t key = kb + j;
        const bool ok = key >= lo && key <= hi && KeyValid(p, b, key);
        s[j] = ok ? s[j] * p.scale : kNegInf;
        mx = s[j] > mx ? s[j] : mx;
      }
      if (mx == kNegInf) continue;
      float& m = sc.m[qi];
      float& l = sc.l[qi];
      float* __restrict acc = sc.acc.data() + qi * dh;
      const float mnew = mx > m ? mx : m;
      if (mnew != m) {
        const float corr = m == kNegInf ? 0.0f : FastExp(m - mnew);
        l *= corr;
        for (int64_t d = 0; d < dh; ++d) acc[d] *= corr;
        m = mnew;
      }
      for (int64_t j = 0; j < nk; ++j) {
        const float e = FastExp(s[j] - mnew);
        s[j] = s[j] == kNegInf ? 0.0f : e;
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < nk; ++j) sum += s[j];
      l += sum;
      for (int64_t j = 0; j < nk; ++j) {
        const float pj = s[j];
        if (pj == 0.0f) continue;
        const float* __restrict v = p.v + (b * p.L + kb + j) * p.ld + h * dh;
        for (int64_t d = 0; d < dh; ++d) acc[d] += pj * v[d];
      }
    }
  }
  for (int64_t qi = 0; qi < nq; ++qi) {
    const float l = sc.l[qi];
    StoreRow(p, b, i0 + qi, h, sc.acc.data() + qi * dh, l > 0.0f ? 1.0f / l : 0.0f);
  }
}

N6_INLINE void RunTaskImpl(const Plan& p, size_t task) {
  thread_local Scratch sc;
  const int64_t qb = static_cast<int64_t>(task) % p.nqb;
  const int64_t bh = static_cast<int64_t>(task) / p.nqb;
  const int64_t h = bh % p.H, b = bh / p.H;
  const int64_t i0 = qb * kBQ, i1 = std::min<int64_t>(p.L, i0 + kBQ);
  const int kind = p.kinds[h];
  if (kind == egyptian::kGlobal) {
    sc.acc.resize(static_cast<size_t>(p.dh));
    GlobalBlock(p, b, h, i0, i1, sc.acc.data());
  } else {
    StreamBlock(p, b, h, i0, i1, kind == egyptian::kLocal, sc);
  }
}

using TaskFn = void (*)(const Plan&, size_t);
void TaskGeneric(const Plan& p, size_t t) { RunTaskImpl(p, t); }
#if N6_HAVE_ISA_CLONES
N6_TARGET_AVX2 void TaskAvx2(const Plan& p, size_t t) { RunTaskImpl(p, t); }
N6_TARGET_AVX512 void TaskAvx512(const Plan& p, size_t t) { RunTaskImpl(p, t); }
#endif
TaskFn SelectTaskFn() {
#if N6_HAVE_ISA_CLONES
  switch (HostIsa()) {
    case Isa::kAvx512: return &TaskAvx512;
    case Isa::kAvx2: return &TaskAvx2;
    default: break;
  }
#endif
  return &TaskGeneric;
}

struct Job {
  const Plan* plan;
  TaskFn fn;
};
void RunTask(void* data, size_t task) {
  const Job& j = *static_cast<const Job*>(data);
  j.fn(*j.plan, task);
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
  for (size_t i = begin; i < end; ++i) w.dst[t][i] = F16Codec::ToFloat(w.src[t][i]);
}

template <class T>
struct EgyptianCpu {
  egyptian::Attrs attrs;

  EgyptianCpu(const OrtApi*, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    try {
      attrs.num_heads = ki.GetAttribute<int64_t>("num_heads");
    } catch (...) {
      attrs.error = "the attribute num_heads (int) is required";
    }
    try {
      attrs.window = ki.GetAttribute<int64_t>("window");
    } catch (...) {
    }
    try {
      attrs.scale = ki.GetAttribute<float>("scale");
    } catch (...) {
    }
    try {
      attrs.head_kinds = ki.GetAttributes<int64_t>("head_kinds");
    } catch (...) {
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& Q, const Ort::Custom::Tensor<T>& K,
                      const Ort::Custom::Tensor<T>& V, std::optional<const Ort::Custom::Tensor<int32_t>*> mask,
                      Ort::Custom::Tensor<T>& Y) {
    try {
      const Ort::Custom::Tensor<int32_t>* m = mask.has_value() ? *mask : nullptr;
      egyptian::Problem pr;
      const std::vector<int64_t>* ms = m ? &m->Shape() : nullptr;
      const std::string err = egyptian::Resolve(attrs, Q.Shape(), K.Shape(), V.Shape(), ms, &pr);
      if (!err.empty()) return OpError(kOp, err);
      T* y = Y.Allocate(Q.Shape());
      const size_t n = static_cast<size_t>(Q.NumberOfElement());
      if (n == 0) return Ort::Status{nullptr};
      Plan p{};
      std::vector<float> wide;
      if constexpr (std::is_same<T, float>::value) {
        p.q = Q.Data();
        p.k = K.Data();
        p.v = V.Data();
        p.y32 = y;
      } else {
        wide.resize(3 * n);
        Widen w{{reinterpret_cast<const uint16_t*>(Q.Data()), reinterpret_cast<const uint16_t*>(K.Data()),
                 reinterpret_cast<const uint16_t*>(V.Data())},
                {wide.data(), wide.data() + n, wide.data() + 2 * n},
                n};
        const size_t tasks = 3 * ((n + kWidenChunk - 1) / kWidenChunk);
        Ort::Status st{Ort::GetApi().KernelContext_ParallelFor(ctx, &WidenTask, tasks, 0, &w)};
        if (!st.IsOK()) return st;
        p.q = wide.data();
        p.k = wide.data() + n;
        p.v = wide.data() + 2 * n;
        p.y16 = reinterpret_cast<uint16_t*>(y);
      }
      p.mask = m ? m->Data() : nullptr;
      p.B = pr.B;
      p.L = pr.L;
      p.H = pr.H;
      p.dh = pr.dh;
      p.ld = pr.H * pr.dh;
      p.half = pr.half;
      p.scale = pr.scale;
      p.kinds = pr.kinds.data();
      p.nqb = (pr.L + kBQ - 1) / kBQ;
      static const TaskFn fn = SelectTaskFn();
      Job job{&p, fn};
      const size_t tasks = static_cast<size_t>(p.B * p.H * p.nqb);
      return Ort::Status{Ort::GetApi().KernelContext_ParallelFor(ctx, &RunTask, tasks, 0, &job)};
    }
    N6_CATCH_ALL(kOp)
  }
};

}  // namespace

void AppendEgyptianAttentionOps(OpList& ops) {
  for (auto* op : {Ort::Custom::CreateLiteCustomOp<EgyptianCpu<float>>(kOp, kProvider),
                   Ort::Custom::CreateLiteCustomOp<EgyptianCpu<Ort::Float16_t>>(kOp, kProvider)}) {
    op->InferOutputShapeFn = &InferSameTypeAndShape;
    ops.push_back(op);
  }
}

}  // namespace n6
