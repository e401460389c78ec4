// MoE on CUDA: the plain interface between the onnxruntime glue (moe/cuda_glue.cc, C++ compiler)
// and the kernels (moe/cuda.cu, nvcc). No CUDA or onnxruntime header needed.
#pragma once

#include "common/cuda_launch.h"
#include "moe/moe.h"

namespace n6 {
namespace moe {
namespace cuda {

struct Args {
  Problem pr;
  bool half = false;  // T = float16 (else float32)
  const void* x = nullptr;       // [N, D] T (device pointers)
  const void* logits = nullptr;  // [N, G] T
  const void* w1 = nullptr;      // [E, D, H] T
  const void* b1 = nullptr;      // [E, H] T or null
  const void* w2 = nullptr;      // [E, H, D] T
  const void* b2 = nullptr;      // [E, D] T or null
  const void* w3 = nullptr;      // [E, D, H] T or null
  const float* importance = nullptr;  // [E] or null
  void* y = nullptr;             // [N, D] T
  void* stream = nullptr;        // cudaStream_t: onnxruntime's compute stream for the node
};

// Enqueues the whole op on args.stream (routing, per-expert lists, grouped GEMMs, per-token sums).
n6::cuda::Status Launch(const Args& args);

}  // namespace cuda
}  // namespace moe
}  // namespace n6
