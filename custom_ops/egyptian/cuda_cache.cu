// EgyptianAttention CUDA, cache mode (PastKey / PastValue bound): the node appends the new keys /
// values to its own packed cache (layout: egyptian/egyptian.h, CacheLayout) and attends.
//   1. PresentKernel writes the presents, K and V in one grid-stride launch: each present row is
//      a kept past row or a new row (the copy a Concat / Slice graph did, in one kernel).
//   2. Decode steps (Lq < 4): the flash-decoding kernel (egyptian/cuda_decode.cu) reads every key
//      row in place, from the packed past or the new rows (CacheView::Row): no copy of the cache.
//   3. Longer calls (a prompt or a chunk after a past): GatherKernel lays the rows out as plain
//      full-length K / V [B, P + Lq, Hkv*dh] in stream-ordered scratch (rows a group does not keep
//      are zeros: no query of that group can see them) and the plain kernels run on it.
// Both kernels copy raw words: 16-byte vectors when every row is a whole number of them and the
// tensors are 16-byte aligned (a row of dh elements is then dh * size / 16 vectors), else elements.
#include <algorithm>

#include "egyptian/cuda_params.cuh"
#include "egyptian/egyptian_cuda.h"

namespace n6 {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct Copy {
  const void* k;   // new rows [B, Lq, Hkv*dh]
  const void* v;
  const void* pk;  // packed past [B, S, dh] (null when S = 0)
  const void* pv;
  void* ok;        // presents [B, Sout, dh] (either may be null)
  void* ov;
  void* ak;        // GatherKernel: full-length K / V [B, P + Lq, Hkv*dh]
  void* av;
  int64_t B, Lq, Hkv, dh, P, S, Sout;
  int64_t g0[3], n[3], rows[3], base[3], keep[3], obase[3];

  // element offset of key row `a` (absolute position) of group g (kind k), or -1 when the past
  // does not keep it; *past: whether it lies in the past
  __device__ __forceinline__ int64_t Source(int64_t b, int64_t a, int64_t g, int k, bool* past) const {
    if (a >= P) {
      *past = false;
      return ((b * Lq + (a - P)) * Hkv + g) * dh;
    }
    *past = true;
    const int64_t t = k == 1 ? a - (P - rows[1]) : a;
    if (t < 0 || t >= rows[k]) return -1;
    return (b * S + base[k] + t * n[k] + (g - g0[k])) * dh;
  }
};

// the kind of KV group g (groups ordered full, local, global)
__device__ __forceinline__ int KindOf(const Copy& c, int64_t g) {
  return (c.n[2] > 0 && g >= c.g0[2]) ? 2 : ((c.n[1] > 0 && g >= c.g0[1]) ? 1 : 0);
}

// element e of the presents: [K | V] x [B, Sout, dh]
template <class W>
__global__ void __launch_bounds__(kThreads) PresentKernel(const Copy c) {
  const int64_t total = c.B * c.Sout * c.dh;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < 2 * total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int part = e >= total ? 1 : 0;
    W* out = static_cast<W*>(part ? c.ov : c.ok);
    if (!out) continue;
    const int64_t x = e - part * total, ch = x % c.dh, r = (x / c.dh) % c.Sout, b = x / (c.dh * c.Sout);
    int k = 0;
    for (int kk = 1; kk < 3; ++kk) {
      if (c.n[kk] > 0 && r >= c.obase[kk]) k = kk;
    }
    const int64_t j = r - c.obase[k], gi = j % c.n[k];
    const int64_t a = j / c.n[k] + (k == 1 ? c.P + c.Lq - c.keep[1] : 0);  // absolute position
    bool past;
    const int64_t o = c.Source(b, a, c.g0[k] + gi, k, &past);
    const W* src = static_cast<const W*>(past ? (part ? c.pv : c.pk) : (part ? c.v : c.k));
    out[x] = o < 0 ? W{} : src[o + ch];
  }
}

// element e of the full-length K / V: [K | V] x [B, P + Lq, Hkv, dh]
template <class W>
__global__ void __launch_bounds__(kThreads) GatherKernel(const Copy c) {
  const int64_t A = c.P + c.Lq, total = c.B * A * c.Hkv * c.dh;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < 2 * total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int part = e >= total ? 1 : 0;
    const int64_t x = e - part * total, ch = x % c.dh, g = (x / c.dh) % c.Hkv, a = (x / (c.dh * c.Hkv)) % A;
    const int64_t b = x / (c.dh * c.Hkv * A);
    bool past;
    const int64_t o = c.Source(b, a, g, KindOf(c, g), &past);
    const W* src = static_cast<const W*>(past ? (part ? c.pv : c.pk) : (part ? c.v : c.k));
    static_cast<W*>(part ? c.av : c.ak)[x] = o < 0 ? W{} : src[o + ch];
  }
}

