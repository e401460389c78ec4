// Shared elementwise driver for the n6onnx CPU custom ops.
//
// Each op supplies only a scalar functor (see common/scalar.h; the same functor drives the CUDA
// kernels in common/cuda_elementwise.cuh)
//
//   struct MyOp {
//     static constexpr const char* kName = "MyOp";          // plain op:  Y = f(X)
//     static constexpr const char* kBiasName = "BiasMyOp";  // bias op:   Y = f(X + bias)
//     static N6_HD float Apply(float x) { ... }              // branch-free, fp32
//   };
//
// and calls n6::AppendElementwiseOps<MyOp>(ops). This header does the rest:
//   * float32 / float16 / bfloat16 storage; 16-bit types are widened to fp32, computed in fp32
//     and rounded to nearest-even exactly once at the end;
//   * one kernel per ISA level (generic x86-64 / AVX2+FMA+F16C / AVX-512), selected once at
//     runtime, so the library runs on any x86-64 CPU (and builds on non-x86 with the generic
//     path only);
//   * bias broadcast over the last axis;
//   * splitting large tensors into chunks run on the session's intra-op thread pool
//     (OrtApi::KernelContext_ParallelFor, which honours intra_op_num_threads);
//   * errors are returned as Ort::Status, never thrown across the C boundary.
//
// Numerics: the build uses -ffp-contract=off (no FMA contraction; -fno-trapping-math only lets
// selects vectorise), so every ISA path evaluates exactly the expression written in Apply(),
// in the same order, in fp32: results are bit-identical across CPUs and to a numpy float32
// evaluation of the same expression (16-bit outputs: that value rounded to nearest-even).
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT  // never link libonnxruntime; the API comes from RegisterCustomOps
#endif
#include <onnxruntime_cxx_api.h>
#include <onnxruntime_lite_custom_op.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define N6_X86 1
#include <immintrin.h>
#else
#define N6_X86 0
#endif

static_assert(ORT_API_VERSION >= 17,
              "n6ops needs onnxruntime headers with ORT_API_VERSION >= 17 (onnxruntime >= 1.17)");

#if defined(__GNUC__)
#define N6_INLINE inline __attribute__((always_inline))
#else
#define N6_INLINE inline
#endif

#if N6_X86 && defined(__GNUC__)
#define N6_HAVE_ISA_CLONES 1
// Feature lists (not arch=...) so that the default-target always_inline helpers below can be
// inlined into these functions. Runtime checks in HostIsa() must match these lists.
#define N6_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define N6_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#else
#define N6_HAVE_ISA_CLONES 0
#endif

namespace n6 {

inline constexpr const char* kDomain = "n6onnx";
inline constexpr const char* kProvider = "CPUExecutionProvider";

// Tensors with at least this many elements are split across the intra-op thread pool.
inline constexpr size_t kParallelThreshold = size_t{1} << 16;  // 64K elements
// Elements per parallel task (multiple of 64, so tasks never share an output cache line).
inline constexpr size_t kTaskChunk = size_t{1} << 15;  // 32K elements
// Bias rows shorter than this are tiled (bias repeated) so the inner loops stay long.
inline constexpr size_t kMinRow = 1024;

using OpList = std::vector<Ort::Custom::OrtLiteCustomOp*>;

// ------------------------------------------------------------------------------------------
// ISA selection
// ------------------------------------------------------------------------------------------
enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// Best ISA level of this CPU. N6ONNX_ISA=generic|avx2|avx512 may lower it (for testing).
inline Isa HostIsa() {
  static const Isa isa = [] {
    Isa best = Isa::kGeneric;
#if N6_HAVE_ISA_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      best = Isa::kAvx2;
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        best = Isa::kAvx512;
      }
    }
#endif
    if (const char* env = std::getenv("N6ONNX_ISA")) {
      Isa want = best;
      if (std::strcmp(env, "generic") == 0) want = Isa::kGeneric;
      else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
      else if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
      if (static_cast<int>(want) < static_cast<int>(best)) best = want;
    }
    return best;
  }();
  return isa;
}

inline const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

