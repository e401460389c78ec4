// EgyptianAttention CUDA, calls with few queries (decode steps, Lq < kDecodeBelow): flash decoding
// over every head kind (full, local and global heads alike).
//
// Work units: the query heads of one KV head and one kind (with grouped-query attention a KV group
// is all of one kind), at most kMaxRows query rows (heads x queries) per unit: every K / V row a
// unit needs is read once for all its query heads. The keys a unit's queries can see (full: up to
// the last query; local: the last window; global: the sinks and the queries' own keys) are cut into
// splits of `chunk` keys, one block of kWarps warps per (batch, unit, split), so a long context
// spreads over the whole device instead of one block per head. In a block each lane owns 8
// channels of the head (16-byte loads: 8 float16 / two float4) and, with the DH / 8 lanes of its
// key slot, one key at a time; scores are dot products finished with shuffles inside the slot,
// and the online softmax (running max, sum, rescaled output) runs per lane in fp32. The slots of a
// warp, then the warps of a block, merge their partial (max, sum, output) with shuffles and
// shared memory. A unit of one split writes Y directly; the splits of the others write their
// partials to the stream's workspace (common/cuda_helpers.cuh) and count themselves in: the last
// split of a unit to finish merges the unit's partials (one warp per query row), so one launch
// does the whole step.
// Same keys, masks and causal offset as the prefill kernels (Params::KeyLo / KeyHi and the global
// rule of egyptian/egyptian.h), truncated caches in key-index space included. Cache mode
// (p.cached): the same keys in absolute positions, each row read in place from the packed past or
// the new rows (CacheView::Row), so a step with a shrunk cache reads no more than it attends to;
// the blocks after the attention's write the presents (egyptian/cuda_cache.cuh) in the same launch.
#include <algorithm>

#include "egyptian/cuda_cache.cuh"

