// The onnxruntime side of every n6onnx op, written once: what an op's glue (<op>/op.h,
// common/elementwise_op.h) needs between onnxruntime and a backend (CPU kernels, or the CUDA
// launchers of <op>/cuda.cu):
//   * the domain, the provider names and the op list that register.cc hands to onnxruntime;
//   * errors: OpError ("n6onnx::<op>: <message>"), CudaLaunchError (a failed CUDA launch) and
//     N6_CATCH_ALL (no exception crosses the C boundary: every Compute returns an Ort::Status);
//   * attributes: ReadAttr for int / float / string / ints (absent: false, the default stays);
//   * the element-type map of the CUDA launchers (DTypeOf<T>);
//   * shape inference from the first input (InferSameTypeAndShape, InferFromInput);
//   * op creation (MakeOp, MakeKernelOp) with the shape-inference function installed.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT  // never link libonnxruntime; the API comes from RegisterCustomOps
#endif
#include <onnxruntime_cxx_api.h>
#include <onnxruntime_lite_custom_op.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "common/cuda_launch.h"
#include "common/shape.h"

static_assert(ORT_API_VERSION >= 17,
              "n6ops needs onnxruntime headers with ORT_API_VERSION >= 17 (onnxruntime >= 1.17)");

namespace n6 {

inline constexpr const char* kDomain = "n6onnx";
inline constexpr const char* kCpuProvider = "CPUExecutionProvider";
inline constexpr const char* kCudaProvider = "CUDAExecutionProvider";

using OpList = std::vector<Ort::Custom::OrtLiteCustomOp*>;

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------
inline Ort::Status OpError(const char* op, const std::string& msg, OrtErrorCode code = ORT_FAIL) {
  return Ort::Status((std::string(kDomain) + "::" + op + ": " + msg).c_str(), code);
}

// A failed CUDA launch (cuda::Status from a launcher), with optional details of the call.
inline Ort::Status CudaLaunchError(const char* op, const cuda::Status& st, const std::string& detail = "") {
  std::string msg = std::string("CUDA kernel failed at ") + (st.where ? st.where : "?") + ": " +
                    (st.name ? st.name : "error") + " (" + (st.message ? st.message : "") + ")";
  if (!detail.empty()) msg += "; " + detail;
  return OpError(op, msg, ORT_EP_FAIL);
}

inline Ort::Status FromCuda(const char* op, const cuda::Status& st, const std::string& detail = "") {
  return st.ok() ? Ort::Status{nullptr} : CudaLaunchError(op, st, detail);
}

#define N6_CATCH_ALL(op)                                                                   \
  catch (const Ort::Exception& e) {                                                        \
    return ::n6::OpError(op, e.what());                                                    \
  }                                                                                        \
  catch (const std::exception& e) {                                                        \
    return ::n6::OpError(op, e.what());                                                    \
  }                                                                                        \
  catch (...) {                                                                            \
    return ::n6::OpError(op, "unknown error");                                             \
  }

// CPU kernels: fn(data, task) for task in [0, tasks) on the session's intra-op thread pool
// (KernelContext_ParallelFor, which honours intra_op_num_threads); a single task runs inline.
inline Ort::Status RunParallel(OrtKernelContext* ctx, void (*fn)(void*, size_t), size_t tasks, void* data) {
  if (tasks == 0) return Ort::Status{nullptr};
  if (tasks == 1) {
    fn(data, 0);
    return Ort::Status{nullptr};
  }
  return Ort::Status{Ort::GetApi().KernelContext_ParallelFor(ctx, fn, tasks, 0, data)};
}

// fn(plan, task) for task in [0, tasks), like RunParallel: for kernels whose task function takes
// their plan (e.g. an ISA clone picked at run time).
template <class Plan>
Ort::Status RunPlanTasks(OrtKernelContext* ctx, void (*fn)(const Plan&, size_t), const Plan& plan, size_t tasks) {
  struct Job {
    const Plan* plan;
    void (*fn)(const Plan&, size_t);
  } job{&plan, fn};
  auto run = [](void* data, size_t task) {
    const Job& j = *static_cast<const Job*>(data);
    j.fn(*j.plan, task);
  };
  return RunParallel(ctx, run, tasks, &job);
}

// onnxruntime's compute stream for the node (a cudaStream_t; CUDAExecutionProvider kernels only).
inline void* GpuStream(OrtKernelContext* ctx) { return Ort::KernelContext(ctx).GetGPUComputeStream(); }

// ------------------------------------------------------------------------------------------
// Element types of the CUDA launchers
// ------------------------------------------------------------------------------------------
template <class T>
struct DTypeMap;
template <>
struct DTypeMap<float> {
  static constexpr cuda::DType kValue = cuda::DType::kFloat32;
};
template <>
struct DTypeMap<Ort::Float16_t> {
  static constexpr cuda::DType kValue = cuda::DType::kFloat16;
};
template <>
struct DTypeMap<Ort::BFloat16_t> {
  static constexpr cuda::DType kValue = cuda::DType::kBFloat16;
};
template <class T>
inline constexpr cuda::DType DTypeOf = DTypeMap<T>::kValue;

// ------------------------------------------------------------------------------------------
// Attributes (the C API: an absent optional attribute is a status, not an exception)
// ------------------------------------------------------------------------------------------
namespace detail {
inline bool Found(OrtStatus* st) {
  if (st == nullptr) return true;
  Ort::GetApi().ReleaseStatus(st);
  return false;
}
}  // namespace detail

// Each returns true and sets *out when the node has the attribute (of that type); else false and
// *out is unchanged.
inline bool ReadAttr(const OrtKernelInfo* info, const char* name, int64_t* out) {
  return detail::Found(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, out));
}
inline bool ReadAttr(const OrtKernelInfo* info, const char* name, float* out) {
  return detail::Found(Ort::GetApi().KernelInfoGetAttribute_float(info, name, out));
}
inline bool ReadAttr(const OrtKernelInfo* info, const char* name, std::string* out) {
  const OrtApi& api = Ort::GetApi();
  size_t n = 0;
  if (!detail::Found(api.KernelInfoGetAttribute_string(info, name, nullptr, &n))) return false;
  std::string s(n, '\0');  // n counts the terminating NUL
  if (!detail::Found(api.KernelInfoGetAttribute_string(info, name, s.data(), &n))) return false;
  s.resize(n > 0 ? n - 1 : 0);
  *out = std::move(s);
  return true;
}
inline bool ReadAttr(const OrtKernelInfo* info, const char* name, std::vector<int64_t>* out) {
  const OrtApi& api = Ort::GetApi();
  size_t n = 0;
  if (!detail::Found(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &n))) return false;
  std::vector<int64_t> v(n);
  if (n > 0 && !detail::Found(api.KernelInfoGetAttributeArray_int64(info, name, v.data(), &n))) return false;
  *out = std::move(v);
  return true;
}