// ------------------------------------------------------------------------------------------
// Portable 16-bit float conversions (branch-free, auto-vectorisable, round-to-nearest-even).
// fp16 <-> fp32 follows the well-known bit-manipulation scheme of the FP16 library
// (M. Dukhan); it needs IEEE fp32 arithmetic in the default rounding mode, no fast-math.
// ------------------------------------------------------------------------------------------
N6_INLINE float BitsToF32(uint32_t w) {
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}
N6_INLINE uint32_t F32ToBits(float f) {
  uint32_t w;
  std::memcpy(&w, &f, sizeof w);
  return w;
}

struct F16Codec {
  static N6_INLINE float ToFloat(uint16_t h) {
    const uint32_t w = static_cast<uint32_t>(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    // Normal / inf / nan: shift exponent+mantissa into place and rebias by 2^-112.
    const float normalized = BitsToF32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    // Subnormal: build 0.5 + m * 2^-24 style value and subtract the magic bias.
    const float denormalized = BitsToF32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t result =
        sign | (two_w < (1u << 27) ? F32ToBits(denormalized) : F32ToBits(normalized));
    return BitsToF32(result);
  }
  static N6_INLINE uint16_t FromFloat(float f) {
    const float abs_f = BitsToF32(F32ToBits(f) & 0x7FFFFFFFu);
    float base = (abs_f * 0x1.0p+112f) * 0x1.0p-110f;  // overflow -> inf, keeps rounding exact
    const uint32_t w = F32ToBits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = BitsToF32((bias >> 1) + 0x07800000u) + base;  // the fp32 add performs the RNE rounding
    const uint32_t bits = F32ToBits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
  }
};

struct BF16Codec {
  static N6_INLINE float ToFloat(uint16_t h) { return BitsToF32(static_cast<uint32_t>(h) << 16); }
  static N6_INLINE uint16_t FromFloat(float f) {
    const uint32_t u = F32ToBits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // RNE; overflow -> inf
    const uint32_t quiet_nan = (u >> 16) | 0x0040u;
    return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
  }
};

// ------------------------------------------------------------------------------------------
// Inner loops over one contiguous segment: y[i] = f(x[i] (+ b[i])), b may be null.
// ------------------------------------------------------------------------------------------
template <class Fn>
N6_INLINE void LoopF32(const float* __restrict x, const float* __restrict b, float* __restrict y, size_t n) {
  if (b) {
    for (size_t i = 0; i < n; ++i) y[i] = Fn::Apply(x[i] + b[i]);
  } else {
    for (size_t i = 0; i < n; ++i) y[i] = Fn::Apply(x[i]);
  }
}

template <class Fn, class Codec>
N6_INLINE void Loop16(const uint16_t* __restrict x, const uint16_t* __restrict b, uint16_t* __restrict y, size_t n) {
  if (b) {
    for (size_t i = 0; i < n; ++i) y[i] = Codec::FromFloat(Fn::Apply(Codec::ToFloat(x[i]) + Codec::ToFloat(b[i])));
  } else {
    for (size_t i = 0; i < n; ++i) y[i] = Codec::FromFloat(Fn::Apply(Codec::ToFloat(x[i])));
  }
}

#if N6_HAVE_ISA_CLONES
// fp16 with F16C: widen blocks of 8 into an fp32 scratch buffer, run the (auto-vectorised)
// fp32 functor loop over the block, narrow with round-to-nearest-even.
template <class Fn>
N6_TARGET_AVX2 inline void LoopF16C(const uint16_t* __restrict x, const uint16_t* __restrict b,
                                    uint16_t* __restrict y, size_t n) {
  constexpr size_t kBlock = 512;
  alignas(64) float buf[kBlock];
  for (size_t off = 0; off < n; off += kBlock) {
    const size_t m = std::min(kBlock, n - off);
    const uint16_t* xs = x + off;
    size_t i = 0;
    if (b) {
      const uint16_t* bs = b + off;
      for (; i + 8 <= m; i += 8) {
        const __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xs + i)));
        const __m256 vb = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bs + i)));
        _mm256_store_ps(buf + i, _mm256_add_ps(vx, vb));
      }
      for (; i < m; ++i) buf[i] = _cvtsh_ss(xs[i]) + _cvtsh_ss(bs[i]);
    } else {
      for (; i + 8 <= m; i += 8) {
        _mm256_store_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xs + i))));
      }
      for (; i < m; ++i) buf[i] = _cvtsh_ss(xs[i]);
    }
    for (i = 0; i < m; ++i) buf[i] = Fn::Apply(buf[i]);
    uint16_t* ys = y + off;
    for (i = 0; i + 8 <= m; i += 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(ys + i),
                       _mm256_cvtps_ph(_mm256_load_ps(buf + i), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < m; ++i) ys[i] = _cvtss_sh(buf[i], _MM_FROUND_TO_NEAREST_INT);
  }
}
#endif

