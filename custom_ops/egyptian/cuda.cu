// EgyptianAttention CUDA kernels (float32 / float16 storage, fp32 accumulation).
//
// float16 full and local heads on sm_80+: TensorCoreKernel (below, mma.sync on the tensor cores).
// float32 (and float16 on older devices) full and local heads: StreamKernel, flash-style. A block
// of 128 threads owns a tile of 64 queries of one (batch, head); two threads per query, each
// holding half of the output channels and half of each key tile's scores in registers. Key tiles
// of 32 are staged in shared memory (K transposed, V as rows); per tile: scores (q pre-scaled),
// the online-softmax update (running max / sum, output rescale; the pair exchanges max and sum
// with one shuffle each), P.V. Every query of a full / local head sees one key interval
// (Params::KeyLo / KeyHi: the rules of egyptian/egyptian.h, causal or not); a query tile visits
// only the key tiles of the union of its queries' intervals: a local head costs
// O(Lq * (window + 64) * dh), a causal full head the keys up to its last query.
// Grouped-query attention: query head h reads K / V of KV head h / G in place.
// Global heads: egyptian/cuda_global.cu; decode steps (Lq < 4, every head kind): egyptian/cuda_decode.cu.
// Head size up to 128 (instantiations for 32, 64, 128 channels); larger is refused.
#include "common/cuda_helpers.cuh"
#include "common/cuda_mma.cuh"
#include "egyptian/cuda_params.cuh"
#include "egyptian/egyptian_cuda.h"

#include <type_traits>

