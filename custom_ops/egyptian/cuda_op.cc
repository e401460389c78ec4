// EgyptianAttention on CUDAExecutionProvider: the onnxruntime glue of egyptian/cuda.cu
// (libn6ops_cuda.so). Same attribute and shape checks as the CPU kernel (egyptian/egyptian.h);
// the kernels are enqueued on onnxruntime's compute stream; failures come back as ORT errors.
#include <optional>

#include "common/elementwise.h"
#include "egyptian/egyptian.h"
#include "egyptian/egyptian_cuda.h"

namespace n6 {

egyptian::Attrs ReadEgyptianAttrs(const OrtKernelInfo* info);  // egyptian/cpu.cc

namespace {

constexpr const char* kOp = "EgyptianAttention";

template <class T>
struct EgyptianCuda {
  egyptian::Attrs attrs;

  EgyptianCuda(const OrtApi*, const OrtKernelInfo* info) : attrs(ReadEgyptianAttrs(info)) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& Q, const Ort::Custom::Tensor<T>& K,
                      const Ort::Custom::Tensor<T>& V, std::optional<const Ort::Custom::Tensor<int32_t>*> mask,
                      Ort::Custom::Tensor<T>& Y) {
    try {
      const Ort::Custom::Tensor<int32_t>* m = mask.has_value() ? *mask : nullptr;
      egyptian::Problem pr;
      const std::string err = egyptian::Resolve(attrs, Q.Shape(), K.Shape(), V.Shape(), m ? &m->Shape() : nullptr, &pr);
      if (!err.empty()) return OpError(kOp, err);
      if (pr.H > cuda::kEgyptianMaxHeads) {
        return OpError(kOp, "the CUDA kernel takes at most 64 heads, got num_heads=" + std::to_string(pr.H));
      }
      if (pr.dh > cuda::kEgyptianMaxHeadSize) {
        return OpError(kOp, "the CUDA kernel takes head sizes up to 128, got " + std::to_string(pr.dh));
      }
      T* y = Y.Allocate(Q.Shape());
      cuda::EgyptianArgs a;
      a.dtype = std::is_same<T, float>::value ? cuda::DType::kFloat32 : cuda::DType::kFloat16;
      a.q = Q.Data();
      a.k = K.Data();
      a.v = V.Data();
      a.mask = m ? m->Data() : nullptr;
      a.y = y;
      a.B = pr.B;
      a.L = pr.L;
      a.H = pr.H;
      a.dh = pr.dh;
      a.half = pr.half;
      a.scale = pr.scale;
      for (int64_t h = 0; h < pr.H; ++h) a.kinds[h] = pr.kinds[h];
      a.stream = Ort::KernelContext(ctx).GetGPUComputeStream();
      const cuda::Status st = cuda::LaunchEgyptian(a);
      if (!st.ok()) {
        return Ort::Status((std::string(kDomain) + "::" + kOp + ": CUDA kernel failed at " +
                            (st.where ? st.where : "?") + ": " + (st.name ? st.name : "error") + " (" +
                            (st.message ? st.message : "") + ")")
                               .c_str(),
                           ORT_EP_FAIL);
      }
      return Ort::Status{nullptr};
    }
    N6_CATCH_ALL(kOp)
  }
};

}  // namespace

void AppendEgyptianAttentionCudaOps(OpList& ops) {
  for (auto* op : {Ort::Custom::CreateLiteCustomOp<EgyptianCuda<float>>(kOp, "CUDAExecutionProvider"),
                   Ort::Custom::CreateLiteCustomOp<EgyptianCuda<Ort::Float16_t>>(kOp, "CUDAExecutionProvider")}) {
    op->InferOutputShapeFn = &InferSameTypeAndShape;
    ops.push_back(op);
  }
}

}  // namespace n6