// Type-erased segment kernel: y[0..n) = f(x[0..n) (+ b[0..n))).
using SegmentFn = void (*)(const void* x, const void* b, void* y, size_t n);

template <class Fn>
struct Kernels {
#define N6_F32_ARGS static_cast<const float*>(x), static_cast<const float*>(b), static_cast<float*>(y), n
#define N6_U16_ARGS static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(b), static_cast<uint16_t*>(y), n
  static void F32(const void* x, const void* b, void* y, size_t n) { LoopF32<Fn>(N6_F32_ARGS); }
  static void F16(const void* x, const void* b, void* y, size_t n) { Loop16<Fn, F16Codec>(N6_U16_ARGS); }
  static void BF16(const void* x, const void* b, void* y, size_t n) { Loop16<Fn, BF16Codec>(N6_U16_ARGS); }
#if N6_HAVE_ISA_CLONES
  N6_TARGET_AVX2 static void F32Avx2(const void* x, const void* b, void* y, size_t n) { LoopF32<Fn>(N6_F32_ARGS); }
  N6_TARGET_AVX2 static void F16Avx2(const void* x, const void* b, void* y, size_t n) { LoopF16C<Fn>(N6_U16_ARGS); }
  N6_TARGET_AVX2 static void BF16Avx2(const void* x, const void* b, void* y, size_t n) {
    Loop16<Fn, BF16Codec>(N6_U16_ARGS);
  }
  N6_TARGET_AVX512 static void F32Avx512(const void* x, const void* b, void* y, size_t n) {
    LoopF32<Fn>(N6_F32_ARGS);
  }
  N6_TARGET_AVX512 static void BF16Avx512(const void* x, const void* b, void* y, size_t n) {
    Loop16<Fn, BF16Codec>(N6_U16_ARGS);
  }
#endif
#undef N6_F32_ARGS
#undef N6_U16_ARGS
};

template <class T>
struct ElemTraits;
template <>
struct ElemTraits<float> {
  template <class Fn>
  static SegmentFn Select(Isa isa) {
#if N6_HAVE_ISA_CLONES
    if (isa == Isa::kAvx512) return &Kernels<Fn>::F32Avx512;
    if (isa == Isa::kAvx2) return &Kernels<Fn>::F32Avx2;
#endif
    (void)isa;
    return &Kernels<Fn>::F32;
  }
};
template <>
struct ElemTraits<Ort::Float16_t> {
  template <class Fn>
  static SegmentFn Select(Isa isa) {
#if N6_HAVE_ISA_CLONES
    if (isa != Isa::kGeneric) return &Kernels<Fn>::F16Avx2;  // F16C path (AVX-512 CPUs have F16C)
#endif
    (void)isa;
    return &Kernels<Fn>::F16;
  }
};
template <>
struct ElemTraits<Ort::BFloat16_t> {
  template <class Fn>
  static SegmentFn Select(Isa isa) {
#if N6_HAVE_ISA_CLONES
    if (isa == Isa::kAvx512) return &Kernels<Fn>::BF16Avx512;
    if (isa == Isa::kAvx2) return &Kernels<Fn>::BF16Avx2;
#endif
    (void)isa;
    return &Kernels<Fn>::BF16;
  }
};

// ------------------------------------------------------------------------------------------
// Chunking + parallel driver
// ------------------------------------------------------------------------------------------
struct Job {
  SegmentFn fn;
  const char* x;
  const char* b;  // null: no bias
  char* y;
  size_t n;     // elements
  size_t row;   // bias period in elements (only with b)
  size_t elem;  // bytes per element
};

inline void RunRange(const Job& j, size_t begin, size_t end) noexcept {
  if (!j.b) {
    j.fn(j.x + begin * j.elem, nullptr, j.y + begin * j.elem, end - begin);
    return;
  }
  for (size_t i = begin; i < end;) {  // split at row boundaries so bias is contiguous too
    const size_t col = i % j.row;
    const size_t m = std::min(j.row - col, end - i);
    j.fn(j.x + i * j.elem, j.b + col * j.elem, j.y + i * j.elem, m);
    i += m;
  }
}

