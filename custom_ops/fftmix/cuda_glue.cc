// FFTMix on CUDAExecutionProvider: the CUDA backend of fftmix/op.h (libn6ops_cuda.so). Computes
// the irfft coefficients on the host (once) and hands them to the launcher in fftmix/cuda.cu,
// which enqueues the kernel on onnxruntime's compute stream.
#include "common/ort_glue.h"
#include "fftmix/fftmix_cuda.h"
#include "fftmix/op.h"

namespace n6 {
namespace {

template <int W>
void Coefs(float (&c)[W / 2 + 1][W / 2 + 1]) {
  for (int t = 0; t <= W / 2; ++t)
    for (int m = 0; m <= W / 2; ++m) c[t][m] = static_cast<float>(fftmix::IrfftCoef(W, t, m));
}

const cuda::FFTMixCoefs& CoefTable() {
  static const cuda::FFTMixCoefs table = [] {
    cuda::FFTMixCoefs t;
    Coefs<6>(t.c6);
    Coefs<12>(t.c12);
    Coefs<24>(t.c24);
    return t;
  }();
  return table;
}

struct CudaBackend {
  static constexpr const char* kProvider = kCudaProvider;

  template <class T>
  static Ort::Status Run(OrtKernelContext* ctx, const fftmix::Io<T>& io) {
    cuda::FFTMixArgs a;
    a.dtype = DTypeOf<T>;
    a.x = io.x;
    for (int s = 0; s < fftmix::kNumScales; ++s) a.f[s] = io.f[s];
    a.y = io.y;
    a.B = io.B;
    a.L = io.L;
    a.D = io.D;
    a.coefs = CoefTable();
    a.stream = GpuStream(ctx);
    return FromCuda(fftmix::kOpName, cuda::LaunchFFTMix(a));
  }

  // Causal mode has no CUDA kernel yet: a clear error (run it on CPUExecutionProvider).
  template <class T>
  static Ort::Status RunCausal(OrtKernelContext*, const fftmix::CausalIo<T>&) {
    return OpError(fftmix::kOpName, "causal=1 has no CUDA kernel yet; run the node on CPUExecutionProvider");
  }
};

}  // namespace

void AppendFFTMixCudaOps(OpList& ops) { fftmix::AppendOps<CudaBackend>(ops); }

}  // namespace n6
