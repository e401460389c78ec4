// Small CUDA helpers shared by the n6onnx CUDA kernels (nvcc only; no onnxruntime headers):
//
//   * Status / CudaStatus / CheckedLaunch: every launch is validated and checked with
//     cudaGetLastError(); failures come back as a Status naming the step and CUDA's error, which
//     the onnxruntime glue (register_cuda.cc) turns into an Ort::Status. Nothing throws.
//   * DeviceInfo (multiprocessor count, threads per multiprocessor) queried once per device and
//     cached; ResidentBlocks<Kernel>() caches the occupancy of each kernel per device;
//     GridStrideBlocks() sizes a grid-stride launch: one thread per work item, capped at a number
//     of full waves of the device (a multiple of the multiprocessor count).
//   * ScratchAlloc() / ScratchFree(): stream-ordered scratch memory kept in the device's pool.
//   * Workspace: per-stream memory kept between calls, with a zeroed counter area for kernels
//     whose blocks count arrivals (the last one finishes the work and zeroes its counter again).
//   * 128-bit vector access: IsAligned16(), LoadVec() / StoreVec() (ld.global.nc.v4 /
//     st.global.v4 of a uint4), and the element codecs below, which unpack a uint4 into fp32
//     lanes and pack fp32 lanes back (the paired cvt.rn.{f16x2,bf16x2}.f32 instructions).
//   * Element codecs for float32 / float16 / bfloat16 storage: CodecF32, CodecF16, CodecBF16
//     (Load1 / ToFloat / FromFloat for single elements, Unpack / Pack for 16-byte vectors).
//     16-bit values are widened exactly and narrowed with round-to-nearest-even, like the CPU
//     kernels (common/half.h), so both agree bit for bit.
//   * DivisorTracker: i % d for an index advancing by a fixed stride, without a division in the
//     loop (one modulo per thread at the start; add-and-subtract per step).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "common/cuda_launch.h"

