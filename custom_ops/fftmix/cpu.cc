// FFTMix(X, F6, F12, F24 [, Past, PastLength]) -> Y [B, L, 3D] [, Present], CPU kernel (float32 / float16 storage, fp32 compute).
// The math and why it is a direct convolution: fftmix/fftmix.h.
//
// Work split: one task per (batch, 24-token block). 24 is a multiple of every window, so a block
// holds whole windows of all three scales: each task reads its 24 rows of X once (fp16: widened
// once into an fp32 scratch) and writes the 3 output scales of those rows. Tasks run on the
// session's intra-op pool (KernelContext_ParallelFor). The channel loops are contiguous and
// vectorised (generic x86-64 / AVX2 / AVX-512 clones, chosen at run time like the elementwise
// kernels; explicit 16-lane vectors, common/vec16.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/half.h"
#include "common/isa.h"
#include "common/ort_glue.h"
#include "common/vec16.h"
#include "fftmix/op.h"

namespace n6 {
namespace {

struct Plan {
  const void* x = nullptr;  // [B, L, D] float or fp16 bits
  void* y = nullptr;        // [B, L, 3D]
  size_t B = 0, L = 0, D = 0;
  size_t blocks = 0;                                   // 24-token blocks per sequence
  const float* taps[fftmix::kNumScales] = {};          // [w/2+1, D] per scale, null = skipped (w > L)
  const float* zeros = nullptr;                        // D zeros (padding rows)
};

// One output row: out = k_0 x_i + sum_{t=1}^{half-1} k_t (a_t + b_t) + k_half c, where a_t / b_t
// are the rows i+t / i-t (mod w) of the window and c the row i+half: the symmetric taps halve the
// multiplies. Channels in chunks of 32 (two 16-lane register accumulators), then a scalar tail.
N6_INLINE void ConvRow(const float* const* xw, int w, int i, const float* taps, size_t D, float* __restrict out) {
  const int half = w / 2;
  const float* a[fftmix::kMaxTaps];
  const float* b[fftmix::kMaxTaps];
  for (int t = 1; t < half; ++t) {
    a[t] = xw[(i + t) % w];
    b[t] = xw[(i - t + w) % w];
  }
  const float* x0 = xw[i];
  const float* c = xw[(i + half) % w];
  const float* kh = taps + half * D;
  size_t d = 0;
  for (; d + 2 * kVF <= D; d += 2 * kVF) {
    VF acc0 = LoadV(taps + d) * LoadV(x0 + d);
    VF acc1 = LoadV(taps + d + kVF) * LoadV(x0 + d + kVF);
    for (int t = 1; t < half; ++t) {
      const float* k = taps + t * D + d;
      acc0 += LoadV(k) * (LoadV(a[t] + d) + LoadV(b[t] + d));
      acc1 += LoadV(k + kVF) * (LoadV(a[t] + d + kVF) + LoadV(b[t] + d + kVF));
    }
    StoreV(out + d, acc0 + LoadV(kh + d) * LoadV(c + d));
    StoreV(out + d + kVF, acc1 + LoadV(kh + d + kVF) * LoadV(c + d + kVF));
  }
  for (; d < D; ++d) {
    float acc = taps[d] * x0[d];
    for (int t = 1; t < half; ++t) acc += taps[t * D + d] * (a[t][d] + b[t][d]);
    out[d] = acc + kh[d] * c[d];
  }
}

template <bool kHalf>
N6_INLINE void RunBlockImpl(const Plan& p, size_t task) {
  const size_t b = task / p.blocks, blk = task % p.blocks;
  const size_t l0 = blk * fftmix::kBlock;
  const size_t D = p.D;
  thread_local std::vector<float> scratch;
  scratch.resize((kHalf ? fftmix::kBlock * D : 0) + D);
  float* row = scratch.data();  // one output row (fp16) / unused (fp32)
  const float* rows[fftmix::kBlock];
  for (int r = 0; r < fftmix::kBlock; ++r) {
    const size_t l = l0 + r;
    if (l >= p.L) {
      rows[r] = p.zeros;
    } else if (kHalf) {
      const uint16_t* src = static_cast<const uint16_t*>(p.x) + (b * p.L + l) * D;
      float* dst = scratch.data() + D + r * D;
      WidenF16(src, dst, D);
      rows[r] = dst;
    } else {
      rows[r] = static_cast<const float*>(p.x) + (b * p.L + l) * D;
    }
  }
  for (int s = 0; s < fftmix::kNumScales; ++s) {
    const int w = fftmix::kWindows[s];
    for (int ws = 0; ws < fftmix::kBlock; ws += w) {
      for (int i = 0; i < w; ++i) {
        const size_t l = l0 + ws + i;
        if (l >= p.L) break;  // cropped
        const size_t off = (b * p.L + l) * 3 * D + s * D;
        if (!p.taps[s]) {  // w > L: skipped scale, zeros
          if (kHalf) std::memset(static_cast<uint16_t*>(p.y) + off, 0, D * sizeof(uint16_t));
          else std::memset(static_cast<float*>(p.y) + off, 0, D * sizeof(float));
          continue;
        }
        if (kHalf) {
          ConvRow(rows + ws, w, i, p.taps[s], D, row);
          uint16_t* dst = static_cast<uint16_t*>(p.y) + off;
          for (size_t d = 0; d < D; ++d) dst[d] = F16Codec::FromFloat(row[d]);
        } else {
          ConvRow(rows + ws, w, i, p.taps[s], D, static_cast<float*>(p.y) + off);
        }
      }
    }
  }
}

template <bool kHalf>
using Block = IsaClones<void(const Plan&, size_t), &RunBlockImpl<kHalf>>;

// ---------------------------------------------------------------- causal mode
// One task per (batch, 24-window of absolute positions that holds outputs): the task gathers the
// window's input rows up to its last output (from Past or X; fp16 widened once), then each output
// row a of every scale sums k_w[d] x[a - d] for d = 0 .. a - start_w(a): O(w) per row and channel.
struct CausalPlan {
  const void* x = nullptr;     // [B, L, D]
  const void* past = nullptr;  // [B, P, D] or null
  void* y = nullptr;           // [B, L, 3D]
  size_t B = 0, L = 0, D = 0, P = 0, pl = 0, first = 0, blocks = 0;  // first: 24 * floor(pl / 24)
  const float* taps[fftmix::kNumScales] = {};  // [w, D] float32
};

template <bool kHalf>
N6_INLINE const void* CausalRow(const CausalPlan& p, size_t b, size_t pos) {  // input at absolute pos
  const size_t esz = kHalf ? sizeof(uint16_t) : sizeof(float);
  if (pos >= p.pl) return static_cast<const char*>(p.x) + ((b * p.L + pos - p.pl) * p.D) * esz;
  return static_cast<const char*>(p.past) + ((b * p.P + pos - (p.pl - p.P)) * p.D) * esz;
}

template <bool kHalf>
N6_INLINE void RunCausalImpl(const CausalPlan& p, size_t task) {
  const size_t b = task / p.blocks, s0 = p.first + (task % p.blocks) * fftmix::kBlock;
  const size_t lo = s0 > p.pl ? s0 : p.pl, hi = std::min(s0 + fftmix::kBlock, p.pl + p.L);  // outputs [lo, hi)
  const size_t D = p.D;
  thread_local std::vector<float> scratch;
  scratch.resize((kHalf ? fftmix::kBlock * D : 0) + D);
  float* acc = scratch.data() + (kHalf ? fftmix::kBlock * D : 0);
  const float* rows[fftmix::kBlock];
  for (size_t pos = s0; pos < hi; ++pos) {
    const void* src = CausalRow<kHalf>(p, b, pos);
    if (kHalf) {
      float* dst = scratch.data() + (pos - s0) * D;
      WidenF16(static_cast<const uint16_t*>(src), dst, D);
      rows[pos - s0] = dst;
    } else {
      rows[pos - s0] = static_cast<const float*>(src);
    }
  }
  for (size_t a = lo; a < hi; ++a) {
    const int i = static_cast<int>(a - s0);
    for (int s = 0; s < fftmix::kNumScales; ++s) {
      const int w = fftmix::kWindows[s];
      const int back = i % w;  // s0 is a multiple of w: the window starts at row i - back
      const float* k = p.taps[s];
      const size_t off = (b * p.L + (a - p.pl)) * 3 * D + s * D;
      float* out = kHalf ? acc : static_cast<float*>(p.y) + off;
      size_t d = 0;
      for (; d + 2 * kVF <= D; d += 2 * kVF) {
        VF a0 = LoadV(k + d) * LoadV(rows[i] + d);
        VF a1 = LoadV(k + d + kVF) * LoadV(rows[i] + d + kVF);
        for (int t = 1; t <= back; ++t) {
          a0 += LoadV(k + t * D + d) * LoadV(rows[i - t] + d);
          a1 += LoadV(k + t * D + d + kVF) * LoadV(rows[i - t] + d + kVF);
        }
        StoreV(out + d, a0);
        StoreV(out + d + kVF, a1);
      }
      for (; d < D; ++d) {
        float v = k[d] * rows[i][d];
        for (int t = 1; t <= back; ++t) v += k[t * D + d] * rows[i - t][d];
        out[d] = v;
      }
      if (kHalf) {
        uint16_t* dst = static_cast<uint16_t*>(p.y) + off;
        for (size_t c = 0; c < D; ++c) dst[c] = F16Codec::FromFloat(acc[c]);
      }
    }
  }
}

template <bool kHalf>
using Causal = IsaClones<void(const CausalPlan&, size_t), &RunCausalImpl<kHalf>>;

template <class T>
float ToF32(T v);
template <>
float ToF32<float>(float v) { return v; }
template <>
float ToF32<Ort::Float16_t>(Ort::Float16_t v) { return F16Codec::ToFloat(v.val); }

struct CpuBackend {
  static constexpr const char* kProvider = kCpuProvider;