// ------------------------------------------------------------------------------------------
// Shape inference
// ------------------------------------------------------------------------------------------
// Installed directly as the C-level OrtCustomOp::InferOutputShapeFn because onnxruntime runs
// the function of only ONE of the same-named ops (whichever was registered first) for all
// dtypes, so the output type must come from the actual input, not from the op's template type.
// Never fails: onnxruntime ignores the returned status, so problems are reported at run time.
//
// Output 0 gets input 0's element type and the dims that Rule(dims, syms) leaves (symbolic
// names kept, "" for none); Rule returns false to leave the output uninferred. Input 0 of
// unknown rank (reported as rank 0) is never inferred.
template <bool (*Rule)(std::vector<int64_t>& dims, std::vector<const char*>& syms)>
OrtStatusPtr InferFromInput(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept {
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* in = nullptr;  // owned by ctx
  OrtTensorTypeAndShapeInfo* out = nullptr;
  OrtStatus* st = nullptr;
  auto ok = [&st](OrtStatus* s) {
    st = s;
    return s == nullptr;
  };
  size_t count = 0;
  size_t rank = 0;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (ok(api.ShapeInferContext_GetInputCount(ctx, &count)) && count >= 1 &&
      ok(api.ShapeInferContext_GetInputTypeShape(ctx, 0, &in)) && in != nullptr &&
      ok(api.GetTensorElementType(in, &type)) && ok(api.GetDimensionsCount(in, &rank)) && rank > 0) {
    std::vector<int64_t> dims(rank);
    std::vector<const char*> syms(rank, nullptr);
    if (ok(api.GetDimensions(in, dims.data(), rank)) && ok(api.GetSymbolicDimensions(in, syms.data(), rank)) &&
        Rule(dims, syms) && ok(api.CreateTensorTypeAndShapeInfo(&out)) && ok(api.SetTensorElementType(out, type)) &&
        ok(api.SetDimensions(out, dims.data(), dims.size())) &&
        ok(api.SetSymbolicDimensions(out, syms.data(), syms.size()))) {
      ok(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    }
  }
  if (out) api.ReleaseTensorTypeAndShapeInfo(out);
  if (st) api.ReleaseStatus(st);
  return nullptr;
}

// Same shape: every dim known or named (an unknown, unnamed dim is not guessed).
inline bool SameShapeRule(std::vector<int64_t>& dims, std::vector<const char*>& syms) {
  for (size_t i = 0; i < dims.size(); ++i) {
    const bool named = syms[i] != nullptr && syms[i][0] != '\0';
    if (!named && dims[i] < 0) return false;
    if (syms[i] == nullptr) syms[i] = "";
  }
  return true;
}

// Y: X's element type and shape.
inline constexpr auto InferSameTypeAndShape = &InferFromInput<&SameShapeRule>;

// ------------------------------------------------------------------------------------------
// Op creation
// ------------------------------------------------------------------------------------------
using InferFn = OrtStatusPtr (*)(const OrtCustomOp*, OrtShapeInferContext*) noexcept;

// A lite op from a Compute function.
template <class... Args>
Ort::Custom::OrtLiteCustomOp* MakeOp(const char* name, Ort::Status (*compute)(Args...), const char* provider,
                                     InferFn infer = InferSameTypeAndShape) {
  Ort::Custom::OrtLiteCustomOp* op = Ort::Custom::CreateLiteCustomOp(name, provider, compute);
  op->InferOutputShapeFn = infer;
  return op;
}

// A lite op from a kernel struct (constructor (const OrtApi*, const OrtKernelInfo*), Compute).
template <class Kernel>
Ort::Custom::OrtLiteCustomOp* MakeKernelOp(const char* name, const char* provider,
                                           InferFn infer = InferSameTypeAndShape) {
  Ort::Custom::OrtLiteCustomOp* op = Ort::Custom::CreateLiteCustomOp<Kernel>(name, provider);
  op->InferOutputShapeFn = infer;
  return op;
}

// onnxruntime's lite ops read every listed input, an unbound optional one (an empty name)
// included, as a value: a null one would be dereferenced (a crash). A guard runs first:
// Check(ctx) answers nullptr (go on to the op's Compute) or the error to return instead.
template <class Kernel, OrtStatusPtr (*Check)(OrtKernelContext*)>
struct InputGuard {
  static inline decltype(OrtCustomOp::KernelComputeV2) inner = nullptr;
  static OrtStatusPtr ORT_API_CALL Compute(void* kernel, OrtKernelContext* ctx) {
    if (OrtStatusPtr st = Check(ctx)) return st;
    return inner(kernel, ctx);
  }
};

// MakeKernelOp with Check run before every Compute.
template <class Kernel, OrtStatusPtr (*Check)(OrtKernelContext*)>
Ort::Custom::OrtLiteCustomOp* MakeGuardedKernelOp(const char* name, const char* provider,
                                                  InferFn infer = InferSameTypeAndShape) {
  Ort::Custom::OrtLiteCustomOp* op = MakeKernelOp<Kernel>(name, provider, infer);
  InputGuard<Kernel, Check>::inner = op->KernelComputeV2;
  op->KernelComputeV2 = &InputGuard<Kernel, Check>::Compute;
  return op;
}

// The listed inputs (*count) and the first of [first, count) that is unbound (*unbound, -1: none).
inline OrtStatusPtr FirstUnbound(OrtKernelContext* ctx, size_t first, size_t* count, int64_t* unbound) {
  const OrtApi& api = Ort::GetApi();
  *unbound = -1;
  if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, count)) return st;
  for (size_t i = first; i < *count; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api.KernelContext_GetInput(ctx, i, &v)) return st;
    if (v == nullptr) {
      *unbound = static_cast<int64_t>(i);
      break;
    }
  }
  return nullptr;
}

}  // namespace n6
