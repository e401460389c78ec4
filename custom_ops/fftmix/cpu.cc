// FFTMix(X, F6, F12, F24) -> Y [B, L, 3D], CPU kernel (float32 / float16 storage, fp32 compute).
// The math and why it is a direct convolution: fftmix/fftmix.h.
//
// Work split: one task per (batch, 24-token block). 24 is a multiple of every window, so a block
// holds whole windows of all three scales: each task reads its 24 rows of X once (fp16: widened
// once into an fp32 scratch) and writes the 3 output scales of those rows. Tasks run on the
// session's intra-op pool (KernelContext_ParallelFor). The channel loops are contiguous and
// vectorised (generic x86-64 / AVX2 / AVX-512 clones, chosen at run time like the elementwise
// kernels; explicit 16-lane vectors, common/vec16.h).
#include "common/elementwise.h"
#include "common/vec16.h"
#include "fftmix/fftmix.h"

namespace n6 {
namespace {

constexpr const char* kOp = "FFTMix";

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
      for (size_t d = 0; d < D; ++d) dst[d] = F16Codec::ToFloat(src[d]);
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

using BlockFn = void (*)(const Plan&, size_t);
template <bool kHalf>
void RunBlockGeneric(const Plan& p, size_t task) { RunBlockImpl<kHalf>(p, task); }
#if N6_HAVE_ISA_CLONES
template <bool kHalf>
N6_TARGET_AVX2 void RunBlockAvx2(const Plan& p, size_t task) { RunBlockImpl<kHalf>(p, task); }
template <bool kHalf>
N6_TARGET_AVX512 void RunBlockAvx512(const Plan& p, size_t task) { RunBlockImpl<kHalf>(p, task); }
#endif

template <bool kHalf>
BlockFn SelectBlockFn() {
#if N6_HAVE_ISA_CLONES
  switch (HostIsa()) {
    case Isa::kAvx512: return &RunBlockAvx512<kHalf>;
    case Isa::kAvx2: return &RunBlockAvx2<kHalf>;
    default: break;
  }
#endif
  return &RunBlockGeneric<kHalf>;
}

struct Job {
  const Plan* plan;
  BlockFn fn;
};
void RunTask(void* data, size_t task) {
  const Job& j = *static_cast<const Job*>(data);
  j.fn(*j.plan, task);
}

template <class T>
float ToF32(T v);
template <>
float ToF32<float>(float v) { return v; }
template <>
float ToF32<Ort::Float16_t>(Ort::Float16_t v) { return F16Codec::ToFloat(v.val); }

template <class T>
Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& F6,
                    const Ort::Custom::Tensor<T>& F12, const Ort::Custom::Tensor<T>& F24, Ort::Custom::Tensor<T>& Y) {
  try {
    const std::vector<int64_t>& xs = X.Shape();
    if (xs.size() != 3) return OpError(kOp, "X must be [B, L, D], got shape " + ShapeToString(xs));
    Plan p;
    p.B = static_cast<size_t>(xs[0]);
    p.L = static_cast<size_t>(xs[1]);
    p.D = static_cast<size_t>(xs[2]);
    const Ort::Custom::Tensor<T>* fs[fftmix::kNumScales] = {&F6, &F12, &F24};
    for (int s = 0; s < fftmix::kNumScales; ++s) {
      const int w = fftmix::kWindows[s];
      const std::vector<int64_t> want = {w / 2 + 1, xs[2]};
      if (fs[s]->Shape() != want) {
        return OpError(kOp, "F" + std::to_string(w) + " must be " + ShapeToString(want) + " for X of shape " +
                                ShapeToString(xs) + ", got " + ShapeToString(fs[s]->Shape()));
      }
    }
    T* y = Y.Allocate({xs[0], xs[1], 3 * xs[2]});
    if (p.B == 0 || p.L == 0 || p.D == 0) return Ort::Status{nullptr};
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
      const T* src = fs[s]->Data();
      for (size_t i = 0; i < n; ++i) f[i] = ToF32<T>(src[i]);
      fftmix::TapsFromFilter(f.data(), w, p.D, buf.data() + offs[s]);
      p.taps[s] = buf.data() + offs[s];
    }
    p.zeros = buf.data();
    p.x = X.Data();
    p.y = y;
    p.blocks = (p.L + fftmix::kBlock - 1) / fftmix::kBlock;
    static const BlockFn fn = SelectBlockFn<!std::is_same<T, float>::value>();
    Job job{&p, fn};
    const size_t tasks = p.B * p.blocks;
    if (tasks == 1) {
      RunTask(&job, 0);
      return Ort::Status{nullptr};
    }
    return Ort::Status{Ort::GetApi().KernelContext_ParallelFor(ctx, &RunTask, tasks, 0, &job)};
  }
  N6_CATCH_ALL(kOp)
}

}  // namespace

// Y: X's element type, shape [B, L, 3D] (3D unknown when D is). Shared with fftmix/cuda_op.cc.
OrtStatusPtr FFTMixInferShape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept {
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* in = nullptr;
  OrtTensorTypeAndShapeInfo* out = nullptr;
  OrtStatus* st = nullptr;
  auto ok = [&st](OrtStatus* s) {
    st = s;
    return s == nullptr;
  };
  size_t rank = 0;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (ok(api.ShapeInferContext_GetInputTypeShape(ctx, 0, &in)) && in != nullptr && ok(api.GetTensorElementType(in, &type)) &&
      ok(api.GetDimensionsCount(in, &rank)) && rank == 3) {
    std::vector<int64_t> dims(rank);
    std::vector<const char*> syms(rank, nullptr);
    if (ok(api.GetDimensions(in, dims.data(), rank)) && ok(api.GetSymbolicDimensions(in, syms.data(), rank))) {
      for (auto& s : syms) s = s ? s : "";
      dims[2] = dims[2] >= 0 ? 3 * dims[2] : -1;
      syms[2] = "";
      if (ok(api.CreateTensorTypeAndShapeInfo(&out)) && ok(api.SetTensorElementType(out, type)) &&
          ok(api.SetDimensions(out, dims.data(), rank)) && ok(api.SetSymbolicDimensions(out, syms.data(), rank))) {
        ok(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
      }
    }
  }
  if (out) api.ReleaseTensorTypeAndShapeInfo(out);
  if (st) api.ReleaseStatus(st);
  return nullptr;
}

void AppendFFTMixOps(OpList& ops) {
  for (auto* op : {Ort::Custom::CreateLiteCustomOp(kOp, kProvider, &Compute<float>),
                   Ort::Custom::CreateLiteCustomOp(kOp, kProvider, &Compute<Ort::Float16_t>)}) {
    op->InferOutputShapeFn = &FFTMixInferShape;
    ops.push_back(op);
  }
}

}  // namespace n6