namespace n6 {
namespace cuda {
namespace {

constexpr int kQT = 64;        // queries per block
constexpr int kKT = 32;        // keys per tile
constexpr int kThreads = 128;  // 2 per query
using egy::kNegInf;
using egy::Ld;
using egy::Params;
using egy::St;

template <int DH>
constexpr size_t SmemFloats() {
  return kQT * (DH + 1) + DH * kKT + kKT * DH + kQT * (kKT + 1);
}

template <class S, int DH>
__global__ void __launch_bounds__(kThreads) StreamKernel(const Params p) {
  extern __shared__ float smem[];
  float* Qs = smem;                    // [kQT][DH + 1]
  float* Kt = Qs + kQT * (DH + 1);     // [DH][kKT]
  float* Vs = Kt + DH * kKT;           // [kKT][DH]
  float* Ps = Vs + kKT * DH;           // [kQT][kKT + 1]
  constexpr int kHalfDH = DH / 2, kHalfKT = kKT / 2;

  const int tile = blockIdx.x % p.nq;
  const int bh = blockIdx.x / p.nq;
  const int b = bh / p.nstream;
  const int h = p.heads[bh % p.nstream];
  const bool local = p.local[bh % p.nstream] != 0;
  const int tid = threadIdx.x, r = tid >> 1, hf = tid & 1;
  const int64_t q0 = static_cast<int64_t>(tile) * kQT, i = q0 + r;
  const S* qg = static_cast<const S*>(p.q);
  const S* kg = static_cast<const S*>(p.k);
  const S* vg = static_cast<const S*>(p.v);
  const int64_t dh = p.dh;

  for (int e = tid; e < kQT * DH; e += kThreads) {  // Q tile, pre-scaled, zero padded
    const int rr = e / DH, dd = e % DH;
    const int64_t ii = q0 + rr;
    Qs[rr * (DH + 1) + dd] = (ii < p.Lq && dd < dh) ? Ld(qg + p.QOff(b, ii, h) + dd) * p.scale : 0.0f;
  }

  float acc[kHalfDH];
#pragma unroll
  for (int c = 0; c < kHalfDH; ++c) acc[c] = 0.0f;
  float m = kNegInf, l = 0.0f;

  // keys [klo, khi): the union of the tile's query intervals
  const int64_t qlast = (q0 + kQT < p.Lq ? q0 + kQT : p.Lq) - 1;
  const int64_t klo = p.KeyLo(local, p.off + q0), khi = p.KeyHi(local, p.off + qlast) + 1;
  const int64_t ilo = p.KeyLo(local, p.off + i), ihi = p.KeyHi(local, p.off + i);  // this query's
  for (int64_t kb = klo; kb < khi; kb += kKT) {
    __syncthreads();  // previous tile consumed (and Q tile written, first time)
    for (int e = tid; e < kKT * DH; e += kThreads) {
      const int j = e / DH, dd = e % DH;
      const int64_t key = kb + j;
      const bool in = key < khi && dd < dh;
      const int64_t off = p.KOff(b, key, h) + dd;
      Kt[dd * kKT + j] = in ? Ld(kg + off) : 0.0f;
      Vs[j * DH + dd] = in ? Ld(vg + off) : 0.0f;
    }
    __syncthreads();
    // scores of keys hf*16 .. hf*16+15 of the tile
    float s[kHalfKT];
#pragma unroll
    for (int j = 0; j < kHalfKT; ++j) s[j] = 0.0f;
    const float* qrow = Qs + r * (DH + 1);
    for (int d = 0; d < DH; ++d) {
      const float qd = qrow[d];
      const float4* kr = reinterpret_cast<const float4*>(Kt + d * kKT + hf * kHalfKT);
#pragma unroll
      for (int j4 = 0; j4 < kHalfKT / 4; ++j4) {
        const float4 k4 = kr[j4];
        s[4 * j4 + 0] = fmaf(qd, k4.x, s[4 * j4 + 0]);
        s[4 * j4 + 1] = fmaf(qd, k4.y, s[4 * j4 + 1]);
        s[4 * j4 + 2] = fmaf(qd, k4.z, s[4 * j4 + 2]);
        s[4 * j4 + 3] = fmaf(qd, k4.w, s[4 * j4 + 3]);
      }
    }
    float mx = kNegInf;
#pragma unroll
    for (int j = 0; j < kHalfKT; ++j) {
      const int64_t key = kb + hf * kHalfKT + j;
      const bool ok = i < p.Lq && key >= ilo && key <= ihi && (!p.mask || p.mask[b * p.Lk + key] != 0);
      s[j] = ok ? s[j] : kNegInf;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mnew = fmaxf(m, mx);
    float sum = 0.0f;
    float* prow = Ps + r * (kKT + 1) + hf * kHalfKT;
    if (mnew == kNegInf) {
#pragma unroll
      for (int j = 0; j < kHalfKT; ++j) prow[j] = 0.0f;
    } else {
#pragma unroll
      for (int j = 0; j < kHalfKT; ++j) {
        const float e = s[j] == kNegInf ? 0.0f : __expf(s[j] - mnew);
        prow[j] = e;
        sum += e;
      }
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    const float corr = (m == kNegInf || mnew == kNegInf) ? 0.0f : __expf(m - mnew);
    if (mnew != kNegInf) {
      l = l * corr + sum;
#pragma unroll
      for (int c = 0; c < kHalfDH; ++c) acc[c] *= corr;
      m = mnew;
    }
    __syncwarp();
    const float* pr = Ps + r * (kKT + 1);
    for (int j = 0; j < kKT; ++j) {
      const float pj = pr[j];
      const float4* vr = reinterpret_cast<const float4*>(Vs + j * DH + hf * kHalfDH);
#pragma unroll
      for (int c4 = 0; c4 < kHalfDH / 4; ++c4) {
        const float4 v4 = vr[c4];
        acc[4 * c4 + 0] = fmaf(pj, v4.x, acc[4 * c4 + 0]);
        acc[4 * c4 + 1] = fmaf(pj, v4.y, acc[4 * c4 + 1]);
        acc[4 * c4 + 2] = fmaf(pj, v4.z, acc[4 * c4 + 2]);
        acc[4 * c4 + 3] = fmaf(pj, v4.w, acc[4 * c4 + 3]);
      }
    }
  }
  if (i >= p.Lq) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  S* yrow = static_cast<S*>(p.y) + p.QOff(b, i, h);
#pragma unroll
  for (int c = 0; c < kHalfDH; ++c) {
    const int dd = hf * kHalfDH + c;
    if (dd < dh) St(yrow + dd, acc[c] * inv);
  }
}

// float16, full and local heads: TensorCoreKernel, flash-attention-2 style on the tensor cores
// (mma.sync m16n8k16, f16 operands, f32 accumulators; sm_80 and newer). A block of 4 warps owns
// 64 queries of one (batch, head), 16 per warp; key tiles of 64 keys are staged in shared memory
// as f16 rows (K and V) with the tile's key mask, and read into mma fragments with ldmatrix (V
// with .trans). Per tile each warp computes its 16 x 64 scores S = Q K^T (Q fragments stay in
// registers), scales them in fp32 (base-2 exponent), masks them (skipped for a tile whose keys
// and queries are all valid, of a full head), does the online-softmax update on its accumulator
// rows (the four threads of an mma row group exchange max and sum with two shuffles), and
// accumulates O += P V with P rounded to f16 straight from the score accumulators (the C layout
// of one mma is the A layout of the next). Same key ranges as StreamKernel: a local head visits
// only the tiles within window/2 of its query tile.
constexpr int kTK = 64;  // keys per tile (tensor-core kernel)
constexpr int kPad = 8;  // halves of padding per shared-memory row: conflict-free ldmatrix

template <int DH, int MT>
constexpr size_t TcSmemBytes() {  // Q tile, two buffers of K and V tiles, two key masks
  return (static_cast<size_t>(4 * 16 * MT) + 4 * kTK) * (DH + kPad) * sizeof(uint16_t) + 2 * kTK * sizeof(int);
}

__device__ __forceinline__ uint32_t Ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// rows [r0, r0 + rows) of one head (channels [0, dh) at src + row * ld) -> dst [rows][DH + kPad],
// zero outside [0, nrows) x [0, dh).
template <int DH>
__device__ __forceinline__ void StageTile(uint16_t* dst, const uint16_t* src, int64_t ld, int64_t dh, int64_t r0,
                                          int64_t nrows, int rows, bool vec) {
  constexpr int kStride = DH + kPad;
  if (vec) {  // cp.async of 8 channels (16 bytes): dh % 8 == 0, rows and base 16-byte aligned
    constexpr int kChunks = DH / 8;
    for (int e = threadIdx.x; e < rows * kChunks; e += kThreads) {
      const int rr = e / kChunks, c8 = (e % kChunks) * 8;
      const int64_t row = r0 + rr;
      const bool in = row < nrows && c8 < dh;
      CpAsync16(dst + rr * kStride + c8, in ? src + row * ld + c8 : src, in);
    }
  } else {
    for (int e = threadIdx.x; e < rows * DH; e += kThreads) {
      const int rr = e / DH, dd = e % DH;
      const int64_t row = r0 + rr;
      dst[rr * kStride + dd] = (row < nrows && dd < dh) ? src[row * ld + dd] : uint16_t{0};
    }
  }
}

template <int DH, int MT>
__global__ void __launch_bounds__(kThreads) TensorCoreKernel(const Params p, bool vec) {
  extern __shared__ __align__(16) unsigned char tc_smem[];
  constexpr int kS = DH + kPad;
  constexpr int kRows = 4 * 16 * MT;  // queries per block: 4 warps x MT row tiles of 16
  uint16_t* Qs = reinterpret_cast<uint16_t*>(tc_smem);  // [kRows][kS]
  uint16_t* Kb = Qs + kRows * kS;                         // [2][kTK][kS]: tile it in buffer it % 2
  uint16_t* Vb = Kb + 2 * kTK * kS;                       // [2][kTK][kS]
  int* Mb = reinterpret_cast<int*>(Vb + 2 * kTK * kS);    // [2][kTK]: 1 = the key may be attended
  constexpr float kLog2e = 1.4426950408889634f;

  const int tile = blockIdx.x % p.nq;
  const int bh = blockIdx.x / p.nq;
  const int b = bh / p.nstream;
  const int h = p.heads[bh % p.nstream];
  const bool local = p.local[bh % p.nstream] != 0;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int64_t q0 = static_cast<int64_t>(tile) * kRows;
  const int64_t qbase = p.QOff(b, 0, h), kbase = p.KOff(b, 0, h);
  const uint16_t* qg = static_cast<const uint16_t*>(p.q) + qbase;
  const uint16_t* kg = static_cast<const uint16_t*>(p.k) + kbase;
  const uint16_t* vg = static_cast<const uint16_t*>(p.v) + kbase;
  const float scale = p.scale * kLog2e;  // scores in base 2: exp(x) = exp2(x log2 e)

  StageTile<DH>(Qs, qg, p.ldq, p.dh, q0, p.Lq, kRows, vec);
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
  // warp w owns rows w * 16 * MT + 16 * mt + {g, g + 8} of the tile (mt < MT)
  uint32_t qa[MT][DH / 16][4];
  int64_t row[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int qr = (warp * MT + mt) * 16 + g;
    row[mt][0] = q0 + qr;
    row[mt][1] = q0 + qr + 8;
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) {
      qa[mt][kk][0] = Ld32(Qs + qr * kS + kk * 16 + 2 * t);
      qa[mt][kk][1] = Ld32(Qs + (qr + 8) * kS + kk * 16 + 2 * t);
      qa[mt][kk][2] = Ld32(Qs + qr * kS + kk * 16 + 2 * t + 8);
      qa[mt][kk][3] = Ld32(Qs + (qr + 8) * kS + kk * 16 + 2 * t + 8);
    }
  }
  float o[MT][DH / 8][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    m[mt][0] = m[mt][1] = kNegInf;
    l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
  }
  const bool rows_in = q0 + kRows <= p.Lq;
  // ldmatrix lane addresses: K rows (keys) lane % 8 of matrix lane / 8 (channel block of 8);
  // V rows (keys) of matrix lane / 8: keys +8 for odd matrices, channels +8 for matrices 2, 3
  const int lr = lane & 7, lm = lane >> 3;
  const int koff = lr * kS + lm * 8;
  const int voff = (lr + (lm & 1) * 8) * kS + (lm >> 1) * 8;

  // keys [klo, khi): the union of the tile's query intervals
  const int64_t qlast = (q0 + kRows < p.Lq ? q0 + kRows : p.Lq) - 1;
  const int64_t klo = p.KeyLo(local, p.off + q0), khi = p.KeyHi(local, p.off + qlast) + 1;
  // software pipeline: the copies of tile it + 1 are in flight while tile it is computed
  if (klo < khi) {
    StageTile<DH>(Kb, kg, p.ldk, p.dh, klo, khi, kTK, vec);
    StageTile<DH>(Vb, vg, p.ldk, p.dh, klo, khi, kTK, vec);
  }
  CpAsyncCommit();
  int it = 0;
  for (int64_t kb = klo; kb < khi; kb += kTK, ++it) {
    const int buf = it & 1;
    if (kb + kTK < khi) {  // buffer buf ^ 1 was released by the barrier at the end of the last tile
      StageTile<DH>(Kb + (buf ^ 1) * kTK * kS, kg, p.ldk, p.dh, kb + kTK, khi, kTK, vec);
      StageTile<DH>(Vb + (buf ^ 1) * kTK * kS, vg, p.ldk, p.dh, kb + kTK, khi, kTK, vec);
    }
    CpAsyncCommit();
    int valid = 1;
    int* Ms = Mb + buf * kTK;
    if (tid < kTK) {
      const int64_t key = kb + tid;
      valid = key < khi && (!p.mask || p.mask[b * p.Lk + key] != 0);
      Ms[tid] = valid;
    }
    CpAsyncWait<1>();  // this thread's copies of tile it have landed
    // ... and everyone's; causal: the whole tile at or before the first query's key index
    const bool interior = __syncthreads_and(valid) && rows_in && !local && (!p.causal || kb + kTK - 1 <= p.off + q0);
    const uint16_t* kaddr = Kb + buf * kTK * kS + koff;
    const uint16_t* vaddr = Vb + buf * kTK * kS + voff;

    float s[MT][kTK / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < kTK / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < kTK / 8; ++j) {
#pragma unroll
      for (int kk = 0; kk < DH / 16; kk += 2) {
        uint32_t kb4[4];  // b0, b1 of channel blocks kk and kk + 1
        LdMatrixX4<false>(kb4, kaddr + j * 8 * kS + kk * 16);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma16816(s[mt][j], qa[mt][kk], kb4[0], kb4[1]);
          Mma16816(s[mt][j], qa[mt][kk + 1], kb4[2], kb4[3]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {kNegInf, kNegInf};
      if (interior) {
#pragma unroll
        for (int j = 0; j < kTK / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][j][e] *= scale;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[mt][j][e]);
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < kTK / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int kl = j * 8 + 2 * t + (e & 1);
            const int64_t key = kb + kl, i = row[mt][e >> 1];
            const bool ok = i < p.Lq && Ms[kl] != 0 && key >= p.KeyLo(local, p.off + i) &&
                            key <= p.KeyHi(local, p.off + i);
            s[mt][j][e] = ok ? s[mt][j][e] * scale : kNegInf;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[mt][j][e]);
          }
        }
      }
      float msafe[2], corr[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float mnew = fmaxf(m[mt][r], mx[r]);
        msafe[r] = mnew == kNegInf ? 0.0f : mnew;
        corr[r] = exp2f(m[mt][r] - msafe[r]);  // 0 while the row has seen no key
        m[mt][r] = mnew;
      }
      float sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kTK / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float v = exp2f(s[mt][j][e] - msafe[e >> 1]);  // exp2(-inf) = 0 for masked keys
          s[mt][j][e] = v;
          sum[e >> 1] += v;
        }
      }
      l[mt][0] = l[mt][0] * corr[0] + sum[0];
      l[mt][1] = l[mt][1] * corr[1] + sum[1];
#pragma unroll
      for (int n = 0; n < DH / 8; ++n) {
        o[mt][n][0] *= corr[0];
        o[mt][n][1] *= corr[0];
        o[mt][n][2] *= corr[1];
        o[mt][n][3] *= corr[1];
      }
    }
#pragma unroll
    for (int kc = 0; kc < kTK / 16; ++kc) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = CodecF16::Pack2(s[mt][2 * kc][0], s[mt][2 * kc][1]);
        pa[mt][1] = CodecF16::Pack2(s[mt][2 * kc][2], s[mt][2 * kc][3]);
        pa[mt][2] = CodecF16::Pack2(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
        pa[mt][3] = CodecF16::Pack2(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
      }
#pragma unroll
      for (int n = 0; n < DH / 8; n += 2) {
        uint32_t vb[4];  // b0, b1 of channel blocks n and n + 1
        LdMatrixX4<true>(vb, vaddr + kc * 16 * kS + n * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma16816(o[mt][n], pa[mt], vb[0], vb[1]);
          Mma16816(o[mt][n + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // buffer buf is consumed: the next prefetch may overwrite it
  }
  CpAsyncWait<0>();  // nothing may stay in flight at exit (the last, empty, group)
  uint16_t* yg = static_cast<uint16_t*>(p.y) + qbase;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float lr_ = l[mt][r];
      lr_ += __shfl_xor_sync(0xffffffffu, lr_, 1);
      lr_ += __shfl_xor_sync(0xffffffffu, lr_, 2);
      if (row[mt][r] >= p.Lq) continue;
      const float inv = lr_ > 0.0f ? 1.0f / lr_ : 0.0f;
      uint16_t* yrow = yg + row[mt][r] * p.ldq;
#pragma unroll
      for (int n = 0; n < DH / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int dd = n * 8 + 2 * t + e;
          if (dd < p.dh) CodecF16::Store1(yrow + dd, o[mt][n][2 * r + e] * inv);
        }
      }
    }
  }
}

template <class S, int DH>
Status LaunchStream(const Params& p, cudaStream_t stream) {
  constexpr size_t smem = SmemFloats<DH>() * sizeof(float);
  if (smem > 48 * 1024) {
    Status st = CudaStatus(cudaFuncSetAttribute(&StreamKernel<S, DH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem)),
                           "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    if (!st.ok()) return st;
  }
  const int64_t blocks = static_cast<int64_t>(p.nq) * p.B * p.nstream;
  if (blocks > 0x7FFFFFFF) return InvalidArgument("LaunchEgyptian", "tensor too large for the attention grid");
  return CheckedLaunch(&StreamKernel<S, DH>, static_cast<unsigned>(blocks), kThreads, smem, stream, p);
}

// Head sizes up to 64 with a full head among the heads: each warp owns two row tiles (128 queries
// per block: every K / V fragment read from shared memory feeds two mma). Otherwise one (64
// queries): at head size 128 two would not fit the registers, and a local head's block visits
// window + 64 keys per 64 queries instead of window + 128 per 128 (fewer keys per query, twice
// the blocks).
template <int DH, int MT>
Status LaunchTensorCoreMT(Params p, cudaStream_t stream);

template <int DH>
Status LaunchTensorCore(const Params& p, cudaStream_t stream) {
  bool any_full = false;
  for (int s = 0; s < p.nstream; ++s) any_full = any_full || p.local[s] == 0;
  if (DH <= 64 && any_full) return LaunchTensorCoreMT<DH, DH <= 64 ? 2 : 1>(p, stream);
  return LaunchTensorCoreMT<DH, 1>(p, stream);
}

template <int DH, int MT>
Status LaunchTensorCoreMT(Params p, cudaStream_t stream) {
  constexpr int kRows = 4 * 16 * MT;
  constexpr size_t smem = TcSmemBytes<DH, MT>();
  if (smem > 48 * 1024) {
    Status st = CudaStatus(cudaFuncSetAttribute(&TensorCoreKernel<DH, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem)),
                           "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    if (!st.ok()) return st;
  }
  p.nq = static_cast<int>((p.Lq + kRows - 1) / kRows);
  const int64_t blocks = static_cast<int64_t>(p.nq) * p.B * p.nstream;
  if (blocks > 0x7FFFFFFF) return InvalidArgument("LaunchEgyptian", "tensor too large for the attention grid");
  const auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  const bool vec = p.dh % 8 == 0 && p.ldq % 8 == 0 && p.ldk % 8 == 0 && aligned(p.q) && aligned(p.k) && aligned(p.v);
  return CheckedLaunch(&TensorCoreKernel<DH, MT>, static_cast<unsigned>(blocks), kThreads, smem, stream, p, vec);
}

// Tensor cores (mma.sync m16n8k16) need compute capability 8.0; older devices keep the SIMT kernel.
inline bool HasTensorCoreMma() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 8;
}

template <class S>
Status LaunchTyped(const EgyptianArgs& a) {
  const cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  Params p{};
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.mask = a.mask;
  p.y = a.y;
  p.B = a.B;
  p.Lq = a.Lq;
  p.Lk = a.Lk;
  p.H = a.H;
  p.dh = a.dh;
  p.ldq = a.H * a.dh;
  p.ldk = a.Hkv * a.dh;
  p.G = a.H / a.Hkv;
  p.off = a.Lk - a.Lq;
  p.window = a.window;
  p.half = a.window / 2;
  p.sinks = a.sinks;
  p.causal = a.causal ? 1 : 0;
  p.scale = a.scale;
  p.nq = static_cast<int>((a.Lq + kQT - 1) / kQT);
  if (a.cache) {  // cache mode, decode steps only (LaunchEgyptianCache gathers longer calls)
    const EgyptianCache& c = *a.cache;
    if (a.Lq >= egy::kDecodeBelow || c.geo.P + a.Lq != a.Lk) {
      return InvalidArgument("LaunchEgyptian", "cache mode in place needs Lq < 4 and Lk = P + Lq");
    }
    p.cached = 1;
    p.cache = egy::CacheView{c.pk, c.pv, a.Lq, a.Hkv, c.geo};
  }
  if (a.Lq < egy::kDecodeBelow) return egy::LaunchDecode(p, a.kinds, a.dtype, a.cache, stream);
  Params g = p;
  int nglobal = 0;
  for (int h = 0; h < a.H; ++h) {
    if (a.kinds[h] == 2) {
      g.heads[nglobal++] = h;
    } else {
      p.local[p.nstream] = a.kinds[h] == 1;
      p.heads[p.nstream++] = h;
    }
  }
  if (p.nstream > 0 && std::is_same<S, uint16_t>::value && HasTensorCoreMma()) {
    Status st = a.dh <= 32 ? LaunchTensorCore<32>(p, stream)
                : a.dh <= 64 ? LaunchTensorCore<64>(p, stream)
                             : LaunchTensorCore<128>(p, stream);
    if (!st.ok()) return st;
  } else if (p.nstream > 0) {
    Status st = a.dh <= 32 ? LaunchStream<S, 32>(p, stream)
                : a.dh <= 64 ? LaunchStream<S, 64>(p, stream)
                             : LaunchStream<S, 128>(p, stream);
    if (!st.ok()) return st;
  }
  if (nglobal > 0) return egy::LaunchGlobal(g, nglobal, a.dtype, stream);
  return Status{};
}

}  // namespace

Status LaunchEgyptian(const EgyptianArgs& a) {
  if (a.B == 0 || a.Lq == 0 || a.H == 0 || a.dh == 0) return Status{};
  if (!a.q || !a.k || !a.v || !a.y) return InvalidArgument("LaunchEgyptian", "null pointer");
  if (a.Hkv < 1 || a.H % a.Hkv != 0 || a.Lk < a.Lq || (!a.causal && a.Lk != a.Lq)) {
    return InvalidArgument("LaunchEgyptian", "inconsistent Lq, Lk, num_heads, kv_heads");
  }
  if (a.H > kEgyptianMaxHeads) return InvalidArgument("LaunchEgyptian", "more than 64 heads");
  if (a.dh > kEgyptianMaxHeadSize) return InvalidArgument("LaunchEgyptian", "head size above 128");
  switch (a.dtype) {
    case DType::kFloat32: return LaunchTyped<float>(a);
    case DType::kFloat16: return LaunchTyped<uint16_t>(a);
    default: break;
  }
  return InvalidArgument("LaunchEgyptian", "unsupported element type (float32 and float16 only)");
}

}  // namespace cuda
}  // namespace n6
