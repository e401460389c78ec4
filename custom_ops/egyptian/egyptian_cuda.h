// EgyptianAttention CUDA launcher interface (plain C++: included by egyptian/cuda_glue.cc and
// egyptian/cuda.cu).
#pragma once

#include <cstdint>

#include "common/cuda_launch.h"

namespace n6 {
namespace cuda {

inline constexpr int kEgyptianMaxHeads = 64;
inline constexpr int kEgyptianMaxHeadSize = 128;

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
};

Status LaunchEgyptian(const EgyptianArgs& a);

}  // namespace cuda
}  // namespace n6