template <class W>
Status LaunchCopy(void (*kernel)(Copy), const Copy& c, int64_t items, cudaStream_t stream) {
  if (items <= 0) return Status{};
  DeviceInfo dev;
  Status st = CurrentDevice(&dev);
  if (!st.ok()) return st;
  const int64_t cap = static_cast<int64_t>(dev.sms) * 16;
  const int64_t blocks = std::min((items + kThreads - 1) / kThreads, cap);
  return CheckedLaunch(kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, c);
}

template <class W>
Status Copies(Copy c, bool gather, int64_t elem, cudaStream_t stream) {
  const auto aligned = [](const void* ptr) { return ptr == nullptr || IsAligned16(ptr); };
  const bool vec = (c.dh * elem) % 16 == 0 && aligned(c.k) && aligned(c.v) && aligned(c.pk) && aligned(c.pv) &&
                   aligned(c.ok) && aligned(c.ov) && aligned(c.ak) && aligned(c.av);
  if (vec) c.dh = c.dh * elem / 16;  // rows in 16-byte units
  const int64_t rows = gather ? c.B * (c.P + c.Lq) * c.Hkv : c.B * c.Sout;
  if (vec) return LaunchCopy<uint4>(gather ? &GatherKernel<uint4> : &PresentKernel<uint4>, c, 2 * rows * c.dh, stream);
  return LaunchCopy<W>(gather ? &GatherKernel<W> : &PresentKernel<W>, c, 2 * rows * c.dh, stream);
}

template <class W>
Status Run(const EgyptianArgs& a, const EgyptianCache& ec) {
  const cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  Copy c{};
  c.k = a.k;
  c.v = a.v;
  c.pk = ec.pk;
  c.pv = ec.pv;
  c.ok = ec.ok;
  c.ov = ec.ov;
  c.B = a.B;
  c.Lq = a.Lq;
  c.Hkv = a.Hkv;
  c.dh = a.dh;
  c.P = ec.P;
  c.S = ec.S;
  c.Sout = ec.Sout;
  for (int k = 0; k < 3; ++k) {
    c.g0[k] = ec.g0[k];
    c.n[k] = ec.n[k];
    c.rows[k] = ec.rows[k];
    c.base[k] = ec.base[k];
    c.keep[k] = ec.keep[k];
    c.obase[k] = ec.obase[k];
  }
  if (ec.ok || ec.ov) {
    Status st = Copies<W>(c, false, sizeof(W), stream);
    if (!st.ok()) return st;
  }
  if (a.B == 0 || a.Lq == 0 || a.H == 0 || a.dh == 0) return Status{};
  EgyptianArgs d = a;
  if (a.Lq < egy::kDecodeBelow) {  // in place
    d.cache = &ec;
    return LaunchEgyptian(d);
  }
  const size_t n = static_cast<size_t>(a.B * (ec.P + a.Lq) * a.Hkv * a.dh);
  void* buf = nullptr;
  Status st = ScratchAlloc(&buf, 2 * n * sizeof(W), stream);
  if (!st.ok()) return st;
  c.ok = c.ov = nullptr;
  c.ak = buf;
  c.av = static_cast<W*>(buf) + n;
  st = Copies<W>(c, true, sizeof(W), stream);
  if (st.ok()) {
    d.k = c.ak;
    d.v = c.av;
    d.cache = nullptr;
    st = LaunchEgyptian(d);
  }
  const Status fr = ScratchFree(buf, stream);
  return st.ok() ? fr : st;
}

}  // namespace

Status LaunchEgyptianCache(const EgyptianArgs& a, const EgyptianCache& c) {
  if (a.Hkv < 1 || a.H % a.Hkv != 0 || a.Lk != c.P + a.Lq || !a.causal || a.dh < 1) {
    return InvalidArgument("LaunchEgyptianCache", "inconsistent Lq, Lk, past length, num_heads, kv_heads");
  }
  if (a.Lq > 0 && a.B > 0 && (!a.k || !a.v)) return InvalidArgument("LaunchEgyptianCache", "null pointer");
  if (c.S > 0 && a.B > 0 && (!c.pk || !c.pv)) return InvalidArgument("LaunchEgyptianCache", "null pointer");
  switch (a.dtype) {
    case DType::kFloat32: return Run<float>(a, c);
    case DType::kFloat16: return Run<uint16_t>(a, c);
    default: break;
  }
  return InvalidArgument("LaunchEgyptianCache", "unsupported element type (float32 and float16 only)");
}

}  // namespace cuda
}  // namespace n6
