// Elementwise CUDA kernels of the n6onnx ops: y = Fn::Apply(x (+ bias over the last axis)),
// for float32 / float16 / bfloat16 storage, computed in fp32 (16-bit outputs rounded once, to
// nearest-even). Fn is the same scalar functor the CPU kernels use (common/scalar.h).
//
// An op's cuda.cu only instantiates the launcher:
//
//   #include "common/cuda_elementwise.cuh"
//   #include "phi6/phi6.h"
//   template n6::cuda::Status n6::cuda::LaunchElementwise<n6::Phi6>(const ElementwiseArgs&);
//
// Kernels (grid-stride loops; the grid gives each 16-byte vector its own thread up to
// kMaxWaves waves of the device, see GridStrideBlocks() for the measurements behind that):
//   VecKernel     x and y at the same offset from a 16-byte boundary (always, for tensors that
//                 onnxruntime allocates): 128-bit loads and stores; a thread with more than one
//                 vector (tensors past the grid cap) keeps kUnroll of them in flight per step;
//                 the fewer than 2*kVec elements before the first and after the
//                 last whole vector are done by the first threads, one element each.
//                 Bias: kVector when the bias rows are whole vectors (bias_len % kVec == 0, bias
//                 16-byte aligned, no head) -- one 128-bit bias load per vector; kElement
//                 otherwise (bias_len >= kVec) -- bias read per element (L1-resident).
//                 The channel (index % bias_len) is tracked incrementally: one modulo per thread
//                 at the start, never a division in the loop.
//   ScalarKernel  everything else (x and y misaligned relative to each other, bias shorter than a
//                 vector): one element per thread per step, kUnroll in flight.
#pragma once

#include "common/cuda_helpers.cuh"

#ifndef N6_CUDA_UNROLL
#define N6_CUDA_UNROLL 4
#endif
#ifndef N6_CUDA_BLOCK
#define N6_CUDA_BLOCK 256
#endif

namespace n6 {
namespace cuda {

inline constexpr int kBlock = N6_CUDA_BLOCK;    // threads per block
inline constexpr int kUnroll = N6_CUDA_UNROLL;  // independent 16-byte loads in flight per thread

enum class BiasMode : int { kNone = 0, kVector = 1, kElement = 2 };

template <class S>
struct EwParams {
  const S* x;
  const S* b;  // bias (null without)
  S* y;
  size_t n;     // elements
  size_t d;     // bias length (0 without bias)
  size_t head;  // VecKernel: elements before the first 16-byte-aligned vector of x (and y)
  size_t nvec;  // VecKernel: whole 16-byte vectors from element `head` on
  size_t step;  // how far the tracked bias index moves per grid stride (mod its modulus)
};

// Tracks the bias index for one thread; a no-op without bias.
template <BiasMode M>
struct Channel {
  __device__ __forceinline__ Channel(size_t, size_t, size_t) {}
  __device__ __forceinline__ size_t value() const { return 0; }
  __device__ __forceinline__ void advance() {}
};
template <>
struct Channel<BiasMode::kVector> : DivisorTracker {  // bias vector index of the thread's vector
  using DivisorTracker::DivisorTracker;
};
template <>
struct Channel<BiasMode::kElement> : DivisorTracker {  // channel of the vector's first element
  using DivisorTracker::DivisorTracker;
};

// Finishes one 16-byte vector: add the bias, apply Fn, narrow, store.
template <class Fn, class C, BiasMode M>
__device__ __forceinline__ void FinishVector(uint4 r, size_t c, const EwParams<typename C::Storage>& p,
                                             typename C::Storage* out) {
  constexpr int V = C::kVec;
  float f[V];
  C::Unpack(r, f);
  if constexpr (M == BiasMode::kVector) {
    float bf[V];
    C::Unpack(LoadVec(p.b + c * V), bf);
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] += bf[k];
  } else if constexpr (M == BiasMode::kElement) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      size_t ck = c + k;  // k < V <= d: at most one wrap
      if (ck >= p.d) ck -= p.d;
      f[k] += C::Load1(p.b + ck);
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) f[k] = Fn::Apply(f[k]);
  StoreVec(out, C::Pack(f));
}

template <class Fn, class C, BiasMode M>
__global__ void __launch_bounds__(kBlock) VecKernel(const EwParams<typename C::Storage> p) {
  using S = typename C::Storage;
  constexpr int V = C::kVec;
  constexpr int U = kUnroll;
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;

  // Scalar head and tail: fewer than 2V elements, one per thread of the first threads.
  const size_t tail_begin = p.head + p.nvec * V;
  if (tid < p.head + (p.n - tail_begin)) {
    const size_t e = tid < p.head ? tid : tail_begin + (tid - p.head);
    float v = C::Load1(p.x + e);
    if constexpr (M != BiasMode::kNone) v += C::Load1(p.b + e % p.d);
    C::Store1(p.y + e, Fn::Apply(v));
  }

  const S* __restrict__ xv = p.x + p.head;
  S* __restrict__ yv = p.y + p.head;
  size_t j = tid;  // vector index
  Channel<M> ch(M == BiasMode::kElement ? p.head + tid * V : tid, p.step,
                M == BiasMode::kVector ? p.d / V : p.d);
  for (; j + (U - 1) * stride < p.nvec; j += U * stride) {
    uint4 r[U];
    size_t c[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      r[u] = LoadVec(xv + (j + u * stride) * V);
      c[u] = ch.value();
      ch.advance();
    }
#pragma unroll
    for (int u = 0; u < U; ++u) FinishVector<Fn, C, M>(r[u], c[u], p, yv + (j + u * stride) * V);
  }
  for (; j < p.nvec; j += stride) {
    FinishVector<Fn, C, M>(LoadVec(xv + j * V), ch.value(), p, yv + j * V);
    ch.advance();
  }
}