namespace n6 {
namespace cuda {

// ------------------------------------------------------------------------------------------
// Errors and checked launches
// ------------------------------------------------------------------------------------------
inline Status CudaStatus(cudaError_t err, const char* where) {
  Status s;
  if (err == cudaSuccess) return s;
  s.code = static_cast<int>(err);
  s.where = where;
  s.name = cudaGetErrorName(err);
  s.message = cudaGetErrorString(err);
  return s;
}

inline Status InvalidArgument(const char* where, const char* message) {
  Status s;
  s.code = -1;
  s.where = where;
  s.name = "invalid argument";
  s.message = message;
  return s;
}

// kernel<<<grid, block, smem, stream>>>(args...), with the configuration validated first and
// cudaGetLastError() checked after. Every kernel of the library is launched through this.
template <class... Params, class... Args>
inline Status CheckedLaunch(void (*kernel)(Params...), unsigned grid, unsigned block, size_t smem,
                            cudaStream_t stream, Args... args) {
  if (grid == 0 || block == 0 || block > 1024 || grid > 0x7FFFFFFFu) {
    return InvalidArgument("kernel launch", "launch configuration out of range (grid or block size)");
  }
  kernel<<<grid, block, smem, stream>>>(static_cast<Params>(args)...);
  return CudaStatus(cudaGetLastError(), "kernel launch");
}

// ------------------------------------------------------------------------------------------
// Device properties (cached) and grid sizing
// ------------------------------------------------------------------------------------------
inline constexpr int kMaxDevices = 64;

struct DeviceInfo {
  int device = 0;
  int sms = 0;                 // multiprocessors
  int max_threads_per_sm = 0;  // resident threads per multiprocessor
};

// Properties of the current device (the one onnxruntime made current for this kernel call),
// queried once per device.
inline Status CurrentDevice(DeviceInfo* out) {
  static std::atomic<int> sms_cache[kMaxDevices];  // 0 = not queried yet
  static std::atomic<int> threads_cache[kMaxDevices];
  int dev = 0;
  Status st = CudaStatus(cudaGetDevice(&dev), "cudaGetDevice");
  if (!st.ok()) return st;
  out->device = dev;
  const bool cacheable = dev >= 0 && dev < kMaxDevices;
  if (cacheable) {
    out->sms = sms_cache[dev].load(std::memory_order_relaxed);
    out->max_threads_per_sm = threads_cache[dev].load(std::memory_order_relaxed);
    if (out->sms > 0 && out->max_threads_per_sm > 0) return st;
  }
  st = CudaStatus(cudaDeviceGetAttribute(&out->sms, cudaDevAttrMultiProcessorCount, dev),
                  "cudaDeviceGetAttribute(MultiProcessorCount)");
  if (!st.ok()) return st;
  st = CudaStatus(cudaDeviceGetAttribute(&out->max_threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, dev),
                  "cudaDeviceGetAttribute(MaxThreadsPerMultiProcessor)");
  if (!st.ok()) return st;
  if (out->sms <= 0 || out->max_threads_per_sm <= 0) {
    return InvalidArgument("CurrentDevice", "device reports no multiprocessors");
  }
  if (cacheable) {
    sms_cache[dev].store(out->sms, std::memory_order_relaxed);
    threads_cache[dev].store(out->max_threads_per_sm, std::memory_order_relaxed);
  }
  return st;
}

// Blocks of `block` threads of Kernel that fit on one multiprocessor of dev.device (occupancy
// calculator, cached per kernel and device; at least 1).
template <auto Kernel>
inline Status ResidentBlocks(const DeviceInfo& dev, int block, int* out) {
  static std::atomic<int> cache[kMaxDevices];  // assumes one block size per kernel
  const bool cacheable = dev.device >= 0 && dev.device < kMaxDevices;
  if (cacheable) {
    const int v = cache[dev.device].load(std::memory_order_relaxed);
    if (v > 0) {
      *out = v;
      return Status{};
    }
  }
  int blocks = 0;
  Status st = CudaStatus(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Kernel, block, 0),
                         "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (!st.ok()) return st;
  if (blocks < 1) blocks = 1;
  if (cacheable) cache[dev.device].store(blocks, std::memory_order_relaxed);
  *out = blocks;
  return st;
}

// Grid for a grid-stride loop over `items` work items (one per thread per step): one thread per
// item, capped at `max_waves` full waves of the device (sms * resident_blocks_per_sm * max_waves
// blocks, a multiple of the multiprocessor count); past the cap each thread loops.
//
// Why not one persistent wave (sms * resident blocks)? Measured on an H100 (fp32 Phi6 over
// 8192x4096, 16-byte accesses): one wave, 4 vectors per thread per step: 2.68 TB/s; 4 waves:
// 2.83 TB/s; one thread per vector (31 waves): 2.91 TB/s, the same as cudaMemcpy D2D. The
// hardware block scheduler balances many short blocks better than a fixed wave of long ones.
#ifndef N6_CUDA_MAX_WAVES
#define N6_CUDA_MAX_WAVES 64
#endif
inline constexpr int kMaxWaves = N6_CUDA_MAX_WAVES;
inline unsigned GridStrideBlocks(size_t items, int block, const DeviceInfo& dev, int resident_blocks_per_sm,
                                 int max_waves = kMaxWaves) {
  const size_t wanted = (items + static_cast<size_t>(block) - 1) / static_cast<size_t>(block);
  const size_t cap = static_cast<size_t>(dev.sms) * static_cast<size_t>(resident_blocks_per_sm) *
                     static_cast<size_t>(max_waves < 1 ? 1 : max_waves);
  const size_t blocks = wanted < cap ? wanted : cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// ------------------------------------------------------------------------------------------
// Scratch memory
// ------------------------------------------------------------------------------------------
// Stream-ordered scratch (cudaMallocAsync / cudaFreeAsync on the kernels' stream, CUDA >= 11.2).
// The current device's default memory pool gets a release threshold of UINT64_MAX once, so
// memory freed between calls stays in the pool and later calls do not go back to the driver.
// onnxruntime's own arena is not involved.
inline Status ScratchAlloc(void** out, size_t bytes, cudaStream_t stream) {
  static bool pool_set = [] {  // keep freed scratch in the stream-ordered pool between calls
    int dev = 0;
    cudaMemPool_t pool;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
      uint64_t threshold = UINT64_MAX;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    }
    return true;
  }();
  (void)pool_set;
  return CudaStatus(cudaMallocAsync(out, bytes, stream), "cudaMallocAsync (scratch)");
}
inline Status ScratchFree(void* p, cudaStream_t stream) {
  return CudaStatus(cudaFreeAsync(p, stream), "cudaFreeAsync (scratch)");
}

// Per-stream workspace: `counters` unsigned counters, zero whenever a kernel starts (every kernel
// that counts on them leaves them zero), then `bytes` of data. Acquire it once per call, Release
// it after the last launch that uses it. It is kept per (device, stream) between calls, so a
// decode step pays no allocation: a stream runs its kernels in order, so they can share it. A
// larger request allocates a larger one (stream-ordered, counters zeroed by a memset on the
// stream); the smaller one is kept, not freed, since a kernel queued by another host thread on
// the same stream may still use it. While the stream is being captured into a CUDA graph, a
// request the kept workspace cannot take gets a temporary one (allocated, zeroed and freed in
// the graph) instead.
struct Workspace {
  unsigned* counters = nullptr;
  void* data = nullptr;
  void* temp = nullptr;  // a temporary workspace to free in Release
};

inline Status AcquireWorkspace(cudaStream_t stream, size_t counters, size_t bytes, Workspace* out) {
  struct Kept {
    int device;
    cudaStream_t stream;
    char* base;
    size_t counters, bytes;
  };
  static std::mutex mu;
  static std::vector<Kept> kept;
  int dev = 0;
  Status st = CudaStatus(cudaGetDevice(&dev), "cudaGetDevice");
  if (!st.ok()) return st;
  counters = (std::max<size_t>(counters, 1) + 63) / 64 * 64;  // 256-byte aligned data area
  std::lock_guard<std::mutex> lock(mu);
  Kept* slot = nullptr;
  for (Kept& k : kept) {
    if (k.device == dev && k.stream == stream) slot = &k;
  }
  if (slot && slot->counters >= counters && slot->bytes >= bytes) {
    out->counters = reinterpret_cast<unsigned*>(slot->base);
    out->data = slot->base + slot->counters * sizeof(unsigned);
    out->temp = nullptr;
    return st;
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  st = CudaStatus(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
  if (!st.ok()) return st;
  const bool temp = capture != cudaStreamCaptureStatusNone;
  if (!temp && slot) {  // grow geometrically
    counters = std::max(counters, 2 * slot->counters);
    bytes = std::max(bytes, 2 * slot->bytes);
  }
  void* base = nullptr;
  st = ScratchAlloc(&base, counters * sizeof(unsigned) + bytes, stream);
  if (!st.ok()) return st;
  st = CudaStatus(cudaMemsetAsync(base, 0, counters * sizeof(unsigned), stream), "cudaMemsetAsync (workspace)");
  if (!st.ok()) {
    ScratchFree(base, stream);
    return st;
  }
  out->counters = static_cast<unsigned*>(base);
  out->data = static_cast<char*>(base) + counters * sizeof(unsigned);
  out->temp = temp ? base : nullptr;
  if (!temp && slot) {
    slot->base = static_cast<char*>(base);  // the old one stays allocated (see above)
    slot->counters = counters;
    slot->bytes = bytes;
  } else if (!temp) {
    kept.push_back(Kept{dev, stream, static_cast<char*>(base), counters, bytes});
  }
  return st;
}

inline Status ReleaseWorkspace(const Workspace& w, cudaStream_t stream) {
  return w.temp ? ScratchFree(w.temp, stream) : Status{};
}

// ------------------------------------------------------------------------------------------
// 128-bit vector access
// ------------------------------------------------------------------------------------------
inline constexpr int kVecBytes = 16;

__host__ __device__ __forceinline__ bool IsAligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & (kVecBytes - 1)) == 0;
}

// Elements before p reaches a 16-byte boundary (p must be aligned to its element size).
template <class S>
__host__ __device__ __forceinline__ size_t ElementsToAlign16(const S* p) {
  const size_t mis = reinterpret_cast<uintptr_t>(p) & (kVecBytes - 1);
  return mis == 0 ? 0 : (kVecBytes - mis) / sizeof(S);
}

// Read-only, 16-byte-aligned load through the non-coherent path (ld.global.nc): the input of an
// elementwise kernel is never written while the kernel runs. N6_CUDA_STREAMING_LOADS=1 (default
// 0) makes it an evict-first load (ld.global.cs).
//
// Why the cache hints are off by default (measured on an H100): evict-first loads + stores gain
// 1-2% on tensors far larger than L2 (fp32 8192x4096: 0.0908 vs 0.0921 ms per kernel), but in a
// chain of ops through onnxruntime -- what a model does: the activation's output is the next
// op's input -- they evict what the next op would have read from L2: the BERT-base FFN
// activation (fp16, 1024x3072) went from 5.7 to 9.1 us per node
// (benchmarks/results/activation_cuda_streaming_hints.json against activation_cuda.json).
#ifndef N6_CUDA_STREAMING_LOADS
#define N6_CUDA_STREAMING_LOADS 0
#endif
__device__ __forceinline__ uint4 LoadVec(const void* p) {
#if N6_CUDA_STREAMING_LOADS
  return __ldcs(static_cast<const uint4*>(p));
#else
  return __ldg(static_cast<const uint4*>(p));
#endif
}

// 16-byte-aligned store. N6_CUDA_STREAMING_STORES=1 (default 0) makes it a streaming
// (evict-first, st.global.cs) store.
#ifndef N6_CUDA_STREAMING_STORES
#define N6_CUDA_STREAMING_STORES 0
#endif
__device__ __forceinline__ void StoreVec(void* p, uint4 v) {
#if N6_CUDA_STREAMING_STORES
  __stcs(static_cast<uint4*>(p), v);
#else
  *static_cast<uint4*>(p) = v;
#endif
}

__device__ __forceinline__ float LoWordToFloatBF16(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float HiWordToFloatBF16(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

// ------------------------------------------------------------------------------------------
// Element codecs: storage type <-> fp32
// ------------------------------------------------------------------------------------------
struct CodecF32 {
  using Storage = float;
  static constexpr int kVec = kVecBytes / sizeof(Storage);  // elements per 16-byte vector
  static constexpr DType kDType = DType::kFloat32;
  __device__ __forceinline__ static float ToFloat(Storage b) { return b; }
  __device__ __forceinline__ static Storage FromFloat(float f) { return f; }
  __device__ __forceinline__ static float Load1(const Storage* p) { return __ldg(p); }
  __device__ __forceinline__ static void Store1(Storage* p, float v) { *p = v; }
  __device__ __forceinline__ static void Unpack(uint4 u, float (&f)[kVec]) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  }
  __device__ __forceinline__ static uint4 Pack(const float (&f)[kVec]) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
};

// The 16-bit codecs share everything but the conversions of one element and of a pair (the
// derived codec's ToFloat / FromFloat / Unpack2 / Pack2).
template <class Self>
struct Codec16 {
  using Storage = uint16_t;
  static constexpr int kVec = kVecBytes / sizeof(Storage);
  __device__ __forceinline__ static float Load1(const Storage* p) { return Self::ToFloat(__ldg(p)); }
  __device__ __forceinline__ static void Store1(Storage* p, float v) { *p = Self::FromFloat(v); }
  __device__ __forceinline__ static void Unpack(uint4 u, float (&f)[kVec]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 p = Self::Unpack2(w[k]);
      f[2 * k] = p.x;
      f[2 * k + 1] = p.y;
    }
  }
  __device__ __forceinline__ static uint4 Pack(const float (&f)[kVec]) {
    return make_uint4(Self::Pack2(f[0], f[1]), Self::Pack2(f[2], f[3]), Self::Pack2(f[4], f[5]),
                      Self::Pack2(f[6], f[7]));
  }
};

struct CodecF16 : Codec16<CodecF16> {  // IEEE binary16 bits
  static constexpr DType kDType = DType::kFloat16;
  __device__ __forceinline__ static float ToFloat(Storage b) { return __half2float(__ushort_as_half(b)); }
  __device__ __forceinline__ static Storage FromFloat(float f) { return __half_as_ushort(__float2half_rn(f)); }
  __device__ __forceinline__ static float2 Unpack2(uint32_t w) {
    __half2 h;
    memcpy(&h, &w, sizeof h);
    return __half22float2(h);
  }
  __device__ __forceinline__ static uint32_t Pack2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);  // cvt.rn.f16x2.f32: both lanes RNE
    uint32_t w;
    memcpy(&w, &h, sizeof w);
    return w;
  }
};