inline void RunTask(void* data, size_t task) {
  const Job& j = *static_cast<const Job*>(data);
  const size_t begin = task * kTaskChunk;
  RunRange(j, begin, std::min(j.n, begin + kTaskChunk));
}

// y = f(x (+ bias broadcast over rows of length `row`)), n elements of `elem` bytes.
inline Ort::Status RunElementwise(OrtKernelContext* ctx, SegmentFn fn, const void* x, const void* bias,
                                  size_t row, void* y, size_t n, size_t elem) {
  if (n == 0) return Ort::Status{nullptr};
  std::vector<char> tiled;
  if (bias && row < kMinRow) {  // short rows: repeat the bias so segments are >= kMinRow long
    const size_t reps = (kMinRow + row - 1) / row;
    tiled.resize(reps * row * elem);
    for (size_t r = 0; r < reps; ++r) std::memcpy(tiled.data() + r * row * elem, bias, row * elem);
    bias = tiled.data();
    row *= reps;
  }
  Job job{fn, static_cast<const char*>(x), static_cast<const char*>(bias), static_cast<char*>(y), n, row, elem};
  if (n < kParallelThreshold) {
    RunRange(job, 0, n);
    return Ort::Status{nullptr};
  }
  const size_t tasks = (n + kTaskChunk - 1) / kTaskChunk;
  // Runs on the session's intra-op pool (inline when intra_op_num_threads == 1).
  return Ort::Status{Ort::GetApi().KernelContext_ParallelFor(ctx, &RunTask, tasks, 0, &job)};
}

// ------------------------------------------------------------------------------------------
// Lite custom-op entry points
// ------------------------------------------------------------------------------------------
inline std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

inline Ort::Status OpError(const char* op, const std::string& msg) {
  return Ort::Status((std::string(kDomain) + "::" + op + ": " + msg).c_str(), ORT_FAIL);
}

// X must have rank >= 1 and bias must be 1-D with X's last dimension.
inline Ort::Status CheckBiasShape(const char* op, const std::vector<int64_t>& xs, const std::vector<int64_t>& bs) {
  if (xs.empty()) return OpError(op, "X must have rank >= 1 when a bias is given, got a scalar");
  if (bs.size() != 1) return OpError(op, "bias must be 1-D, got shape " + ShapeToString(bs));
  if (bs[0] != xs.back()) {
    return OpError(op, "bias length " + std::to_string(bs[0]) + " does not match the last dimension " +
                           std::to_string(xs.back()) + " of X (shape " + ShapeToString(xs) + ")");
  }
  return Ort::Status{nullptr};
}

#define N6_CATCH_ALL(op)                                                                   \
  catch (const Ort::Exception& e) {                                                        \
    return OpError(op, e.what());                                                          \
  }                                                                                        \
  catch (const std::exception& e) {                                                        \
    return OpError(op, e.what());                                                          \
  }                                                                                        \
  catch (...) {                                                                            \
    return OpError(op, "unknown error");                                                   \
  }

template <class Fn, class T>
SegmentFn KernelFor() {
  static const SegmentFn fn = ElemTraits<T>::template Select<Fn>(HostIsa());
  return fn;
}

template <class Fn, class T>
Ort::Status ComputePlain(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, Ort::Custom::Tensor<T>& Y) {
  try {
    const std::vector<int64_t>& shape = X.Shape();
    const size_t n = static_cast<size_t>(X.NumberOfElement());
    T* y = Y.Allocate(shape);
    if (n == 0) return Ort::Status{nullptr};
    return RunElementwise(ctx, KernelFor<Fn, T>(), X.Data(), nullptr, 0, y, n, sizeof(T));
  }
  N6_CATCH_ALL(Fn::kName)
}

