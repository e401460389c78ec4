// FFTMix CUDA launcher interface (plain C++: included by the onnxruntime glue fftmix/cuda_glue.cc
// and by fftmix/cuda.cu).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/cuda_launch.h"

namespace n6 {
namespace cuda {

// irfft coefficients per scale: taps_w[t][d] = sum_m coef[t][m] * F_w[m][d]; t, m in [0, w/2].
struct FFTMixCoefs {
  float c6[4][4];
  float c12[7][7];
  float c24[13][13];
};

struct FFTMixArgs {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;  // [B, L, D]
  const void* f[3] = {};    // F6 [4, D], F12 [7, D], F24 [13, D]
  void* y = nullptr;        // [B, L, 3D]
  int64_t B = 0, L = 0, D = 0;
  FFTMixCoefs coefs;
  void* stream = nullptr;
};

Status LaunchFFTMix(const FFTMixArgs& a);

// Causal mode (SPEC.md "FFT-Mix, causal mode"; fftmix/op.h CausalIo): one-sided taps [w, D],
// absolute positions pl + t, rows before pl from past [B, P, D]; present [B, keep, D] (or null)
// gets the last `keep` inputs.
struct FFTMixCausalArgs {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;     // [B, L, D]
  const void* past = nullptr;  // [B, P, D] or null when P == 0
  const void* k[3] = {};       // taps [6, D], [12, D], [24, D]
  void* y = nullptr;           // [B, L, 3D]
  void* present = nullptr;     // [B, keep, D] or null
  int64_t B = 0, L = 0, D = 0, P = 0, pl = 0, keep = 0;
  void* stream = nullptr;
};

Status LaunchFFTMixCausal(const FFTMixCausalArgs& a);

}  // namespace cuda
}  // namespace n6