  template <class T>
  static Ort::Status Run(OrtKernelContext* ctx, const fftmix::Io<T>& io) {
    Plan p;
    p.B = static_cast<size_t>(io.B);
    p.L = static_cast<size_t>(io.L);
    p.D = static_cast<size_t>(io.D);
    // taps (and a zero row) in one buffer
    std::vector<float> buf, f;
    size_t offs[fftmix::kNumScales], total = p.D;
    for (int s = 0; s < fftmix::kNumScales; ++s) {
      offs[s] = total;
      total += (fftmix::kWindows[s] / 2 + 1) * p.D;
    }
    buf.assign(total, 0.0f);
    for (int s = 0; s < fftmix::kNumScales; ++s) {
      const int w = fftmix::kWindows[s];
      if (static_cast<size_t>(w) > p.L) continue;
      const size_t n = (w / 2 + 1) * p.D;
      f.resize(n);
      const T* src = io.f[s];
      for (size_t i = 0; i < n; ++i) f[i] = ToF32<T>(src[i]);
      fftmix::TapsFromFilter(f.data(), w, p.D, buf.data() + offs[s]);
      p.taps[s] = buf.data() + offs[s];
    }
    p.zeros = buf.data();
    p.x = io.x;
    p.y = io.y;
    p.blocks = (p.L + fftmix::kBlock - 1) / fftmix::kBlock;
    static const auto fn = Block<!std::is_same<T, float>::value>::Select();
    return RunPlanTasks(ctx, fn, p, p.B * p.blocks);
  }

