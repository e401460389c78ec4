// Entry point of libn6ops.so and libn6ops_cuda.so: the only exported symbol is
// RegisterCustomOps, which onnxruntime calls from SessionOptions.register_custom_ops_library(path).
//
// libn6ops.so registers the CPU kernels. libn6ops_cuda.so is built from the same file with
// N6_WITH_CUDA=1 and registers the CPU kernels and the CUDAExecutionProvider kernels
// (register_cuda.cc) in the same domain, so a session with CUDA and CPU providers finds a kernel
// of ours wherever onnxruntime places a node.
//
// The library does not link libonnxruntime. It negotiates the OrtApi version with the
// runtime that loaded it: min(runtime minor version, ORT_API_VERSION of the headers it
// was built with), falling back to lower versions down to kMinApiVersion.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/ort_glue.h"

#ifndef N6_WITH_CUDA
#define N6_WITH_CUDA 0
#endif
#if N6_WITH_CUDA
#define N6_LIBRARY_NAME "libn6ops_cuda.so"
#else
#define N6_LIBRARY_NAME "libn6ops.so"
#endif

namespace n6 {
// The CPU kernels: <op>/cpu.cc.
void AppendPhi6Ops(OpList& ops);
void AppendZetaLn2Ops(OpList& ops);
void AppendFFTMixOps(OpList& ops);              // fftmix/cpu.cc
void AppendEgyptianAttentionOps(OpList& ops);   // egyptian/cpu.cc
void AppendMoEOps(OpList& ops);                 // moe/cpu.cc
void AppendCudaOps(OpList& ops);                // libn6ops_cuda.so only: register_cuda.cc
}  // namespace n6

namespace {

// KernelComputeV2 (16), custom-op shape inference and KernelContext_ParallelFor (17).
constexpr uint32_t kMinApiVersion = 17;

struct Registry {
  Ort::CustomOpDomain domain{n6::kDomain};
  n6::OpList ops;
};

// Built once and intentionally never destroyed: every session that registered the domain
// keeps raw pointers to it and to the op objects for the lifetime of the process.
Registry& GetRegistry(uint32_t api_version) {
  static Registry* registry = [api_version] {
    auto* r = new Registry();
    n6::AppendPhi6Ops(r->ops);
    n6::AppendZetaLn2Ops(r->ops);
    n6::AppendFFTMixOps(r->ops);
    n6::AppendEgyptianAttentionOps(r->ops);
    n6::AppendMoEOps(r->ops);
#if N6_WITH_CUDA
    n6::AppendCudaOps(r->ops);
#endif
    for (Ort::Custom::OrtLiteCustomOp* op : r->ops) {
      // The lite header stamps its own ORT_API_VERSION; advertise the negotiated one so an
      // older runtime does not reject the ops as "unsupported version".
      op->version = api_version;
      r->domain.Add(op);
    }
    return r;
  }();
  return *registry;
}

// "1.32.0" -> 32; 0 if unparsable.
uint32_t RuntimeMinorVersion(const char* version) {
  if (!version) return 0;
  const char* dot = std::strchr(version, '.');
  if (!dot) return 0;
  char* end = nullptr;
  const unsigned long minor = std::strtoul(dot + 1, &end, 10);
  if (end == dot + 1) return 0;
  return static_cast<uint32_t>(minor);
}

OrtStatus* ErrorStatus(const OrtApiBase* api_base, const OrtApi* api, OrtErrorCode code, const std::string& msg) {
  const std::string full = "n6ops (" N6_LIBRARY_NAME "): " + msg;
  if (!api && api_base) api = api_base->GetApi(1);  // CreateStatus exists since API 1
  if (api) return api->CreateStatus(code, full.c_str());
  std::fprintf(stderr, "%s\n", full.c_str());
  return nullptr;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (!api_base || !options) return ErrorStatus(api_base, nullptr, ORT_INVALID_ARGUMENT, "null argument");

  const char* runtime_version = api_base->GetVersionString ? api_base->GetVersionString() : nullptr;
  uint32_t want = RuntimeMinorVersion(runtime_version);
  if (want == 0 || want > ORT_API_VERSION) want = ORT_API_VERSION;

  const OrtApi* api = nullptr;
  uint32_t version = want;
  for (; version >= kMinApiVersion; --version) {
    if ((api = api_base->GetApi(version)) != nullptr) break;
  }
  if (!api) {
    return ErrorStatus(api_base, nullptr, ORT_FAIL,
                       std::string("onnxruntime ") + (runtime_version ? runtime_version : "(unknown version)") +
                           " does not provide OrtApi version " + std::to_string(kMinApiVersion) +
                           " or newer; onnxruntime >= 1.17 is required");
  }
  Ort::InitApi(api);

  try {
    Registry& registry = GetRegistry(version);
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(registry.domain);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return ErrorStatus(api_base, api, e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return ErrorStatus(api_base, api, ORT_FAIL, e.what());
  } catch (...) {
    return ErrorStatus(api_base, api, ORT_FAIL, "unknown error while registering custom ops");
  }
}