namespace n6 {
namespace cuda {
namespace egy {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxRows = 8;                   // query rows (heads x queries) of one unit
constexpr int kMaxUnits = kEgyptianMaxHeads;  // a unit has at least one head
constexpr int64_t kMinChunk = 64;             // keys per split, at least
constexpr int kBlocksPerSm = 2;               // split the keys until the grid has about this many blocks per SM

struct Units {
  int n = 0;          // units
  int items = 0;      // (unit, split) work items per batch row: the sum of nsplit
  int64_t chunk = 1;  // keys per split of a full / local unit
  int kv[kMaxUnits];      // the unit's KV head
  int kind[kMaxUnits];    // 0 full, 1 local, 2 global
  int h0[kMaxUnits];      // its query heads: head[h0 .. h0 + nh)
  int nh[kMaxUnits];
  int nsplit[kMaxUnits];  // 1: the block writes Y itself
  int begin[kMaxUnits];   // its first work item
  int head[kEgyptianMaxHeads];
};

// The keys of work item `split` of unit kind `kind`: [a0, a1) then [b0, b1) (the second range is
// only used by global heads: their sinks, then the queries' own keys).
struct KeyRange {
  int64_t a0, a1, b0, b1;
};

__host__ __device__ __forceinline__ void Span(const Params& p, int kind, int64_t* lo, int64_t* hi) {
  *lo = p.KeyLo(kind == 1, p.off);
  *hi = p.KeyHi(kind == 1, p.off + p.Lq - 1);
}

__device__ __forceinline__ KeyRange ItemKeys(const Params& p, int kind, int64_t chunk, int split) {
  KeyRange r{0, 0, 0, 0};
  if (kind == 2) {
    if (p.causal) {  // sinks j < min(sinks, p + 1), and the keys p of the queries
      const int64_t last = p.off + p.Lq;
      r.a1 = p.sinks < last ? p.sinks : last;
      r.b0 = r.a1 > p.off ? r.a1 : p.off;
      r.b1 = last;
    } else {  // keys 0 and Lk - 1
      r.a1 = 1;
      r.b0 = p.Lk - 1 > 1 ? p.Lk - 1 : 1;
      r.b1 = p.Lk;
    }
    if (r.b0 > r.b1) r.b0 = r.b1;
    return r;
  }
  int64_t lo, hi;
  Span(p, kind, &lo, &hi);
  r.a0 = lo + split * chunk;
  r.a1 = r.a0 + chunk < hi + 1 ? r.a0 + chunk : hi + 1;
  if (r.a1 < r.a0) r.a1 = r.a0;
  return r;
}

// 8 channels [c0, c0 + 8) of a row as fp32, zero past dh. vec: dh % 8 == 0 and 16-byte aligned rows.
template <class S>
__device__ __forceinline__ void Load8(const S* row, int c0, int64_t dh, bool vec, float (&f)[8]) {
  if (vec) {
    if (c0 < dh) {
      if constexpr (sizeof(S) == 2) {
        CodecF16::Unpack(LoadVec(row + c0), f);
      } else {
        float a[4], b[4];
        CodecF32::Unpack(LoadVec(row + c0), a);
        CodecF32::Unpack(LoadVec(row + c0 + 4), b);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          f[e] = a[e];
          f[4 + e] = b[e];
        }
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = 0.0f;
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) f[e] = c0 + e < dh ? Ld(row + c0 + e) : 0.0f;
}

// (m, l, acc) merged with another partial (m2, l2, acc2) of the same row
template <int N>
__device__ __forceinline__ void Merge(float& m, float& l, float (&acc)[N], float m2, float l2, const float (&acc2)[N]) {
  const float M = fmaxf(m, m2);
  if (M == kNegInf) return;
  const float f1 = m == kNegInf ? 0.0f : __expf(m - M);
  const float f2 = m2 == kNegInf ? 0.0f : __expf(m2 - M);
  l = l * f1 + l2 * f2;
#pragma unroll
  for (int e = 0; e < N; ++e) acc[e] = acc[e] * f1 + acc2[e] * f2;
  m = M;
}

// One block per (batch, work item). DH: head size rounded up (32, 64, 128); MR: rows of a unit,
// rounded up (1, 2, 4, 8). part: [B][items][MR] x (max, sum) then [B][items][MR][DH] (null when no
// unit has more than one split).
// One warp merges the partials of row r of unit u (batch row b); `part` was written by the
// other blocks of this launch, so it is read past the (incoherent) L1 cache.
template <class S, int DH, int MR>
__device__ __forceinline__ void CombineRow(const Params& p, const Units& U, const float* part, int64_t b, int u, int r,
                                           int lane) {
  const int ns = U.nsplit[u];
  const size_t rows = static_cast<size_t>(p.B) * U.items * MR;
  const size_t row0 = (static_cast<size_t>(b) * U.items + U.begin[u]) * MR + r;  // split s: row0 + s * MR
  float M = kNegInf;
  for (int s = lane; s < ns; s += 32) M = fmaxf(M, __ldcg(part + 2 * (row0 + static_cast<size_t>(s) * MR)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  float L = 0.0f;
  if (M != kNegInf) {
    for (int s = lane; s < ns; s += 32) {
      const size_t row = row0 + static_cast<size_t>(s) * MR;
      const float ms = __ldcg(part + 2 * row);
      if (ms != kNegInf) L += __ldcg(part + 2 * row + 1) * __expf(ms - M);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
  constexpr int kPer = (DH + 31) / 32;
  float O[kPer];
#pragma unroll
  for (int c = 0; c < kPer; ++c) O[c] = 0.0f;
  if (M != kNegInf) {
    for (int s = 0; s < ns; ++s) {
      const size_t row = row0 + static_cast<size_t>(s) * MR;
      const float ms = __ldcg(part + 2 * row);
      if (ms == kNegInf) continue;  // the same for the whole warp
      const float f = __expf(ms - M);
      const float* a = part + 2 * rows + row * DH;
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        if (lane + 32 * c < DH) O[c] = fmaf(__ldcg(a + lane + 32 * c), f, O[c]);
      }
    }
  }
  const int h = U.head[U.h0[u] + r / p.Lq];
  S* y = static_cast<S*>(p.y) + p.QOff(b, r % p.Lq, h);
#pragma unroll
  for (int c = 0; c < kPer; ++c) {
    const int d = lane + 32 * c;
    if (d < p.dh) St(y + d, L > 0.0f ? O[c] / L : 0.0f);
  }
}

// Blocks [0, B * items): one per (batch, work item); the blocks after them copy the presents (cache
// mode with presents requested: `copy`). cnt: per (batch, unit) arrivals of the splits (zero on entry
// and on exit).
template <class S, int DH, int MR>
__global__ void __launch_bounds__(kThreads) SplitKernel(const Params p, const Units U, float* part, unsigned* cnt,
                                                        const CacheCopy copy, bool vec) {
  const int64_t attn = p.B * U.items;
  if (static_cast<int64_t>(blockIdx.x) >= attn) {
    CopyPresents<S>(copy, (static_cast<int64_t>(blockIdx.x) - attn) * kThreads + threadIdx.x,
                    (static_cast<int64_t>(gridDim.x) - attn) * kThreads);
    return;
  }
  constexpr int NO = DH / 8;       // lanes per key (8 channels each)
  constexpr int KPW = 32 / NO;     // key slots per warp
  constexpr int UN = MR >= 8 ? 2 : 4;  // keys per slot per step
  constexpr int kStep = kWarps * KPW * UN;
  __shared__ float sm_m[kWarps][MR], sm_l[kWarps][MR];
  __shared__ float sm_acc[kWarps][MR][DH];
  __shared__ int64_t s_lo[MR], s_hi[MR], s_ex[MR];

  const int64_t b = blockIdx.x / U.items;
  const int item = static_cast<int>(blockIdx.x % U.items);
  int u = 0;
  while (u + 1 < U.n && U.begin[u + 1] <= item) ++u;
  const int split = item - U.begin[u];
  const int kind = U.kind[u];
  const int R = U.nh[u] * static_cast<int>(p.Lq);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, oct = lane % NO, slot = lane / NO;

  if (tid < MR) {  // keys [lo, hi] and ex of row tid (none for padding rows)
    int64_t lo = 0, hi = -1, ex = -1;
    if (tid < R) {
      const int64_t pos = p.off + tid % p.Lq;
      if (kind == 2) {
        hi = (p.causal ? (p.sinks < pos + 1 ? p.sinks : pos + 1) : 1) - 1;
        ex = p.causal ? pos : p.Lk - 1;
      } else {
        lo = p.KeyLo(kind == 1, pos);
        hi = p.KeyHi(kind == 1, pos);
      }
    }
    s_lo[tid] = lo;
    s_hi[tid] = hi;
    s_ex[tid] = ex;
  }
  const KeyRange kr = ItemKeys(p, kind, U.chunk, split);
  const int64_t na = kr.a1 - kr.a0, n = na + (kr.b1 - kr.b0);

  float q[MR][8];
#pragma unroll
  for (int r = 0; r < MR; ++r) {
    if (r < R) {
      const int h = U.head[U.h0[u] + r / p.Lq];
      Load8(static_cast<const S*>(p.q) + p.QOff(b, r % p.Lq, h), 8 * oct, p.dh, vec, q[r]);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[r][e] *= p.scale;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) q[r][e] = 0.0f;
    }
  }
  __syncthreads();  // row bounds

  const int64_t kvoff = p.cached ? 0 : b * p.Lk * p.ldk + static_cast<int64_t>(U.kv[u]) * p.dh;
  const S* kg = static_cast<const S*>(p.k) + kvoff;
  const S* vg = static_cast<const S*>(p.v) + kvoff;
  const int32_t* mask = p.mask ? p.mask + b * p.Lk : nullptr;
  float m[MR], l[MR], acc[MR][8];
#pragma unroll
  for (int r = 0; r < MR; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] = 0.0f;
  }
  for (int64_t t0 = static_cast<int64_t>(warp) * KPW * UN; t0 < n; t0 += kStep) {  // warp-uniform trips
    int64_t key[UN];
    bool ok[UN];
    float kf[UN][8], vf[UN][8];
#pragma unroll
    for (int x = 0; x < UN; ++x) {
      const int64_t t = t0 + slot + KPW * x;
      const bool in = t < n;
      key[x] = in ? (t < na ? kr.a0 + t : kr.b0 + (t - na)) : 0;
      if (in && p.cached) {  // cache mode: the packed past or the new rows (egyptian/cuda_params.cuh)
        bool past;
        const int64_t o = p.cache.Row(b, key[x], U.kv[u], p.dh, &past);
        Load8((past ? static_cast<const S*>(p.cache.pk) : static_cast<const S*>(p.k)) + o, 8 * oct, p.dh, vec, kf[x]);
        Load8((past ? static_cast<const S*>(p.cache.pv) : static_cast<const S*>(p.v)) + o, 8 * oct, p.dh, vec, vf[x]);
      } else if (in) {
        Load8(kg + key[x] * p.ldk, 8 * oct, p.dh, vec, kf[x]);
        Load8(vg + key[x] * p.ldk, 8 * oct, p.dh, vec, vf[x]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) kf[x][e] = vf[x][e] = 0.0f;
      }
      ok[x] = in && (!mask || mask[key[x]] != 0);
    }
#pragma unroll
    for (int r = 0; r < MR; ++r) {
      if (r >= R) break;  // block-uniform
      float s[UN];
#pragma unroll
      for (int x = 0; x < UN; ++x) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d = fmaf(q[r][e], kf[x][e], d);
#pragma unroll
        for (int o = 1; o < NO; o <<= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        s[x] = d;
      }
      const int64_t lo = s_lo[r], hi = s_hi[r], ex = s_ex[r];
      float mx = kNegInf;
#pragma unroll
      for (int x = 0; x < UN; ++x) {
        const bool valid = ok[x] && ((key[x] >= lo && key[x] <= hi) || key[x] == ex);
        s[x] = valid ? s[x] : kNegInf;
        mx = fmaxf(mx, s[x]);
      }
      if (mx == kNegInf) continue;  // the same for the lanes of a slot; no shuffle below
      const float mnew = fmaxf(m[r], mx);
      const float corr = m[r] == kNegInf ? 0.0f : __expf(m[r] - mnew);
      float sum = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r][e] *= corr;
#pragma unroll
      for (int x = 0; x < UN; ++x) {
        const float pr = s[x] == kNegInf ? 0.0f : __expf(s[x] - mnew);
        sum += pr;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(pr, vf[x][e], acc[r][e]);
      }
      l[r] = l[r] * corr + sum;
      m[r] = mnew;
    }
  }
  // the key slots of the warp (lanes of the same channels), then the warps
#pragma unroll
  for (int o = NO; o < 32; o <<= 1) {
#pragma unroll
    for (int r = 0; r < MR; ++r) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[r], o);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[r], o);
      float a2[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) a2[e] = __shfl_xor_sync(0xffffffffu, acc[r][e], o);
      Merge(m[r], l[r], acc[r], m2, l2, a2);
    }
  }
  if (slot == 0) {
#pragma unroll
    for (int r = 0; r < MR; ++r) {
      if (oct == 0) {
        sm_m[warp][r] = m[r];
        sm_l[warp][r] = l[r];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) sm_acc[warp][r][8 * oct + e] = acc[r][e];
    }
  }
  __syncthreads();
  const bool direct = U.nsplit[u] == 1;
  const size_t prow = (static_cast<size_t>(b) * U.items + item) * MR;  // this item's first partial row
  for (int idx = tid; idx < R * DH; idx += kThreads) {
    const int r = idx / DH, c = idx % DH;
    float M = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][r]);
    float L = 0.0f, O = 0.0f;
    if (M != kNegInf) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        if (sm_m[w][r] == kNegInf) continue;
        const float f = __expf(sm_m[w][r] - M);
        L += sm_l[w][r] * f;
        O += sm_acc[w][r][c] * f;
      }
    }
    if (direct) {
      if (c < p.dh) {
        const int h = U.head[U.h0[u] + r / p.Lq];
        St(static_cast<S*>(p.y) + p.QOff(b, r % p.Lq, h) + c, L > 0.0f ? O / L : 0.0f);
      }
    } else {
      const size_t rows = static_cast<size_t>(p.B) * U.items * MR;
      if (c == 0) {
        part[2 * (prow + r)] = M;
        part[2 * (prow + r) + 1] = L;
      }
      part[2 * rows + (prow + r) * DH + c] = O;
    }
  }
  if (direct) return;
  __shared__ bool s_last;
  __threadfence();  // this block's partials, visible before it counts itself in
  __syncthreads();
  if (tid == 0) {
    unsigned* c = cnt + b * U.n + u;
    s_last = atomicAdd(c, 1u) == static_cast<unsigned>(U.nsplit[u] - 1);
    if (s_last) *c = 0;  // every split has arrived: zero for the next launch
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  for (int r = warp; r < R; r += kWarps) CombineRow<S, DH, MR>(p, U, part, b, u, r, lane);
}

