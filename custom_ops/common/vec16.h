// 16-lane fp32 vectors (GCC/Clang vector extensions) for the attention CPU kernels: one zmm
// register on AVX-512, two ymm on AVX2, four xmm on generic x86-64 -- the same source compiled in
// each ISA clone (see common/isa.h). Explicit vectors because the channel loops of these
// kernels carry register accumulators across an outer loop, which gcc does not auto-vectorise.
// No FMA contraction (the build uses -ffp-contract=off): a*b+c is a multiply then an add.
#pragma once

#include <cstdint>
#include <cstring>

// Helpers are always inlined into their ISA clone, so the ABI of a 64-byte vector argument (the
// -Wpsabi note for the generic target) never matters. (Before the includes: ExpCore of
// common/fastmath.h is instantiated for these vectors too.)
#pragma GCC diagnostic ignored "-Wpsabi"

#include "common/fastmath.h"
#include "common/isa.h"

namespace n6 {

typedef float VF __attribute__((vector_size(64)));
typedef int32_t VI __attribute__((vector_size(64)));
inline constexpr int kVF = 16;
// Register-tile vectors of the ISA's native width (AVX2: 8 lanes, generic x86-64: 4): a 16-lane
// vector there is several registers and register tiles of them spill.
typedef float VF8 __attribute__((vector_size(32)));
typedef float VF4 __attribute__((vector_size(16)));
template <class V>
inline constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(float));
template <class V>
N6_INLINE V LoadT(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
N6_INLINE void StoreT(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

N6_INLINE VF LoadV(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
N6_INLINE void StoreV(float* p, VF v) { std::memcpy(p, &v, sizeof v); }
// For constants. A runtime scalar is broadcast best by writing `vector * scalar` (one
// embedded-broadcast multiply); gcc builds Splat(runtime value) lane by lane.
N6_INLINE VF Splat(float x) { return VF{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
N6_INLINE VF MaxV(VF a, VF b) { return a > b ? a : b; }
N6_INLINE float HMax(VF v) {
  float m = v[0];
  for (int i = 1; i < kVF; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
N6_INLINE float HSum(VF v) {
  float s = 0.0f;
  for (int i = 0; i < kVF; ++i) s += v[i];
  return s;
}

// exp(x) for x <= 0 (softmax), Cephes expf form (~2 ulp, common/fastmath.h); -inf gives 0.
N6_INLINE VF ExpV(VF x) {
  const VF lo = Splat(-87.0f);
  VF n;
  const VF p = ExpCore(x < lo ? lo : x, &n);
  const VI e = (__builtin_convertvector(n, VI) + 127) << 23;
  return x < lo ? Splat(0.0f) : p * (VF)e;
}

}  // namespace n6