template <class Fn, class C, bool kBias>
__global__ void __launch_bounds__(kBlock) ScalarKernel(const EwParams<typename C::Storage> p) {
  constexpr int U = kUnroll;
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  Channel<kBias ? BiasMode::kElement : BiasMode::kNone> ch(tid, p.step, p.d);
  size_t i = tid;
  for (; i + (U - 1) * stride < p.n; i += U * stride) {
    float v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = C::Load1(p.x + i + u * stride);
    if constexpr (kBias) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        v[u] += C::Load1(p.b + ch.value());
        ch.advance();
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) C::Store1(p.y + i + u * stride, Fn::Apply(v[u]));
  }
  for (; i < p.n; i += stride) {
    float v = C::Load1(p.x + i);
    if constexpr (kBias) {
      v += C::Load1(p.b + ch.value());
      ch.advance();
    }
    C::Store1(p.y + i, Fn::Apply(v));
  }
}

// Sizes the grid for `items` work items (one per thread per step), sets p.step (how far a
// tracked index `advance_per_item` apart moves per grid stride, modulo `modulus`; 0 = untracked)
// and launches.
template <auto Kernel, class S>
Status LaunchGridStride(const DeviceInfo& dev, cudaStream_t stream, EwParams<S> p, size_t items,
                        size_t advance_per_item, size_t modulus) {
  int resident = 0;
  Status st = ResidentBlocks<Kernel>(dev, kBlock, &resident);
  if (!st.ok()) return st;
  unsigned grid = GridStrideBlocks(items, kBlock, dev, resident);
#ifdef N6_CUDA_TEST_MAX_BLOCKS  // tests only: a tiny grid, so every loop path runs on small tensors
  if (grid > N6_CUDA_TEST_MAX_BLOCKS) grid = N6_CUDA_TEST_MAX_BLOCKS;
#endif
  p.step = modulus ? (static_cast<size_t>(grid) * kBlock * advance_per_item) % modulus : 0;
  return CheckedLaunch(Kernel, grid, kBlock, 0, stream, p);
}

template <class Fn, class C>
Status LaunchTyped(const ElementwiseArgs& a) {
  using S = typename C::Storage;
  constexpr int V = C::kVec;
  constexpr uintptr_t kElemMask = sizeof(S) - 1;
  const uintptr_t xa = reinterpret_cast<uintptr_t>(a.x), ya = reinterpret_cast<uintptr_t>(a.y),
                  ba = reinterpret_cast<uintptr_t>(a.bias);
  if ((xa | ya | ba) & kElemMask) {
    return InvalidArgument("LaunchElementwise", "x, y and bias must be aligned to their element size");
  }
  DeviceInfo dev;
  Status st = CurrentDevice(&dev);
  if (!st.ok()) return st;
  const cudaStream_t stream = static_cast<cudaStream_t>(a.stream);

  EwParams<S> p{};
  p.x = static_cast<const S*>(a.x);
  p.b = static_cast<const S*>(a.bias);
  p.y = static_cast<S*>(a.y);
  p.n = a.n;
  p.d = a.bias ? a.bias_len : 0;

  // 128-bit path: x and y at the same offset from a 16-byte boundary, at least one whole vector.
  bool vec = (xa & (kVecBytes - 1)) == (ya & (kVecBytes - 1));
  if (vec) {
    p.head = ElementsToAlign16(p.x);
    if (p.head > p.n) p.head = p.n;
    p.nvec = (p.n - p.head) / V;
    vec = p.nvec > 0;
  }
  if (vec && !a.bias) {
    return LaunchGridStride<&VecKernel<Fn, C, BiasMode::kNone>>(dev, stream, p, p.nvec, 0, 0);
  }
  if (vec && p.head == 0 && p.d % V == 0 && IsAligned16(a.bias)) {
    return LaunchGridStride<&VecKernel<Fn, C, BiasMode::kVector>>(dev, stream, p, p.nvec, 1, p.d / V);
  }
  if (vec && p.d >= static_cast<size_t>(V)) {
    return LaunchGridStride<&VecKernel<Fn, C, BiasMode::kElement>>(dev, stream, p, p.nvec, V, p.d);
  }
  p.head = 0;
  p.nvec = 0;
  if (!a.bias) return LaunchGridStride<&ScalarKernel<Fn, C, false>>(dev, stream, p, p.n, 0, 0);
  return LaunchGridStride<&ScalarKernel<Fn, C, true>>(dev, stream, p, p.n, 1, p.d);
}

template <class Fn>
Status LaunchElementwise(const ElementwiseArgs& a) {
  if (a.n == 0) return Status{};
  if (!a.x || !a.y) return InvalidArgument("LaunchElementwise", "null x or y");
  if (a.bias && a.bias_len == 0) return InvalidArgument("LaunchElementwise", "bias of length 0 for a non-empty x");
  switch (a.dtype) {
    case DType::kFloat32: return LaunchTyped<Fn, CodecF32>(a);
    case DType::kFloat16: return LaunchTyped<Fn, CodecF16>(a);
    case DType::kBFloat16: return LaunchTyped<Fn, CodecBF16>(a);
  }
  return InvalidArgument("LaunchElementwise", "unsupported element type");
}

}  // namespace cuda
}  // namespace n6
