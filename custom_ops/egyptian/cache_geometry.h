// The packed cache layout of EgyptianAttention's cache mode as plain numbers (no onnxruntime or
// CUDA header): what egyptian/egyptian.h's ResolveCache computes on the host and the CUDA kernels
// read on the device, passed as one value.
//
// Past [B, 1, S, dh] and present [B, 1, Sout, dh]: the rows of each head kind k (0 full, 1 local,
// 2 global) lie together, position-major within a kind: row t of the kind's KV group g0[k] + i is
// packed row base[k] + t * n[k] + i of the past (obase[k] of the present). Full groups keep every
// position, local groups the last window - 1, global groups the first `sinks`.
#pragma once

#include <cstdint>

namespace n6 {
namespace egyptian {

struct CacheGeometry {
  int64_t P = 0, S = 0, Sout = 0;                     // past length (positions), packed past / present rows
  int64_t g0[3] = {0, 0, 0}, n[3] = {0, 0, 0};        // first group and groups of each kind
  int64_t rows[3] = {0, 0, 0}, base[3] = {0, 0, 0};   // the past's rows per group, first packed row
  int64_t keep[3] = {0, 0, 0}, obase[3] = {0, 0, 0};  // the same for the presents
};

}  // namespace egyptian
}  // namespace n6
