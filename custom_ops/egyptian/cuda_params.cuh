// EgyptianAttention CUDA: what the attention kernels (egyptian/cuda.cu) and the global-head kernel
// (egyptian/cuda_global.cu) share: the launch parameters, with the key interval of a full / local
// head's query (the rules of egyptian/egyptian.h), and the element load / store.
#pragma once

#include "common/cuda_helpers.cuh"
#include "egyptian/egyptian_cuda.h"

namespace n6 {
namespace cuda {
namespace egy {

constexpr float kNegInf = -__builtin_huge_valf();

template <class S>
__device__ __forceinline__ float Ld(const S* p) {
  return CodecFor<S>::Type::Load1(p);
}
template <class S>
__device__ __forceinline__ void St(S* p, float v) {
  CodecFor<S>::Type::Store1(p, v);
}

// Cache mode: key row `key` (absolute position) of KV group g is a new row (key >= P) of K / V
// [B, Lnew, Hkv*dh], or a row of the packed past [B, S, dh] (egyptian/cache_geometry.h). dh may be
// counted in any unit (elements, 16-byte vectors): offsets come back in the same unit.
struct CacheView {
  const void* pk;  // null: not cache mode (or an empty past)
  const void* pv;
  int64_t Lnew, Hkv;
  egyptian::CacheGeometry g;

  __host__ __device__ __forceinline__ int KindOf(int64_t group) const {
    return (g.n[2] > 0 && group >= g.g0[2]) ? 2 : ((g.n[1] > 0 && group >= g.g0[1]) ? 1 : 0);
  }
  // offset of the row, and whether it lies in the past; -1 for a past row the cache does not keep
  __host__ __device__ __forceinline__ int64_t Row(int64_t b, int64_t key, int64_t group, int64_t dh, bool* past) const {
    if (key >= g.P) {
      *past = false;
      return ((b * Lnew + (key - g.P)) * Hkv + group) * dh;
    }
    *past = true;
    const int kind = KindOf(group);
    const int64_t t = kind == 1 ? key - (g.P - g.rows[1]) : key;
    if (t < 0 || t >= g.rows[kind]) return -1;
    return (b * g.S + g.base[kind] + t * g.n[kind] + (group - g.g0[kind])) * dh;
  }
};

struct Params {
  const void* q;  // [B, Lq, H*dh]
  const void* k;  // [B, Lk, Hkv*dh]
  const void* v;
  const int32_t* mask;  // [B, Lk] or null
  void* y;              // [B, Lq, H*dh]
  int64_t B, Lq, Lk, H, dh, ldq, ldk;
  int64_t G;       // query heads per KV head: query head h reads KV head h / G
  int64_t off;     // Lk - Lq: the key index of query 0
  int64_t window, half, sinks;
  int causal;
  float scale;
  int nq;                          // query tiles per sequence
  int nstream;                     // full + local heads
  int heads[kEgyptianMaxHeads];    // StreamKernel: the full / local heads; GlobalKernel: the global heads
  int local[kEgyptianMaxHeads];    // StreamKernel: 1 for a local head
  int cached;                      // decode kernel: 1 = cache mode, K / V rows through `cache`
  CacheView cache;

  // keys [KeyLo, KeyHi] of a full / local head's query at key index pos (empty when lo > hi)
  __host__ __device__ __forceinline__ int64_t KeyLo(bool is_local, int64_t pos) const {
    if (!is_local) return 0;
    const int64_t lo = causal ? pos - window + 1 : pos - half;
    return lo > 0 ? lo : 0;
  }
  __host__ __device__ __forceinline__ int64_t KeyHi(bool is_local, int64_t pos) const {
    if (causal) return pos;
    if (!is_local) return Lk - 1;
    return pos + half < Lk - 1 ? pos + half : Lk - 1;
  }
  // element offsets of query row i of head h, and of key row j of the KV head of query head h
  __host__ __device__ __forceinline__ int64_t QOff(int64_t b, int64_t i, int64_t h) const {
    return (b * Lq + i) * ldq + h * dh;
  }
  __host__ __device__ __forceinline__ int64_t KOff(int64_t b, int64_t j, int64_t h) const {
    return (b * Lk + j) * ldk + (h / G) * dh;
  }
};

// The global heads p.heads[0 .. nglobal) (egyptian/cuda_global.cu).
Status LaunchGlobal(const Params& p, int nglobal, DType dtype, cudaStream_t stream);

// Fewer queries than this (decode steps): every head (kinds[h]: 0 full, 1 local, 2 global) runs
// as egyptian/cuda_decode.cu's flash-decoding kernels instead of the tiled and global-head ones
// (p.heads / p.local / p.nstream / p.nq are not used). In cache mode (p.cached) the same launch
// writes the presents `cache` asks for (cache->ok / ov).
inline constexpr int64_t kDecodeBelow = 4;
Status LaunchDecode(const Params& p, const int* kinds, DType dtype, const EgyptianCache* cache, cudaStream_t stream);

}  // namespace egy
}  // namespace cuda
}  // namespace n6
