// Scalar definitions of the n6 elementwise ops, shared by the CPU kernels (g++) and the CUDA
// kernels (nvcc): one source of truth for the arithmetic.
//
// Each op is a struct with the op names and a branch-free fp32 `Apply`:
//
//   struct MyOp {
//     static constexpr const char* kName = "MyOp";          // plain op:  Y = f(X)
//     static constexpr const char* kBiasName = "BiasMyOp";  // bias op:   Y = f(X + bias)
//     static N6_HD float Apply(float x) { ... }
//   };
//
// Numerics: both builds evaluate exactly the expression written in Apply(), in fp32, without
// FMA contraction (g++ -ffp-contract=off; nvcc --fmad=false), so CPU kernels, CUDA kernels and a
// numpy float32 evaluation agree bit for bit (16-bit outputs: that value rounded to nearest-even
// once). Use an explicit fmaf() where a fused multiply-add is wanted: it is never affected.
#pragma once

#if defined(__CUDACC__)
#define N6_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define N6_HD inline __attribute__((always_inline))
#else
#define N6_HD inline
#endif