struct CodecBF16 : Codec16<CodecBF16> {  // bfloat16 bits
  static constexpr DType kDType = DType::kBFloat16;
  __device__ __forceinline__ static float ToFloat(Storage b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
  __device__ __forceinline__ static Storage FromFloat(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
  __device__ __forceinline__ static float2 Unpack2(uint32_t w) {
    return make_float2(LoWordToFloatBF16(w), HiWordToFloatBF16(w));
  }
  __device__ __forceinline__ static uint32_t Pack2(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // cvt.rn.bf16x2.f32: both lanes RNE
    uint32_t w;
    memcpy(&w, &h, sizeof w);
    return w;
  }
};

// The codec of a storage type of the float32 / float16 kernels (uint16_t: IEEE float16 bits).
template <class S>
struct CodecFor;
template <>
struct CodecFor<float> {
  using Type = CodecF32;
};
template <>
struct CodecFor<uint16_t> {
  using Type = CodecF16;
};

// ------------------------------------------------------------------------------------------
// i % d for an index advancing by a fixed stride: value() == i % d for the current i.
// ------------------------------------------------------------------------------------------
struct DivisorTracker {
  size_t rem;   // i % d
  size_t step;  // stride % d
  size_t d;
  __device__ __forceinline__ DivisorTracker(size_t i, size_t stride_mod_d, size_t divisor)
      : rem(i % divisor), step(stride_mod_d), d(divisor) {}
  __device__ __forceinline__ size_t value() const { return rem; }
  __device__ __forceinline__ void advance() {  // i += stride
    rem += step;
    if (rem >= d) rem -= d;
  }
};

}  // namespace cuda
}  // namespace n6