template <class S, int DH, int MR>
Status Launch(const Params& p, const Units& U, const CacheCopy& copy, int64_t copy_blocks, bool vec,
              cudaStream_t stream) {
  const int64_t blocks = p.B * U.items + copy_blocks;
  if (blocks > 0x7FFFFFFF) return InvalidArgument("LaunchEgyptian", "tensor too large for the decode grid");
  bool split = false;
  for (int u = 0; u < U.n; ++u) split = split || U.nsplit[u] > 1;
  Workspace ws;
  if (split) {
    const size_t rows = static_cast<size_t>(p.B * U.items) * MR;
    Status st = AcquireWorkspace(stream, static_cast<size_t>(p.B * U.n), rows * (DH + 2) * sizeof(float), &ws);
    if (!st.ok()) return st;
  }
  const Status st = CheckedLaunch(&SplitKernel<S, DH, MR>, static_cast<unsigned>(blocks), kThreads, 0, stream, p, U,
                                  static_cast<float*>(ws.data), ws.counters, copy, vec);
  const Status fr = ReleaseWorkspace(ws, stream);
  return st.ok() ? fr : st;
}

template <class S, int DH>
Status LaunchRows(const Params& p, const Units& U, int rows, const CacheCopy& c, int64_t cb, bool vec,
                  cudaStream_t stream) {
  if (rows <= 1) return Launch<S, DH, 1>(p, U, c, cb, vec, stream);
  if (rows <= 2) return Launch<S, DH, 2>(p, U, c, cb, vec, stream);
  if (rows <= 4) return Launch<S, DH, 4>(p, U, c, cb, vec, stream);
  return Launch<S, DH, 8>(p, U, c, cb, vec, stream);
}

