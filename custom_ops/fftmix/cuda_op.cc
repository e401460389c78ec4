// FFTMix on CUDAExecutionProvider: the onnxruntime glue of fftmix/cuda.cu (libn6ops_cuda.so).
// Checks shapes like the CPU kernel, computes the irfft coefficients on the host and enqueues the
// kernel on onnxruntime's compute stream; launch failures come back as ORT errors.
#include <cmath>

#include "common/elementwise.h"
#include "fftmix/fftmix.h"
#include "fftmix/fftmix_cuda.h"

namespace n6 {
namespace {

constexpr const char* kOp = "FFTMix";

template <int W>
void Coefs(float (&c)[W / 2 + 1][W / 2 + 1]) {
  const double pi = 3.14159265358979323846;
  for (int t = 0; t <= W / 2; ++t)
    for (int m = 0; m <= W / 2; ++m)
      c[t][m] = static_cast<float>(((m == 0 || 2 * m == W) ? 1.0 : 2.0) * std::cos(2.0 * pi * m * t / W) / W);
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

template <class T>
cuda::DType DTypeOf();
template <>
cuda::DType DTypeOf<float>() { return cuda::DType::kFloat32; }
template <>
cuda::DType DTypeOf<Ort::Float16_t>() { return cuda::DType::kFloat16; }

template <class T>
Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& F6,
                    const Ort::Custom::Tensor<T>& F12, const Ort::Custom::Tensor<T>& F24, Ort::Custom::Tensor<T>& Y) {
  try {
    const std::vector<int64_t>& xs = X.Shape();
    if (xs.size() != 3) return OpError(kOp, "X must be [B, L, D], got shape " + ShapeToString(xs));
    const Ort::Custom::Tensor<T>* fs[3] = {&F6, &F12, &F24};
    cuda::FFTMixArgs a;
    for (int s = 0; s < 3; ++s) {
      const int w = fftmix::kWindows[s];
      const std::vector<int64_t> want = {w / 2 + 1, xs[2]};
      if (fs[s]->Shape() != want) {
        return OpError(kOp, "F" + std::to_string(w) + " must be " + ShapeToString(want) + " for X of shape " +
                                ShapeToString(xs) + ", got " + ShapeToString(fs[s]->Shape()));
      }
      a.f[s] = fs[s]->Data();
    }
    T* y = Y.Allocate({xs[0], xs[1], 3 * xs[2]});
    a.dtype = DTypeOf<T>();
    a.x = X.Data();
    a.y = y;
    a.B = xs[0];
    a.L = xs[1];
    a.D = xs[2];
    a.coefs = CoefTable();
    a.stream = Ort::KernelContext(ctx).GetGPUComputeStream();
    const cuda::Status st = cuda::LaunchFFTMix(a);
    if (!st.ok()) {
      return Ort::Status((std::string(kDomain) + "::" + kOp + ": CUDA kernel failed at " + (st.where ? st.where : "?") +
                          ": " + (st.name ? st.name : "error") + " (" + (st.message ? st.message : "") + ")")
                             .c_str(),
                         ORT_EP_FAIL);
    }
    return Ort::Status{nullptr};
  }
  N6_CATCH_ALL(kOp)
}

}  // namespace

// fftmix/cpu.cc's shape inference ([B, L, 3D]).
OrtStatusPtr FFTMixInferShape(const OrtCustomOp* op, OrtShapeInferContext* ctx) noexcept;

void AppendFFTMixCudaOps(OpList& ops) {
  for (auto* op : {Ort::Custom::CreateLiteCustomOp(kOp, "CUDAExecutionProvider", &Compute<float>),
                   Ort::Custom::CreateLiteCustomOp(kOp, "CUDAExecutionProvider", &Compute<Ort::Float16_t>)}) {
    op->InferOutputShapeFn = &FFTMixInferShape;
    ops.push_back(op);
  }
}

}  // namespace n6
