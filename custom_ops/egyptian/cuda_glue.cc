// EgyptianAttention on CUDAExecutionProvider: the CUDA backend of egyptian/op.h
// (libn6ops_cuda.so). Same attribute and shape checks as the CPU kernel, plus the limits of the
// CUDA kernels; the launcher (egyptian/cuda.cu) enqueues them on onnxruntime's compute stream.
#include <string>

#include "common/ort_glue.h"
#include "egyptian/egyptian_cuda.h"
#include "egyptian/op.h"

namespace n6 {
namespace {

struct CudaBackend {
  static constexpr const char* kProvider = kCudaProvider;

  static std::string Check(const egyptian::Problem& pr) {
    if (pr.H > cuda::kEgyptianMaxHeads) {
      return "the CUDA kernel takes at most " + std::to_string(cuda::kEgyptianMaxHeads) +
             " heads, got num_heads=" + std::to_string(pr.H);
    }
    if (pr.dh > cuda::kEgyptianMaxHeadSize) {
      return "the CUDA kernel takes head sizes up to " + std::to_string(cuda::kEgyptianMaxHeadSize) + ", got " +
             std::to_string(pr.dh);
    }
    return "";
  }

  template <class T>
  static Ort::Status Run(OrtKernelContext* ctx, const egyptian::Problem& pr, const egyptian::Io<T>& io) {
    return FromCuda(egyptian::kOpName, cuda::LaunchEgyptian(Args(ctx, pr, io)));
  }

  // cache mode: K / V are the new tokens, the keys run over the P + Lq absolute positions
  template <class T>
  static Ort::Status RunCache(OrtKernelContext* ctx, const egyptian::Problem& pr, const egyptian::CacheLayout& c,
                              const egyptian::Io<T>& io, const egyptian::CacheIo<T>& cio) {
    cuda::EgyptianArgs a = Args(ctx, pr, io);
    a.Lk = c.P + pr.Lq;
    cuda::EgyptianCache e;
    e.pk = cio.pk;
    e.pv = cio.pv;
    e.ok = cio.ok;
    e.ov = cio.ov;
    e.geo = c;  // the layout part of CacheLayout
    return FromCuda(egyptian::kOpName, cuda::LaunchEgyptianCache(a, e));
  }

  template <class T>
  static cuda::EgyptianArgs Args(OrtKernelContext* ctx, const egyptian::Problem& pr, const egyptian::Io<T>& io) {
    cuda::EgyptianArgs a;
    a.dtype = DTypeOf<T>;
    a.q = io.q;
    a.k = io.k;
    a.v = io.v;
    a.mask = io.mask;
    a.y = io.y;
    a.B = pr.B;
    a.Lq = pr.Lq;
    a.Lk = pr.Lk;
    a.H = pr.H;
    a.Hkv = pr.Hkv;
    a.dh = pr.dh;
    a.window = pr.window;
    a.sinks = pr.sinks;
    a.causal = pr.causal;
    a.scale = pr.scale;
    for (int64_t h = 0; h < pr.H; ++h) a.kinds[h] = pr.kinds[h];
    a.stream = GpuStream(ctx);
    return a;
  }
};

}  // namespace

void AppendEgyptianAttentionCudaOps(OpList& ops) { egyptian::AppendOps<CudaBackend>(ops); }

}  // namespace n6
