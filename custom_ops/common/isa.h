// CPU instruction-set selection of the n6onnx CPU kernels.
//
// The library must run on any x86-64, so it is built without -march=native: each kernel is
// compiled once per ISA level (generic x86-64 / AVX2+FMA+F16C / AVX-512) through GCC target
// attributes, and the best level of the running CPU is picked once at run time (HostIsa()).
// On non-x86 hosts only the generic path exists.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#define N6_X86 1
#include <immintrin.h>
#else
#define N6_X86 0
#endif

#if defined(__GNUC__)
#define N6_INLINE inline __attribute__((always_inline))
#else
#define N6_INLINE inline
#endif

#if N6_X86 && defined(__GNUC__)
#define N6_HAVE_ISA_CLONES 1
// Feature lists (not arch=...) so that the default-target always_inline helpers can be inlined
// into these functions. Runtime checks in HostIsa() must match these lists.
#define N6_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define N6_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
// N6_CLONE(f): the ISA clone f where clones are built, else nullptr (for SelectIsa below).
#define N6_CLONE(f) (f)
#else
#define N6_HAVE_ISA_CLONES 0
#define N6_CLONE(f) nullptr
#endif

namespace n6 {

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

// Picks one of the ISA clones of a kernel for this CPU (avx512 / avx2 may be null: not built).
template <class Fn>
Fn SelectIsa(Fn generic, Fn avx2, Fn avx512) {
  switch (HostIsa()) {
    case Isa::kAvx512:
      if (avx512) return avx512;
      [[fallthrough]];
    case Isa::kAvx2:
      if (avx2) return avx2;
      [[fallthrough]];
    default: return generic;
  }
}

// The ISA clones of one kernel body F (an N6_INLINE function, or a function template's
// instantiation): Generic / Avx2 / Avx512 compile the same source at each level, and Select() picks
// the clone for this CPU. kAvx512 = false builds no AVX-512 clone (AVX2 serves those CPUs).
//   using Block = IsaClones<void(const Plan&, size_t), &RunBlockImpl<kHalf>>;  Block::Select()(p, t);
template <class Sig, auto F, bool kAvx512 = true>
struct IsaClones;
template <class... Args, auto F, bool kAvx512>
struct IsaClones<void(Args...), F, kAvx512> {
  using Fn = void (*)(Args...);
  static void Generic(Args... a) { F(a...); }
#if N6_HAVE_ISA_CLONES
  N6_TARGET_AVX2 static void Avx2(Args... a) { F(a...); }
  N6_TARGET_AVX512 static void Avx512(Args... a) { F(a...); }
#endif
  static Fn Select() {
    Fn avx512 = nullptr;
    if constexpr (kAvx512) avx512 = N6_CLONE(&Avx512);
    return SelectIsa<Fn>(&Generic, N6_CLONE(&Avx2), avx512);
  }
};

}  // namespace n6
