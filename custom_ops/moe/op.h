// The onnxruntime side of MoE, shared by the CPU kernel (moe/cpu.cc) and the CUDA glue
// (moe/cuda_glue.cc): an OrtCustomOp with 8 optional inputs that reads its inputs from the raw
// kernel context.
//
// Why not the lite API's typed Compute(): it builds an Ort::Custom::Tensor for every input below
// the node's input count, and an absent optional input in the middle (e.g. b1 = "" with W2 given)
// has no OrtValue, which the lite Tensor constructor dereferences. Here an absent input is a null
// OrtValue checked before use; X, logits, W1, W2 are required (clear error otherwise).
#pragma once

#include <string>
#include <vector>

#include "common/ort_glue.h"
#include "moe/moe.h"

namespace n6 {
namespace moe {

inline constexpr const char* kOpName = "MoE";
enum Input : int { kX = 0, kLogits, kW1, kB1, kW2, kB2, kW3, kImportance, kNumInputs };

struct Inputs {
  const void* data[kNumInputs] = {};  // null: absent
  std::vector<int64_t> shape[kNumInputs];
  bool present(int i) const { return data[i] != nullptr; }
};

// The node's attributes; absent ones keep their defaults (moe::Attrs).
inline void ReadAttrs(const OrtKernelInfo* info, Attrs& a) {
  ReadAttr(info, "routing", &a.routing);
  ReadAttr(info, "activation", &a.activation);
  ReadAttr(info, "k", &a.k);
  ReadAttr(info, "normalize", &a.normalize);
  ReadAttr(info, "group", &a.group);
  ReadAttr(info, "drop", &a.drop);
}

// Backend::Run<kHalf>(OrtKernelContext*, const Problem&, const Inputs&, void* y) -> Ort::Status,
// called after validation with Y [N, D] allocated; Backend::Configure(Attrs&) when a kernel is
// created; Backend::kProvider. AppendOps<Backend>(ops) registers the float32 and float16 kernels.
template <class Backend, bool kHalf>
struct Op : Ort::Custom::OrtLiteCustomOp {
  struct Kernel {
    Attrs attrs;
  };

  Op() : OrtLiteCustomOp(kOpName, Backend::kProvider, {}) {
    constexpr ONNXTensorElementDataType kT =
        kHalf ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    input_types_ = {kT, kT, kT, kT, kT, kT, kT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
    output_types_ = {kT};
    OrtCustomOp::CreateKernel = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info) -> void* {
      auto* k = new Kernel();
      ReadAttrs(info, k->attrs);
      Backend::Configure(k->attrs);  // backend options (e.g. the CUDA tensor-core switch)
      return k;
    };
    OrtCustomOp::KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatusPtr {
      return Compute(static_cast<Kernel*>(kernel)->attrs, ctx).release();
    };
    OrtCustomOp::KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    OrtCustomOp::InferOutputShapeFn = InferSameTypeAndShape;  // Y: X's type and shape [N, D]
  }

  static Ort::Status Compute(const Attrs& attrs, OrtKernelContext* ctx) {
    try {
      Ort::KernelContext kc(ctx);
      const size_t count = kc.GetInputCount();
      Inputs in;
      for (int i = 0; i < kNumInputs; ++i) {
        if (static_cast<size_t>(i) >= count) break;
        Ort::ConstValue v = kc.GetInput(i);
        if (static_cast<const OrtValue*>(v) == nullptr) continue;
        in.shape[i] = v.GetTensorTypeAndShapeInfo().GetShape();
        in.data[i] = v.GetTensorRawData();
        if (!in.data[i]) in.data[i] = &in;  // a tensor with no elements: present, never read
      }
      static const char* const names[kNumInputs] = {"X", "logits", "W1", "b1", "W2", "b2", "W3", "importance"};
      for (int i : {kX, kLogits, kW1, kW2})
        if (!in.present(i)) return OpError(kOpName, std::string("the input ") + names[i] + " is required");
      auto opt = [&](int i) { return in.present(i) ? &in.shape[i] : nullptr; };
      Problem pr;
      const std::string err = Resolve(attrs, in.shape[kX], in.shape[kLogits], in.shape[kW1], opt(kB1), in.shape[kW2],
                                      opt(kB2), opt(kW3), opt(kImportance), &pr);
      if (!err.empty()) return OpError(kOpName, err);
      Ort::UnownedValue y = kc.GetOutput(0, std::vector<int64_t>{pr.N, pr.D});
      if (pr.N == 0 || pr.D == 0) return Ort::Status{nullptr};
      return Backend::template Run<kHalf>(ctx, pr, in, y.GetTensorMutableRawData());
    }
    N6_CATCH_ALL(kOpName)
  }
};

template <class Backend>
void AppendOps(OpList& ops) {
  ops.push_back(new Op<Backend, false>());
  ops.push_back(new Op<Backend, true>());
}

}  // namespace moe
}  // namespace n6
