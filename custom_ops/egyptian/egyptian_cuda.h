// EgyptianAttention CUDA launcher interface (plain C++: included by egyptian/cuda_glue.cc and
// egyptian/cuda.cu).
#pragma once

#include <cstdint>

#include "common/cuda_launch.h"
#include "egyptian/cache_geometry.h"

namespace n6 {
namespace cuda {

inline constexpr int kEgyptianMaxHeads = 64;
inline constexpr int kEgyptianMaxHeadSize = 128;

// Cache mode (egyptian/egyptian.h, CacheLayout): the packed past [B, 1, S, dh] and the presents
// [B, 1, Sout, dh] (null when not requested); per kind (0 full, 1 local, 2 global) its first
// KV group, groups, rows per group and first packed row, in the past and in the presents.
// cache mode: the packed past, the presents (either may be null) and their layout
struct EgyptianCache {
  const void* pk = nullptr;
  const void* pv = nullptr;
  void* ok = nullptr;
  void* ov = nullptr;
  egyptian::CacheGeometry geo;
};

struct EgyptianArgs {
  DType dtype = DType::kFloat32;
  const void* q = nullptr;  // [B, Lq, H*dh]
  const void* k = nullptr;  // [B, Lk, Hkv*dh]
  const void* v = nullptr;
  const int32_t* mask = nullptr;  // [B, Lk] or null
  void* y = nullptr;              // [B, Lq, H*dh]
  int64_t B = 0, Lq = 0, Lk = 0, H = 0, Hkv = 0, dh = 0;
  int64_t window = 64, sinks = 1;
  bool causal = false;
  float scale = 1.0f;
  int kinds[kEgyptianMaxHeads] = {};  // 0 full, 1 local, 2 global
  void* stream = nullptr;
  // cache mode, decode steps (Lq < 4) only: K / V hold the Lq new tokens, Lk = P + Lq, and every
  // key row P.. comes from K / V, the rows before from the packed past (egyptian/cuda_cache.cu)
  const EgyptianCache* cache = nullptr;
};

Status LaunchEgyptian(const EgyptianArgs& a);

// Cache mode (egyptian/cuda_cache.cu): a.k / a.v are the Lq new tokens [B, Lq, Hkv*dh], a.Lk =
// P + Lq, a.mask [B, P + Lq]. Writes the presents, then attends: decode steps read the past in
// place; longer calls gather the full-length K / V into scratch first.
Status LaunchEgyptianCache(const EgyptianArgs& a, const EgyptianCache& c);

}  // namespace cuda
}  // namespace n6