template <class S>
Status LaunchTyped(const Params& p, const Units& U, int rows, const EgyptianCache* cache, int sms,
                   cudaStream_t stream) {
  const auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  bool vec = p.dh % 8 == 0 && p.ldq % 8 == 0 && p.ldk % 8 == 0 && aligned(p.q) && aligned(p.k) && aligned(p.v);
  if (p.cached && p.cache.pk) vec = vec && aligned(p.cache.pk) && aligned(p.cache.pv);
  // the presents: blocks of their own after the attention's, at most 16 per SM (a copy needs many
  // loads in flight)
  CacheCopy c{};
  int64_t cb = 0;
  if (p.cached && cache && (cache->ok || cache->ov)) {
    c = MakeCopy(p.cache, p.k, p.v, cache->ok, cache->ov, nullptr, nullptr, p.B, p.dh, sizeof(S));
    cb = std::min<int64_t>((c.PresentItems() + kThreads - 1) / kThreads, 16 * static_cast<int64_t>(sms));
  }
  if (p.dh <= 32) return LaunchRows<S, 32>(p, U, rows, c, cb, vec, stream);
  if (p.dh <= 64) return LaunchRows<S, 64>(p, U, rows, c, cb, vec, stream);
  return LaunchRows<S, 128>(p, U, rows, c, cb, vec, stream);
}

}  // namespace

