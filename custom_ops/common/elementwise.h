// CPU backend of the elementwise ops (Phi6, ZetaLn2 and their Bias* forms): the glue is
// common/elementwise_op.h, the scalar functor of each op its <op>/<op>.h (common/scalar.h; the
// same functor drives the CUDA kernels in common/cuda_elementwise.cuh). This header provides
//   * float32 / float16 / bfloat16 storage; 16-bit types are widened to fp32, computed in fp32
//     and rounded to nearest-even exactly once at the end;
//   * one kernel per ISA level (generic x86-64 / AVX2+FMA+F16C / AVX-512, common/isa.h),
//     selected once at runtime;
//   * bias broadcast over the last axis;
//   * splitting large tensors into chunks run on the session's intra-op thread pool
//     (OrtApi::KernelContext_ParallelFor, which honours intra_op_num_threads).
//
// Numerics: the build uses -ffp-contract=off (no FMA contraction; -fno-trapping-math only lets
// selects vectorise), so every ISA path evaluates exactly the expression written in Apply(),
// in the same order, in fp32: results are bit-identical across CPUs and to a numpy float32
// evaluation of the same expression (16-bit outputs: that value rounded to nearest-even).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/half.h"
#include "common/isa.h"
#include "common/ort_glue.h"

namespace n6 {

// Tensors with at least this many elements are split across the intra-op thread pool.
inline constexpr size_t kParallelThreshold = size_t{1} << 16;  // 64K elements
// Elements per parallel task (multiple of 64, so tasks never share an output cache line).
inline constexpr size_t kTaskChunk = size_t{1} << 15;  // 32K elements
// Bias rows shorter than this are tiled (bias repeated) so the inner loops stay long.
inline constexpr size_t kMinRow = 1024;

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

template <class Fn, class T>
SegmentFn KernelFor() {
  static const SegmentFn fn = ElemTraits<T>::template Select<Fn>(HostIsa());
  return fn;
}

// The CPU backend of ElementwiseOp (common/elementwise_op.h).
struct ElementwiseCpu {
  static constexpr const char* kProvider = kCpuProvider;
  // y = Fn(x (+ bias broadcast over rows of length `row`)), n > 0 elements.
  template <class Fn, class T>
  static Ort::Status Run(const char*, OrtKernelContext* ctx, const T* x, const T* bias, size_t row, T* y, size_t n) {
    return RunElementwise(ctx, KernelFor<Fn, T>(), x, bias, row, y, n, sizeof(T));
  }
};

}  // namespace n6