  template <class T>
  static Ort::Status RunCausal(OrtKernelContext* ctx, const fftmix::CausalIo<T>& io) {
    CausalPlan p;
    p.B = static_cast<size_t>(io.B);
    p.L = static_cast<size_t>(io.L);
    p.D = static_cast<size_t>(io.D);
    p.P = static_cast<size_t>(io.P);
    p.pl = static_cast<size_t>(io.pl);
    std::vector<float> taps;
    size_t offs[fftmix::kNumScales], total = 0;
    for (int s = 0; s < fftmix::kNumScales; ++s) {
      offs[s] = total;
      total += fftmix::kWindows[s] * p.D;
    }
    taps.resize(total);
    for (int s = 0; s < fftmix::kNumScales; ++s) {
      const size_t n = fftmix::kWindows[s] * p.D;
      for (size_t i = 0; i < n; ++i) taps[offs[s] + i] = ToF32<T>(io.f[s][i]);
    }
    for (int s = 0; s < fftmix::kNumScales; ++s) p.taps[s] = taps.data() + offs[s];
    p.x = io.x;
    p.past = io.past;
    p.y = io.y;
    // Present: the last `keep` inputs (positions pl + L - keep ..), from Past or X
    if (io.present) {
      for (size_t b = 0; b < p.B; ++b)
        for (size_t r = 0; r < static_cast<size_t>(io.keep); ++r) {
          const size_t pos = p.pl + p.L - io.keep + r;
          const T* src = pos >= p.pl ? io.x + (b * p.L + pos - p.pl) * p.D : io.past + (b * p.P + pos - (p.pl - p.P)) * p.D;
          std::memcpy(io.present + (b * io.keep + r) * p.D, src, p.D * sizeof(T));
        }
    }
    if (p.L == 0) return Ort::Status{nullptr};
    p.first = (p.pl / fftmix::kBlock) * fftmix::kBlock;
    p.blocks = (p.pl + p.L - p.first + fftmix::kBlock - 1) / fftmix::kBlock;
    static const auto fn = Causal<!std::is_same<T, float>::value>::Select();
    return RunPlanTasks(ctx, fn, p, p.B * p.blocks);
  }
};

}  // namespace

void AppendFFTMixOps(OpList& ops) { fftmix::AppendOps<CpuBackend>(ops); }

}  // namespace n6
