// EgyptianAttention CUDA, cache mode (PastKey / PastValue bound): the node appends the new keys /
// values to its own packed cache (layout: egyptian/cache_geometry.h) and attends.
//   Decode steps (Lq < 4): one launch of the flash-decoding kernel (egyptian/cuda_decode.cu) reads
//     every key row in place, from the packed past or the new rows (CacheView::Row), and its spare
//     blocks write the presents (egyptian/cuda_cache.cuh): no copy of the cache is read back.
//   Longer calls (a prompt or a chunk after a past): PresentKernel writes the presents, then
//     GatherKernel lays the rows out as plain full-length K / V [B, P + Lq, Hkv*dh] in
//     stream-ordered scratch and the plain kernels run on it.
#include <algorithm>

#include "egyptian/cuda_cache.cuh"

namespace n6 {
namespace cuda {
namespace {

using egy::CacheCopy;
constexpr int kThreads = 256;

// The presents (kGather false) or the full-length K / V (true), one item per thread per step.
template <class W, bool kGather>
__global__ void __launch_bounds__(kThreads) CopyKernel(const CacheCopy c) {
  const int64_t n = kGather ? c.GatherItems() : c.PresentItems();
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    if constexpr (kGather) {
      egy::GatherItem<W>(c, e);
    } else {
      egy::PresentItem<W>(c, e);
    }
  }
}

template <class W>
Status Launch(void (*kernel)(CacheCopy), const CacheCopy& c, int64_t items, cudaStream_t stream) {
  if (items <= 0) return Status{};
  DeviceInfo dev;
  Status st = CurrentDevice(&dev);
  if (!st.ok()) return st;
  const int64_t cap = static_cast<int64_t>(dev.sms) * 16;
  const int64_t blocks = std::min((items + kThreads - 1) / kThreads, cap);
  return CheckedLaunch(kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, c);
}

template <class S, bool kGather>
Status Copies(const CacheCopy& c, cudaStream_t stream) {
  const int64_t items = kGather ? c.GatherItems() : c.PresentItems();
  if (c.vec) return Launch<uint4>(&CopyKernel<uint4, kGather>, c, items, stream);
  return Launch<S>(&CopyKernel<S, kGather>, c, items, stream);
}

template <class S>
Status Run(const EgyptianArgs& a, const EgyptianCache& ec) {
  const cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  const egy::CacheView view{ec.pk, ec.pv, a.Lq, a.Hkv, ec.geo};
  const bool empty = a.B == 0 || a.Lq == 0 || a.H == 0 || a.dh == 0;
  if (!empty && a.Lq < egy::kDecodeBelow) {  // in place; the decode launch writes the presents too
    EgyptianArgs d = a;
    d.cache = &ec;
    return LaunchEgyptian(d);
  }
  if (ec.ok || ec.ov) {
    Status st = Copies<S, false>(egy::MakeCopy(view, a.k, a.v, ec.ok, ec.ov, nullptr, nullptr, a.B, a.dh, sizeof(S)),
                                 stream);
    if (!st.ok()) return st;
  }
  if (empty) return Status{};
  const size_t n = static_cast<size_t>(a.B * (ec.geo.P + a.Lq) * a.Hkv * a.dh);
  void* buf = nullptr;
  Status st = ScratchAlloc(&buf, 2 * n * sizeof(S), stream);
  if (!st.ok()) return st;
  S* ak = static_cast<S*>(buf);
  st = Copies<S, true>(egy::MakeCopy(view, a.k, a.v, nullptr, nullptr, ak, ak + n, a.B, a.dh, sizeof(S)), stream);
  if (st.ok()) {
    EgyptianArgs d = a;
    d.k = ak;
    d.v = ak + n;
    d.cache = nullptr;
    st = LaunchEgyptian(d);
  }
  const Status fr = ScratchFree(buf, stream);
  return st.ok() ? fr : st;
}

}  // namespace

Status LaunchEgyptianCache(const EgyptianArgs& a, const EgyptianCache& c) {
  if (a.Hkv < 1 || a.H % a.Hkv != 0 || a.Lk != c.geo.P + a.Lq || !a.causal || a.dh < 1) {
    return InvalidArgument("LaunchEgyptianCache", "inconsistent Lq, Lk, past length, num_heads, kv_heads");
  }
  if (a.Lq > 0 && a.B > 0 && (!a.k || !a.v)) return InvalidArgument("LaunchEgyptianCache", "null pointer");
  if (c.geo.S > 0 && a.B > 0 && (!c.pk || !c.pv)) return InvalidArgument("LaunchEgyptianCache", "null pointer");
  switch (a.dtype) {
    case DType::kFloat32: return Run<float>(a, c);
    case DType::kFloat16: return Run<uint16_t>(a, c);
    default: break;
  }
  return InvalidArgument("LaunchEgyptianCache", "unsupported element type (float32 and float16 only)");
}

}  // namespace cuda
}  // namespace n6