Status LaunchDecode(const Params& p, const int* kinds, DType dtype, const EgyptianCache* cache,
                    cudaStream_t stream) {
  if (p.Lq < 1 || p.Lq >= kDecodeBelow || p.G < 1 || p.H > kEgyptianMaxHeads || p.dh > kEgyptianMaxHeadSize) {
    return InvalidArgument("LaunchEgyptian", "decode kernel: Lq, num_heads or head size out of range");
  }
  // units: per KV head, its query heads of each kind, at most kMaxRows / Lq heads per unit
  Units U;
  const int per = std::max(1, kMaxRows / static_cast<int>(p.Lq));
  int nheads = 0, rows = 1;
  for (int64_t g = 0; g * p.G < p.H; ++g) {
    for (int kind = 0; kind < 3; ++kind) {
      for (int64_t h = g * p.G; h < (g + 1) * p.G; ++h) {
        if (kinds[h] != kind) continue;
        if (U.n == 0 || U.kv[U.n - 1] != g || U.kind[U.n - 1] != kind || U.nh[U.n - 1] == per) {
          if (U.n == kMaxUnits) return InvalidArgument("LaunchEgyptian", "decode kernel: too many work units");
          U.kv[U.n] = static_cast<int>(g);
          U.kind[U.n] = kind;
          U.h0[U.n] = nheads;
          U.nh[U.n] = 0;
          ++U.n;
        }
        U.head[nheads++] = static_cast<int>(h);
        rows = std::max(rows, ++U.nh[U.n - 1] * static_cast<int>(p.Lq));
      }
    }
  }
  if (U.n == 0) return Status{};
  // keys per split: the full / local keys of the call over about kBlocksPerSm blocks per SM
  DeviceInfo dev;
  Status st = CurrentDevice(&dev);
  if (!st.ok()) return st;
  int64_t keys = 0;
  for (int u = 0; u < U.n; ++u) {
    int64_t lo, hi;
    Span(p, U.kind[u], &lo, &hi);
    if (U.kind[u] != 2 && hi >= lo) keys += hi - lo + 1;
  }
  const int64_t target = static_cast<int64_t>(dev.sms) * kBlocksPerSm;
  const int64_t want = (keys * p.B + target - 1) / target;
  U.chunk = std::max(kMinChunk, (want + kMinChunk - 1) / kMinChunk * kMinChunk);
  int64_t items = 0;
  for (int u = 0; u < U.n; ++u) {
    int64_t lo, hi, ns = 1;
    Span(p, U.kind[u], &lo, &hi);
    if (U.kind[u] != 2 && hi >= lo) ns = (hi - lo + 1 + U.chunk - 1) / U.chunk;
    if (ns > 0x7FFFFFFF || items + ns > 0x7FFFFFFF) {
      return InvalidArgument("LaunchEgyptian", "tensor too large for the decode grid");
    }
    U.begin[u] = static_cast<int>(items);
    U.nsplit[u] = static_cast<int>(ns);
    items += ns;
  }
  U.items = static_cast<int>(items);
  if (dtype == DType::kFloat32) return LaunchTyped<float>(p, U, rows, cache, dev.sms, stream);
  return LaunchTyped<uint16_t>(p, U, rows, cache, dev.sms, stream);
}

}  // namespace egy
}  // namespace cuda
}  // namespace n6