template <class Fn, class T>
Ort::Status ComputeBias(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& B,
                        Ort::Custom::Tensor<T>& Y) {
  try {
    const std::vector<int64_t>& xs = X.Shape();
    Ort::Status bad = CheckBiasShape(Fn::kBiasName, xs, B.Shape());
    if (!bad.IsOK()) return bad;
    const size_t n = static_cast<size_t>(X.NumberOfElement());
    T* y = Y.Allocate(xs);
    if (n == 0) return Ort::Status{nullptr};
    return RunElementwise(ctx, KernelFor<Fn, T>(), X.Data(), B.Data(), static_cast<size_t>(xs.back()), y, n,
                          sizeof(T));
  }
  N6_CATCH_ALL(Fn::kBiasName)
}

// Shape inference: Y has X's element type and shape. Installed directly as the C-level
// OrtCustomOp::InferOutputShapeFn because onnxruntime runs the function of only ONE of the
// same-named ops (whichever was registered first) for all dtypes, so the output type must
// come from the actual input, not from the op's template type. Unknown rank (reported as
// rank 0) and unnamed unknown dims are left uninferred rather than guessed. Never fails:
// onnxruntime ignores the returned status, so problems are reported at run time instead.
inline OrtStatusPtr InferSameTypeAndShape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept {
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* in = nullptr;  // owned by ctx
  OrtTensorTypeAndShapeInfo* out = nullptr;
  OrtStatus* st = nullptr;
  auto ok = [&st](OrtStatus* s) {
    st = s;
    return s == nullptr;
  };
  size_t count = 0;
  size_t rank = 0;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (ok(api.ShapeInferContext_GetInputCount(ctx, &count)) && count >= 1 &&
      ok(api.ShapeInferContext_GetInputTypeShape(ctx, 0, &in)) && in != nullptr &&
      ok(api.GetTensorElementType(in, &type)) && ok(api.GetDimensionsCount(in, &rank)) && rank > 0) {
    std::vector<int64_t> dims(rank);
    std::vector<const char*> syms(rank, nullptr);
    bool known = ok(api.GetDimensions(in, dims.data(), rank)) && ok(api.GetSymbolicDimensions(in, syms.data(), rank));
    for (size_t i = 0; known && i < rank; ++i) {
      const bool named = syms[i] != nullptr && syms[i][0] != '\0';
      if (!named && dims[i] < 0) known = false;  // unknown, unnamed dim: do not guess
      if (syms[i] == nullptr) syms[i] = "";
    }
    if (known && ok(api.CreateTensorTypeAndShapeInfo(&out)) && ok(api.SetTensorElementType(out, type)) &&
        ok(api.SetDimensions(out, dims.data(), rank)) && ok(api.SetSymbolicDimensions(out, syms.data(), rank))) {
      ok(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    }
  }
  if (out) api.ReleaseTensorTypeAndShapeInfo(out);
  if (st) api.ReleaseStatus(st);
  return nullptr;
}

template <class... Args>
Ort::Custom::OrtLiteCustomOp* MakeOp(const char* name, Ort::Status (*compute)(Args...),
                                     const char* provider = kProvider) {
  Ort::Custom::OrtLiteCustomOp* op = Ort::Custom::CreateLiteCustomOp(name, provider, compute);
  op->InferOutputShapeFn = &InferSameTypeAndShape;
  return op;
}

// Registers Fn::kName(X) and Fn::kBiasName(X, bias) for float, float16 and bfloat16.
// onnxruntime merges same-named ops into one schema and dispatches on the input type.
template <class Fn>
void AppendElementwiseOps(OpList& ops) {
  ops.push_back(MakeOp(Fn::kName, &ComputePlain<Fn, float>));
  ops.push_back(MakeOp(Fn::kName, &ComputePlain<Fn, Ort::Float16_t>));
  ops.push_back(MakeOp(Fn::kName, &ComputePlain<Fn, Ort::BFloat16_t>));
  ops.push_back(MakeOp(Fn::kBiasName, &ComputeBias<Fn, float>));
  ops.push_back(MakeOp(Fn::kBiasName, &ComputeBias<Fn, Ort::Float16_t>));
  ops.push_back(MakeOp(Fn::kBiasName, &ComputeBias<Fn, Ort::BFloat16_t>));
}

// Implemented in <op>/cpu.cc, called from register.cc.
void AppendPhi6Ops(OpList& ops);
void AppendZetaLn2Ops(OpList& ops);

// libn6ops_cuda.so only: the CUDAExecutionProvider kernels (register_cuda.cc).
void AppendCudaOps(OpList& ops);

}  // namespace n6
