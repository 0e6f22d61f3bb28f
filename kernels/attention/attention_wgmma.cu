// DSA attention on Hopper warpgroup MMAs (wgmma, sm_90a), head_dim 64, bf16 in, fp32 accumulate:
// the global part and the band, with the contracts of the v4 kernels (attention_tc.cu). The
// global kernel writes beta_h * Global_i in fp32 to p.global_scratch for rows [row_begin,
// row_end); the band kernel (below) writes alpha_h * Local_i + that, in bf16.
//
// Global: NWG warpgroups a block, each owning 64 query rows (BQ = 64 NWG), key tiles of BK
// gathered keys in an S-stage ring. BULK (the default): the launcher packs, per head and key tile,
// the exact shared-memory image of a stage (pack_stage_kernel: K swizzled, V^T with the gate
// folded in and the ones row), and one thread moves each tile with one bulk copy (TMA unit)
// completing on a "full" mbarrier; each warpgroup releases a buffer on an "empty" mbarrier, on
// which only the issuing thread waits (no block barrier in the loop, so the two warpgroups drift
// up to a tile apart); otherwise every thread loads its part with cp.async. Per key tile
// and warpgroup:
//   S[64 x BK] = Q K^T     wgmma m64nBKk16, Q and K from shared memory (4 k-steps over dh 64)
//   online softmax of S in registers (fp32, exp2 as one FFMA + ex2.approx), P = bf16(S)
//   O[64 x 72] += P V1     wgmma m64n72k16, P from registers, V^T and a ones row from shared
//                          memory: columns 0..63 the output, column 64 the row sum of P (ONES)
// The gate is folded into V once per call: vt[h][c][j] = bf16(gamma_j * v_global[j][h, c]), the
// transposed layout making both wgmma B operands K-major. LAZY: the running max moves only when a
// tile's max exceeds it by more than 8, so most tiles skip the rescale of O. STAT ("wgstat"):
// after the first key tile each row's softmax offset is fixed from a Cauchy-Schwarz bound (|q|
// times the head's largest |k|, key_norm_max_kernel), so later tiles take no max. The default on
// sm_90a, "wgpipe" (global_pipe_kernel), is that kernel pipelined within each warpgroup: the next
// tile's Q K^T and this tile's P V in flight together, the softmax under the P V.
// Shared-memory tiles use the 128-byte swizzle of the wgmma descriptors (16-byte chunk c of row r
// stored at chunk c ^ (r % 8), rows of 128 bytes, 8-row groups 1024 bytes apart, tiles 1024-byte
// aligned). Per row the arithmetic does not depend on the shard: every row sees the same key tiles
// in the same order.
#include <cmath>
#include <string>

#include "kernels/attention/attention_wgmma.hpp"
#include "kernels/attention/tiles.cuh"
#include "kernels/common/common.cuh"
#include "kernels/common/wgmma.cuh"

namespace sparsa::kern {

namespace {

#ifdef SPARSA_WGMMA  // device helpers, compiled for sm_90a only
// D[64 x 72] += A[64 x 16] (registers) * B[72 x 16]^T (shared, descriptor)
__device__ __forceinline__ void wgmma_rs_n72(float (&d)[36], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%"
      "25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35}, {%36,%37,%38,%39}, %40, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// P = 2^(s sc - u) of one S tile for the offsets u of this thread's rows a and b (log2 units,
// finite): the exponentials of softmax_tile, and with a fixed u (STAT) the whole softmax.
template <int NJ>
__device__ __forceinline__ void softmax_fixed(float (&s)[4 * NJ], float sc, float u_a, float u_b) {
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    s[4 * j] = ex2_approx(fmaf(s[4 * j], sc, -u_a));
    s[4 * j + 1] = ex2_approx(fmaf(s[4 * j + 1], sc, -u_a));
    s[4 * j + 2] = ex2_approx(fmaf(s[4 * j + 2], sc, -u_b));
    s[4 * j + 3] = ex2_approx(fmaf(s[4 * j + 3], sc, -u_b));
  }
}
// l = l corr + this thread's partial sums of the P of one tile, for its rows a and b.
template <int NJ>
__device__ __forceinline__ void add_row_sums(const float (&s)[4 * NJ], float corr_a, float corr_b,
                                             float& l_a, float& l_b) {
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    sum_a += s[4 * j] + s[4 * j + 1];
    sum_b += s[4 * j + 2] + s[4 * j + 3];
  }
  l_a = l_a * corr_a + sum_a;
  l_b = l_b * corr_b + sum_b;
}
// STAT, after a row's first key tile (its max m, log2 units, and its Cauchy-Schwarz bound bnd):
// whether the row fixes its softmax offset (fix), the offset into m, and the factor that brings
// what was computed against the old m to it. u = min(bnd, m + 96), clamped to >= m against the
// bound's rounding, so the factor is <= 1; a row that keeps the running max (bnd - m > 140, or
// m = -inf) keeps m and gets 1 (exact).
__device__ __forceinline__ float fix_offset(float bnd, float& m, bool& fix) {
  fix = m > -INFINITY && bnd - m <= 140.0f;
  const float u = fix ? fmaxf(fminf(bnd, m + 96.0f), m) : m;
  const float f = fix ? ex2_approx(m - u) : 1.0f;
  m = u;
  return f;
}
// Online softmax of one S tile (NJ accumulator blocks of 8 columns; this thread's rows a and b),
// exp2 as one FFMA + ex2.approx with the log2(e)/sqrt(dh) scale `sc` folded in: S becomes P in
// place and m is updated; corr rescales the old output (and l). SUMS: also this thread's partial
// row sums l (without SUMS the caller gets them from a ones column of V). LAZY: the running max
// moves only when a tile's max exceeds it by more than 8 (so P <= 2^8, no overflow); otherwise
// corr is exactly 1 and the caller may skip the rescale (the FA4 trick). Either way softmax is
// exact up to rounding, and a row's arithmetic depends only on the row's own scores.
// fix_a, fix_b (STAT, which needs LAZY: the non-lazy branch ignores them): the row's offset m is
// fixed; it stays (corr exactly 1), so the row's P are 2^(s sc - m), the bits softmax_fixed gives.
template <int NJ, bool SUMS, bool LAZY>
__device__ __forceinline__ void softmax_tile(float (&s)[4 * NJ], float sc, float& m_a, float& m_b,
                                             float& l_a, float& l_b, float& corr_a, float& corr_b,
                                             bool fix_a = false, bool fix_b = false) {
  float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    mx_a = fmaxf(mx_a, fmaxf(s[4 * j], s[4 * j + 1]));
    mx_b = fmaxf(mx_b, fmaxf(s[4 * j + 2], s[4 * j + 3]));
  }
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
  float mn_a, mn_b;
  if constexpr (LAZY) {
    mn_a = !fix_a && mx_a * sc > m_a + 8.0f ? mx_a * sc : m_a;
    mn_b = !fix_b && mx_b * sc > m_b + 8.0f ? mx_b * sc : m_b;
  } else {
    mn_a = fmaxf(m_a, mx_a * sc);
    mn_b = fmaxf(m_b, mx_b * sc);
  }
  const float use_a = mn_a == -INFINITY ? 0.0f : mn_a, use_b = mn_b == -INFINITY ? 0.0f : mn_b;
  corr_a = fix_a ? 1.0f : ex2_approx(m_a - use_a);
  corr_b = fix_b ? 1.0f : ex2_approx(m_b - use_b);
  m_a = mn_a;
  m_b = mn_b;
  softmax_fixed<NJ>(s, sc, use_a, use_b);
  if constexpr (SUMS) add_row_sums<NJ>(s, corr_a, corr_b, l_a, l_b);
}
// P (fp32 accumulator layout) as bf16 A fragments of 16 keys each.
template <int NK>
__device__ __forceinline__ void pack_p(const float (&s)[8 * NK], uint32_t (&pa)[NK][4]) {
#pragma unroll
  for (int kk = 0; kk < NK; ++kk) {
    pa[kk][0] = pack_bf16(s[8 * kk], s[8 * kk + 1]);
    pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}
template <int N>
__device__ __forceinline__ void scale_o(float (&o)[N], float corr_a, float corr_b) {
#pragma unroll
  for (int j = 0; j < N / 4; ++j) {
    o[4 * j] *= corr_a;
    o[4 * j + 1] *= corr_a;
    o[4 * j + 2] *= corr_b;
    o[4 * j + 3] *= corr_b;
  }
}
// Sum of this thread's partial row sum over the 4 threads of its row.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
// The number of global keys the block whose last row is i1 sees: all of them, or (causal) those
// at positions <= i1.
__device__ __forceinline__ int64_t global_key_count(const AttentionParams& p, int64_t i1) {
  int64_t lo = 0, hi = p.n_global;
  if (!p.causal) return hi;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (p.pos_global[mid] <= i1)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}
// The block's BQ query rows from record position i0, head h, into the swizzled tile at q_tile by
// cp.async (rows outside the shard as zeros); NT threads. The caller commits and waits.
template <int BQ, int NT>
__device__ __forceinline__ void load_q_tile(uint32_t q_tile, const __nv_bfloat16* q,
                                            const AttentionParams& p, int64_t i0, int64_t h,
                                            int tid) {
  const int64_t d = p.n_heads * 64;
  for (int idx = tid; idx < BQ * 8; idx += NT) {
    const int r = idx / 8, c = idx % 8;
    const int64_t rr = i0 + r - p.first_pos;
    const bool ok = rr >= 0 && rr < p.n_tokens;
    cp_async16(q_tile + swz<64>(r, c), ok ? q + rr * d + h * 64 + c * 8 : q, ok);
  }
}
// The scores of global keys g0 .. g0 + BK - 1 that rows ra, rb (this thread's, in a block from
// row i0) do not see set to -inf: keys past n_global, and (causal) keys after the row.
template <int BK>
__device__ __forceinline__ void mask_global(float (&s)[BK / 2], const AttentionParams& p,
                                            int64_t g0, int64_t i0, int64_t ra, int64_t rb,
                                            int t4) {
  if (g0 + BK <= p.n_global && (!p.causal || p.pos_global[g0 + BK - 1] <= i0)) return;
#pragma unroll
  for (int j = 0; j < BK / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t gj = g0 + 8 * j + 2 * t4 + (e & 1);
      const bool ok = gj < p.n_global && (!p.causal || p.pos_global[gj] <= (e < 2 ? ra : rb));
      if (!ok) s[4 * j + e] = -INFINITY;
    }
}
// STAT: the Cauchy-Schwarz bounds |q| km of this thread's rows r and r + 8 of the warpgroup's Q
// tile qs (swizzled, in shared memory); km = the head's largest |k| times the scale (log2 units).
// The quad's 4 threads each take 2 of the 8 chunks of a row.
__device__ __forceinline__ void row_bounds(const unsigned char* qs, int r, int t4, float km,
                                           float& bnd_a, float& bnd_b) {
  float qa = 0.0f, qb = 0.0f;
#pragma unroll
  for (int c = 2 * t4; c < 2 * t4 + 2; ++c) {
    const uint4 va = *reinterpret_cast<const uint4*>(qs + swz<64>(r, c));
    const uint4 vb = *reinterpret_cast<const uint4*>(qs + swz<64>(r + 8, c));
    const __nv_bfloat16* ea = reinterpret_cast<const __nv_bfloat16*>(&va);
    const __nv_bfloat16* eb = reinterpret_cast<const __nv_bfloat16*>(&vb);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float x = __bfloat162float(ea[e]), y = __bfloat162float(eb[e]);
      qa = fmaf(x, x, qa);
      qb = fmaf(y, y, qb);
    }
  }
  bnd_a = sqrtf(quad_sum(qa)) * km;
  bnd_b = sqrtf(quad_sum(qb)) * km;
}
// The global kernels' output for this thread's rows ra, rb of head h: beta_h * O / l into
// p.global_scratch (fp32), rows outside [row_begin, row_end) not written.
template <int N>
__device__ __forceinline__ void global_epilogue(const AttentionParams& p, const float (&o)[N],
                                                float l_a, float l_b, int64_t ra, int64_t rb,
                                                int64_t h, int t4) {
  constexpr int DH = 64;
  const int64_t d = p.n_heads * DH;
  const float beta = p.beta[h];
  const float fa = l_a > 0.0f ? beta / l_a : 0.0f, fb = l_b > 0.0f ? beta / l_b : 0.0f;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t rr = (half ? rb : ra) - p.first_pos;
    if (rr < p.row_begin || rr >= p.row_end) continue;
    const float f = half ? fb : fa;
    float* grow = p.global_scratch + rr * d + h * DH;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float2 v;
      v.x = f * o[4 * j + 2 * half];
      v.y = f * o[4 * j + 2 * half + 1];
      *reinterpret_cast<float2*>(grow + j * 8 + 2 * t4) = v;
    }
  }
}
#endif  // SPARSA_WGMMA

// A BULK stage image, byte for byte the global kernel's shared-memory stage for 128-key tiles
// with the ones row: the K tile (128 rows of 128 bytes), then two V^T sub-tiles of 64 keys (64
// channel rows, the ones row and 7 zero rows, 128 bytes each).
constexpr int kImgK = 128 * 128, kImgVSub = 72 * 128, kImgStage = kImgK + 2 * kImgVSub;

struct WgArgs {
  AttentionParams p;
  const __nv_bfloat16* vt;  // [d][g_pad]: gamma_j * v_global[j][c], zero for j >= n_global
  // BULK: per head and key tile of 128, the shared-memory image of one stage (K tile, then the
  // two V^T sub-tiles with their ones and zero rows), copied by one bulk copy (pack_stage_kernel).
  const unsigned char* img;
  int64_t g_pad;      // n_global rounded up to 128
  int64_t tile_pos0;  // record position of the first query tile (a multiple of BQ)
  float scale_log2;   // log2(e) / sqrt(64)
  const float* kmax;  // STAT: [n_heads] the largest |k| of the head's global keys
};

// BULK: 0 every thread loads with cp.async; 1 one bulk copy a tile, a block barrier per tile
// before a buffer is refilled; 2 the same, but each warpgroup releases the buffer on an "empty"
// mbarrier and only the issuing thread waits for both releases (no block barrier in the loop).
// STAT (with LAZY, ONES, BULK): after the first key tile each row fixes its softmax offset
// u = min(B, m0 + 96) instead of tracking the running max: B = |q| max_j |k_j| sc (Cauchy-
// Schwarz: no score of the row exceeds it, up to rounding) and m0 the first tile's max, so P <=
// ~1, the largest P of the row is >= 2^-96 (P values below 2^-126 lost: < G 2^-30 of the sum),
// and a warp whose rows are all fixed skips the max, its shuffles and the rescale in every later
// tile. A row where B - m0 > 140 (P up to 2^44: O stays finite) or m0 = -inf keeps the running
// max (its warp then takes the max path, where fixed rows keep u: the same bits as the fast
// path). Exact up to rounding either way; a row's arithmetic depends only on the row and the
// global set, not on its neighbours in the warp (which another sharding changes).
template <int NWG, int BK, int S, int MINB, bool LAZY, bool ONES, int BULK, bool STAT = false>
__global__ void __launch_bounds__(128 * NWG, MINB)
    global_wg_kernel(const __grid_constant__ WgArgs a) {
#ifdef SPARSA_WGMMA
  static_assert(BK == 64 || BK == 128, "key tile of 64 or 128");
  static_assert(S >= 2, "at least two stages");
  static_assert(!BULK || (ONES && BK == 128), "BULK images hold 128-key tiles with the ones row");
  constexpr int DH = 64, NT = 128 * NWG, BQ = 64 * NWG;
  constexpr int kKTile = BK * 128;                  // bytes: BK rows of 64 bf16
  constexpr int kVRows = ONES ? 72 : 64;            // V^T rows: channels (+ ones, 7 zero rows)
  constexpr int kVSub = kVRows * 128;               // one V^T sub-tile: 64 keys
  constexpr int kStage = kKTile + BK / 64 * kVSub;  // K tile, then V^T as BK / 64 sub-tiles
  constexpr int NO = ONES ? 36 : 32;                // output accumulators (+ the row sums)
  static_assert(!BULK || kStage == kImgStage, "a BULK stage is one packed image");
  const AttentionParams& p = a.p;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t q_tile = base;
  auto k_tile = [&](int s) { return base + BQ * 128 + (uint32_t)s * kStage; };
  auto v_tile = [&](int s) { return k_tile(s) + kKTile; };
  auto bar = [&](int s) { return k_tile(S) + 8u * (uint32_t)s; };          // BULK: after the stages
  auto empty = [&](int s) { return k_tile(S) + 8u * (uint32_t)(S + s); };  // BULK == 2

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t d = p.n_heads * DH, h = blockIdx.y;
  const int64_t i0 = a.tile_pos0 + (int64_t)blockIdx.x * BQ, i1 = i0 + BQ - 1;
  const auto* q = static_cast<const __nv_bfloat16*>(p.q);
  const auto* kg = static_cast<const __nv_bfloat16*>(p.k_global);

  const int64_t n_keys = global_key_count(p, i1);
  const int64_t n_tiles = (n_keys + BK - 1) / BK;

  if constexpr (BULK) {  // the images hold the ones and zero rows
    if (threadIdx.x == 0) {
      for (int st = 0; st < S; ++st) {
        mbar_init(bar(st), 1);
        if constexpr (BULK == 2) mbar_init(empty(st), NWG);
      }
      mbar_init_fence();
    }
  } else if constexpr (ONES) {  // V^T rows 64..71 of every sub-tile: ones, zeros (not reloaded)
    for (int idx = tid; idx < S * (BK / 64) * 8 * 8; idx += NT) {
      const int chunk = idx % 64, sub = idx / 64;  // 8 rows x 8 chunks of 16 bytes a sub-tile
      const uint32_t addr =
          k_tile(sub / (BK / 64)) + kKTile + (sub % (BK / 64)) * kVSub + 64 * 128 + chunk * 16;
      const uint32_t v = chunk < 8 ? 0x3F803F80u : 0u;  // bf16 1.0 pairs in row 64
      asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(v));
    }
  }

  // Per-thread source pointers, advanced by whole tiles: K rows tid / 8 + it * NT / 8, V^T rows
  // (channels) tid / (BK / 8) + it * NT / (BK / 8).
  constexpr int kKIt = BK * 8 / NT, kVIt = 64 * (BK / 8) / NT;
  static_assert(BK * 8 % NT == 0 && 64 * (BK / 8) % NT == 0, "whole loads per thread");
  const __nv_bfloat16* kp = kg + (int64_t)(tid / 8) * d + h * DH + (tid % 8) * 8;
  const __nv_bfloat16* vp = a.vt + (h * DH + tid / (BK / 8)) * a.g_pad + (tid % (BK / 8)) * 8;
  const int vc = tid % (BK / 8);
  const uint32_t k_dst = swz<64>(tid / 8, tid % 8);
  const uint32_t v_dst = (vc / 8) * kVSub + swz<64>(tid / (BK / 8), vc % 8);
  const int64_t img_tiles = a.g_pad / BK;
  auto issue = [&](int64_t t, int s) {
    if constexpr (BULK) {
      if (tid == 0 && t < n_tiles) {
        if (BULK == 2 && t >= S) mbar_wait(empty(s), (uint32_t)(((t - S) / S) & 1));
        bulk_load(k_tile(s), a.img + ((int64_t)h * img_tiles + t) * kStage, kStage, bar(s));
      }
      return;
    }
    if (t < n_tiles) {
      const int64_t g0 = t * BK;
      const bool last = g0 + BK > p.n_global;
#pragma unroll
      for (int it = 0; it < kKIt; ++it) {
        const int64_t r = g0 + tid / 8 + it * (NT / 8);
        const bool ok = !last || r < p.n_global;
        cp_async16(k_tile(s) + k_dst + it * (NT / 8) * 128, ok ? kp + (g0 + it * (NT / 8)) * d : kg,
                   ok);
      }
#pragma unroll
      for (int it = 0; it < kVIt; ++it)
        cp_async16(v_tile(s) + v_dst + it * (NT / (BK / 8)) * 128,
                   vp + (int64_t)it * (NT / (BK / 8)) * a.g_pad + g0, true);
    }
    cp_async_commit();
  };

  load_q_tile<BQ, NT>(q_tile, q, p, i0, h, tid);
  cp_async_commit();
  if constexpr (BULK) {  // Q landed and the barriers initialised before any thread goes on
    cp_async_wait<0>();
    proxy_fence();
    __syncthreads();
  }
#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s, s);

  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
  const float sc = a.scale_log2;
  const uint64_t dq = desc128(q_tile + wg * 64 * 128);
  const int t4 = lane % 4;
  const int64_t ra = i0 + wg * 64 + warp * 16 + lane / 4, rb = ra + 8;

  // STAT: this thread's rows' Cauchy-Schwarz bounds (log2 units)
  static_assert(!STAT || (LAZY && ONES && BULK),
                "STAT: the row sums from the ones column, Q read "
                "after BULK's barrier");
  float bnd_a = 0.0f, bnd_b = 0.0f;
  bool fix_a = false, fix_b = false, fixed = false;  // fixed: both rows of every lane
  if constexpr (STAT)
    row_bounds(smem_raw + (q_tile - smem_u32(smem_raw)) + wg * 64 * 128, warp * 16 + lane / 4, t4,
               a.kmax[h] * sc * 1.001f, bnd_a, bnd_b);

  int cur = 0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    if constexpr (BULK) {
      mbar_wait(bar(cur), (uint32_t)((t / S) & 1));  // tile t landed (the TMA unit's writes)
    } else {
      cp_async_wait<S - 2>();
      proxy_fence();  // this thread's cp.async data, visible to the wgmma (async proxy)
    }
    if constexpr (BULK != 2) __syncthreads();  // every warpgroup is done with tile t - 1's buffer
    {
      int nb = cur + S - 1;
      if (nb >= S) nb -= S;
      issue(t + S - 1, nb);  // into the buffer of tile t - 1, whose wgmmas have completed
    }
    float s[BK / 2];
    wg_fence();
    {
      const uint64_t dk = desc128(k_tile(cur));
#pragma unroll
      for (int kk = 0; kk < DH / 16; ++kk) {
        if constexpr (BK == 128)
          wgmma_ss_n128(s, dq + 2 * kk, dk + 2 * kk, kk);
        else
          wgmma_ss_n64(s, dq + 2 * kk, dk + 2 * kk, kk);
      }
    }
    wg_commit();
    wg_wait<0>();
    reg_fence(s);

    mask_global<BK>(s, p, t * BK, i0, ra, rb, t4);
    float corr_a = 1.0f, corr_b = 1.0f;
    if (STAT && fixed)
      softmax_fixed<BK / 8>(s, sc, m_a, m_b);
    else
      softmax_tile<BK / 8, !ONES, LAZY>(s, sc, m_a, m_b, l_a, l_b, corr_a, corr_b, fix_a, fix_b);
    uint32_t pa[BK / 16][4];
    pack_p<BK / 16>(s, pa);
    if (!(STAT && fixed) && (!LAZY || __any_sync(0xffffffffu, corr_a != 1.0f || corr_b != 1.0f)))
      scale_o<NO>(o, corr_a, corr_b);
    reg_fence(o);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      const uint64_t dv = desc128(v_tile(cur) + (kk / 4) * kVSub) + 2 * (kk % 4);
      if constexpr (ONES)
        wgmma_rs_n72(o, pa[kk], dv);
      else
        wgmma_rs_n64(reinterpret_cast<float(&)[32]>(o), pa[kk], dv);
    }
    wg_commit();
    wg_wait<0>();
    reg_fence(o);
    if constexpr (STAT) {
      if (t == 0) {  // fix the offsets, and bring the first tile's O (and row sums) to them
        const float f_a = fix_offset(bnd_a, m_a, fix_a), f_b = fix_offset(bnd_b, m_b, fix_b);
        scale_o<NO>(o, f_a, f_b);
        fixed = __all_sync(0xffffffffu, fix_a && fix_b);
      }
    }
    if constexpr (BULK == 2)
      if (tid % 128 == 0) mbar_arrive(empty(cur));  // this warpgroup is done with the buffer
    if (++cur == S) cur = 0;
  }
  cp_async_wait<0>();

  if constexpr (ONES) {  // column 64: the sum of this row's P (as rounded to bf16)
    l_a = __shfl_sync(0xffffffffu, o[32], lane & ~3);
    l_b = __shfl_sync(0xffffffffu, o[34], lane & ~3);
  } else {
    l_a = quad_sum(l_a);
    l_b = quad_sum(l_b);
  }
  global_epilogue(p, o, l_a, l_b, ra, rb, h, t4);
#else
  __trap();  // compiled only for sm_90a; the launcher checks wgmma_available() first
#endif
}

#ifdef SPARSA_WGMMA
// Barrier of one warpgroup's 128 threads (named barrier `bar`; 0 when the block is one warpgroup).
__device__ __forceinline__ void wg_sync(int bar) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(bar) : "memory");
}
// wg_sync that also returns whether x holds for any of the 128 threads.
__device__ __forceinline__ bool wg_sync_or(int bar, bool x) {
  uint32_t r;
  asm volatile(
      "{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\nbar.red.or.pred q, %2, 128, p;\n"
      "selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(r)
      : "r"((uint32_t)x), "r"(bar)
      : "memory");
  return r != 0;
}

// The band part of one warpgroup's 64 query rows from record position wr0, head h: out = bf16(
// alpha_h * Local_i + the global part), the global part from p.global_in (float, when given) or,
// GS > 0, from shared memory: gs[GS * i] is this thread's accumulator i (beta_h * Global of rows
// ra, rb). q_wg: the rows' swizzled Q tile; stages: 2 S tiles of 8 KB (1024-aligned) this
// warpgroup alone uses; wtid: the thread's index in the warpgroup; bar: its named barrier.
template <int S, bool FROZEN, int GS>
__device__ __forceinline__ void band_rows(const WgArgs& a, int64_t h, int64_t wr0, uint32_t q_wg,
                                          uint32_t stages, int wtid, int bar, const float* gs) {
  static_assert(S >= 2, "at least two stages");
  constexpr int DH = 64, NT = 128, BK = 64;
  constexpr int kTile = BK * 128;
  const AttentionParams& p = a.p;
  auto k_tile = [&](int s) { return stages + (uint32_t)(2 * s) * kTile; };
  auto v_tile = [&](int s) { return stages + (uint32_t)(2 * s + 1) * kTile; };

  const int warp = wtid / 32, lane = wtid % 32;
  const int64_t d = p.n_heads * DH;
  const BandWindow band(p);
  const int64_t kv_end = band.kv_end;
  const auto* k = static_cast<const __nv_bfloat16*>(p.k);
  const auto* v = static_cast<const __nv_bfloat16*>(p.v);

  static_assert(BK == 64, "band key tiles of 64 (BandWindow)");
  int64_t n_tiles = 0, t_lo = 0;
  if (!p.skip_local) band.tiles(wr0, wr0 + 63, t_lo, n_tiles);
  auto issue = [&](int64_t t, int s) {
    if (t < n_tiles) {
      const int64_t j0 = (t_lo + t) * BK;
#pragma unroll
      for (int it = 0; it < BK * 8 / NT; ++it) {
        const int idx = wtid + it * NT;
        const int r = idx / 8, c = idx % 8;
        const int64_t j = j0 + r;
        const bool ok = j >= p.kv_begin && j < kv_end;
        const int64_t off = ok ? (j - p.kv_begin) * d + h * DH + c * 8 : 0;
        cp_async16(k_tile(s) + swz<64>(r, c), k + off, ok);
        cp_async16(v_tile(s) + swz<64>(r, c), v + off, ok);
      }
    }
    cp_async_commit();  // always: the group count stays uniform
  };

  const float sc = a.scale_log2;
  const uint64_t dq = desc128(q_wg);
  const int t4 = lane % 4;
  const int64_t ra = wr0 + warp * 16 + lane / 4, rb = ra + 8;  // this thread's two rows
  bool bad_a = false, bad_b = false;  // FROZEN: the rows the exact pass redoes
  // Scores of the key tile from record position j0 outside this thread's rows' windows to -inf.
  auto mask = [&](float(&s)[32], int64_t j0) {
    if (band.col_lo(wr0 + 63, j0) <= 0 && band.col_hi(wr0, j0) >= 63) return;  // none masked
    const int lo_a = band.col_lo(ra, j0), hi_a = band.col_hi(ra, j0);
    const int lo_b = band.col_lo(rb, j0), hi_b = band.col_hi(rb, j0);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * t4 + (e & 1);
        const bool ok = e < 2 ? (col >= lo_a && col <= hi_a) : (col >= lo_b && col <= hi_b);
        if (!ok) s[4 * j + e] = -INFINITY;
      }
  };

  // FROZEN: pass 0 with frozen offsets, pass 1 (the plain kernel's) only if a row needs it.
#pragma unroll 1
  for (int pass = FROZEN ? 0 : 1; pass < 2; ++pass) {
    const bool frozen = FROZEN && pass == 0;
    if (FROZEN && pass == 1 && !wg_sync_or(bar, bad_a || bad_b)) break;
#pragma unroll
    for (int s = 0; s < S - 1; ++s) issue(s, s);

    float o[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) o[i] = 0.0f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
    bool fix_a = false, fix_b = false, fixed = false;  // frozen: rows with m0; all of the warp's

    int cur = 0;
    for (int64_t t = 0; t < n_tiles; ++t) {
      cp_async_wait<S - 2>();
      proxy_fence();
      wg_sync(bar);  // tile t landed for everyone; everyone is done with tile t - 1's buffer
      {
        int nb = cur + S - 1;
        if (nb >= S) nb -= S;
        issue(t + S - 1, nb);
      }
      const int buf = cur;
      if (++cur == S) cur = 0;
      const int64_t j0 = (t_lo + t) * BK;
      // Rows' windows are monotone in the row: the first row has the lowest lo, the last the
      // highest hi.
      if (band.col_lo(wr0, j0) > band.col_hi(wr0 + 63, j0))
        continue;  // no row of this warpgroup sees it
      float s[32];
      wg_fence();
      {
        const uint64_t dk = desc128(k_tile(buf));
#pragma unroll
        for (int kk = 0; kk < DH / 16; ++kk) wgmma_ss_n64(s, dq + 2 * kk, dk + 2 * kk, kk);
      }
      wg_commit();
      wg_wait<0>();
      reg_fence(s);
      mask(s, j0);
      float corr_a = 1.0f, corr_b = 1.0f;
      if (frozen && fixed) {  // every row of the warp has its offset: P = 2^(s sc - m0)
        softmax_fixed<8>(s, sc, m_a, m_b);
        add_row_sums<8>(s, 1.0f, 1.0f, l_a, l_b);
      } else if (frozen) {  // rows with an offset keep it (corr 1): the same bits as above
        softmax_tile<8, true, true>(s, sc, m_a, m_b, l_a, l_b, corr_a, corr_b, fix_a, fix_b);
      } else {
        softmax_tile<8, true, false>(s, sc, m_a, m_b, l_a, l_b, corr_a, corr_b);
      }
      uint32_t pa[4][4];
      pack_p<4>(s, pa);
      if (!(frozen && fixed))
        scale_o<32>(o, corr_a, corr_b);  // the lazy rescale measured slower here (bench/NOTES.md)
      reg_fence(o);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_n64<1>(o, pa[kk], desc128(v_tile(buf) + kk * 2048));
      wg_commit();
      wg_wait<0>();
      reg_fence(o);
      if (frozen && !fixed) {  // a row's offset is frozen once it has seen a key
        fix_a = m_a > -INFINITY;
        fix_b = m_b > -INFINITY;
        fixed = __all_sync(0xffffffffu, fix_a && fix_b);
      }
    }
    cp_async_wait<0>();  // no copy in flight at exit (or before the exact pass)

    l_a = quad_sum(l_a);
    l_b = quad_sum(l_b);
    bool write_a = true, write_b = true;
    if (FROZEN) {
      if (frozen) {  // a row whose l or O left the float range is redone by the exact pass
        // l < 2^64 (NaN fails too): alpha / l stays a normal float for any sane alpha (the exact
        // pass's l is at most the key count)
        bool ok_a = l_a < 0x1p64f, ok_b = l_b < 0x1p64f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          ok_a = ok_a && isfinite(o[4 * j]) && isfinite(o[4 * j + 1]);
          ok_b = ok_b && isfinite(o[4 * j + 2]) && isfinite(o[4 * j + 3]);
        }
        const unsigned quad = 0xfu << (lane & ~3);
        bad_a = __any_sync(0xffffffffu, !ok_a) && (__ballot_sync(0xffffffffu, !ok_a) & quad) != 0;
        bad_b = __any_sync(0xffffffffu, !ok_b) && (__ballot_sync(0xffffffffu, !ok_b) & quad) != 0;
        write_a = !bad_a;
        write_b = !bad_b;
      } else {
        write_a = bad_a;
        write_b = bad_b;
      }
    }
    const float alpha = p.alpha[h];
    const float fa = l_a > 0.0f ? alpha / l_a : 0.0f, fb = l_b > 0.0f ? alpha / l_b : 0.0f;
    auto* out = static_cast<__nv_bfloat16*>(p.out);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t rr = (half ? rb : ra) - p.first_pos;
      if (rr < p.row_begin || rr >= p.row_end || !(half ? write_b : write_a)) continue;
      const float f = half ? fb : fa;
      __nv_bfloat16* orow = out + rr * d + h * DH;
      const float* grow = GS == 0 && p.global_in ? p.global_in + rr * d + h * DH : nullptr;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        // rounded products, then rounded sums (never contracted to an FMA), whichever way
        // the global part comes: the fused kernel's bits are the two kernels'
        float x = __fmul_rn(f, o[4 * j + 2 * half]), y = __fmul_rn(f, o[4 * j + 2 * half + 1]);
        if constexpr (GS > 0) {
          x = __fadd_rn(x, gs[GS * (4 * j + 2 * half)]);
          y = __fadd_rn(y, gs[GS * (4 * j + 2 * half + 1)]);
        } else if (grow) {
          const float2 gg = *reinterpret_cast<const float2*>(grow + j * 8 + 2 * t4);
          x = __fadd_rn(x, gg.x);
          y = __fadd_rn(y, gg.y);
        }
        *reinterpret_cast<__nv_bfloat162*>(orow + j * 8 + 2 * t4) = __floats2bfloat162_rn(x, y);
      }
    }
  }  // pass
}
#endif  // SPARSA_WGMMA

// The global part pipelined within each warpgroup (FA3's intra-warpgroup overlap): at key tile
// t, S_{t+1} = Q K_{t+1}^T and O += P_t V_t are issued together, and the softmax of S_{t+1} runs
// while P_t V_t is on the tensor cores. Tiles, order, the fixed offsets and the lazy rescale as
// global_wg_kernel's "wgstat" (BULK images); a rescale of O (corr of tile t + 1, or tile 0's
// move to the fixed offset) waits for P_t V_t, as it followed it there. The row sums are FADDs
// of P in float32 (SUMS), not the images' ones column: with it in flight (one n72 wgmma or n64 +
// n8, with 128- or 64-key tiles) ptxas serializes the wgmmas (C7511, "insufficient register
// resources"), without it not. NWG warpgroups a block, one block an SM (~155 registers); an S-stage
// ring, S >= 3 (tiles t and t + 1 are in use while t + 2 .. load).
// BAND (0: none) fuses the band part: once every warpgroup is done with the ring, each warpgroup
// runs band_rows for its 64 rows in a third of the ring (BAND 2: frozen offsets, "wgstat"; 1: the
// running max, "wg"), adding this kernel's beta_h * Global (kept in shared memory past the ring,
// 48 KB at NWG 3), and writes p.out: the bits of this kernel then the band kernel, without the
// float round trip through p.global_scratch (4 bytes a value written and read back) or loading
// Q twice. band_rows is inlined: called as a function, ptxas serializes every wgmma of the kernel
// (C7510) and the global loop loses its overlap (25.1 ms against 20.9, bench/NOTES.md).
template <int NWG, int S, int BAND = 0>
__global__ void __launch_bounds__(128 * NWG, 1)
    global_pipe_kernel(const __grid_constant__ WgArgs a) {
#ifdef SPARSA_WGMMA
  static_assert(S >= 3, "tiles t and t + 1 in use, t + 2 loading");
  constexpr int DH = 64, NT = 128 * NWG, BQ = 64 * NWG, BK = 128;
  constexpr int kKTile = BK * 128, kVSub = 72 * 128, kStage = kKTile + 2 * kVSub, NO = 32;
  static_assert(kStage == kImgStage, "a stage is one packed image");
  const AttentionParams& p = a.p;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t q_tile = base;
  auto k_tile = [&](int s) { return base + BQ * 128 + (uint32_t)s * kStage; };
  auto v_tile = [&](int s) { return k_tile(s) + kKTile; };
  auto full = [&](int s) { return k_tile(S) + 8u * (uint32_t)s; };
  auto empty = [&](int s) { return k_tile(S) + 8u * (uint32_t)(S + s); };

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t h = blockIdx.y;
  const int64_t i0 = a.tile_pos0 + (int64_t)blockIdx.x * BQ, i1 = i0 + BQ - 1;
  const auto* q = static_cast<const __nv_bfloat16*>(p.q);
  const int64_t n_keys = global_key_count(p, i1);
  const int64_t n_tiles = (n_keys + BK - 1) / BK, img_tiles = a.g_pad / BK;
  if (tid == 0) {
    for (int st = 0; st < S; ++st) {
      mbar_init(full(st), 1);
      mbar_init(empty(st), NWG);
    }
    mbar_init_fence();
  }
  auto issue = [&](int64_t t) {  // tile t into its stage, once the stage's tile t - S is released
    if (tid == 0 && t < n_tiles) {
      const int st = (int)(t % S);
      if (t >= S) mbar_wait(empty(st), (uint32_t)(((t - S) / S) & 1));
      bulk_load(k_tile(st), a.img + ((int64_t)h * img_tiles + t) * kStage, kStage, full(st));
    }
  };
  load_q_tile<BQ, NT>(q_tile, q, p, i0, h, tid);
  cp_async_commit();
  cp_async_wait<0>();
  proxy_fence();
  __syncthreads();  // Q landed and the barriers initialised
  for (int64_t t = 0; t < S - 1; ++t) issue(t);

  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
  const float sc = a.scale_log2;
  const uint64_t dq = desc128(q_tile + wg * 64 * 128);
  const int t4 = lane % 4;
  const int64_t ra = i0 + wg * 64 + warp * 16 + lane / 4, rb = ra + 8;
  float bnd_a, bnd_b;  // the rows' Cauchy-Schwarz bounds (log2 units)
  row_bounds(smem_raw + (q_tile - smem_u32(smem_raw)) + wg * 64 * 128, warp * 16 + lane / 4, t4,
             a.kmax[h] * sc * 1.001f, bnd_a, bnd_b);

  float s[BK / 2];
  uint32_t pa[BK / 16][4];
  bool fix_a = false, fix_b = false, fixed = false;
  auto s_issue = [&](int64_t t) {  // S = Q K_t^T, committed as one group
    const uint64_t dk = desc128(k_tile((int)(t % S)));
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) wgmma_ss_n128(s, dq + 2 * kk, dk + 2 * kk, kk);
    wg_commit();
  };
  auto mask = [&](int64_t t) { mask_global<BK>(s, p, t * BK, i0, ra, rb, t4); };
  // The softmax of S (tile t): P in s, the rescale of O it asks for in corr (1: none).
  auto softmax = [&](float& corr_a, float& corr_b) {
    corr_a = corr_b = 1.0f;
    if (fixed) {
      softmax_fixed<BK / 8>(s, sc, m_a, m_b);
      add_row_sums<BK / 8>(s, 1.0f, 1.0f, l_a, l_b);  // softmax_tile's sums with corr = 1
    } else {
      softmax_tile<BK / 8, true, true>(s, sc, m_a, m_b, l_a, l_b, corr_a, corr_b, fix_a, fix_b);
    }
  };
  float corr_a = 1.0f, corr_b = 1.0f, fix_sa = 1.0f, fix_sb = 1.0f;
  if (n_tiles > 0) {  // tile 0's P, and the offsets fixed from its max (applied to O after P_0 V_0)
    mbar_wait(full(0), 0);
    wg_fence();
    s_issue(0);
    wg_wait<0>();
    reg_fence(s);
    mask(0);
    softmax(corr_a, corr_b);  // O is zero: its rescale changes nothing
    pack_p<BK / 16>(s, pa);
    fix_sa = fix_offset(bnd_a, m_a, fix_a);
    fix_sb = fix_offset(bnd_b, m_b, fix_b);
    l_a *= fix_sa;  // O follows once P_0 V_0 has landed
    l_b *= fix_sb;
    fixed = __all_sync(0xffffffffu, fix_a && fix_b);
  }
  auto pv_issue = [&](int64_t t) {  // O += P_t V_t, committed as one group
    const int st = (int)(t % S);
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)  // V^T rows 0..63 of the image (not the ones row)
      wgmma_rs_n64(o, pa[kk], desc128(v_tile(st) + (kk / 4) * kVSub) + 2 * (kk % 4));
    wg_commit();
  };
  auto pv_done = [&](int64_t t) {  // P_t V_t has landed in O (and is done reading pa)
    reg_fence(o);
    reg_fence(pa);
    if (t == 0) scale_o<NO>(o, fix_sa, fix_sb);            // tile 0's O to the fixed offsets
    if (tid % 128 == 0) mbar_arrive(empty((int)(t % S)));  // this warpgroup is done with tile t
  };
  // Every tile but the last: S_{t+1} and P_t V_t issued, the softmax of S_{t+1} once S_{t+1} has
  // landed (wait for all but the last group) while P_t V_t runs. (Unconditional: ptxas
  // serializes the wgmmas where the issues and waits are under a branch.)
  for (int64_t t = 0; t + 1 < n_tiles; ++t) {
    issue(t + S - 1);  // into the stage of tile t - 1, released at the end of the last iteration
    mbar_wait(full((int)((t + 1) % S)), (uint32_t)(((t + 1) / S) & 1));
    reg_fence(o);
    wg_fence();
    s_issue(t + 1);
    pv_issue(t);
    wg_wait<1>();
    reg_fence(s);
    mask(t + 1);
    softmax(corr_a, corr_b);
    wg_wait<0>();
    pv_done(t);
    pack_p<BK / 16>(s, pa);
    if (!fixed && __any_sync(0xffffffffu, corr_a != 1.0f || corr_b != 1.0f))
      scale_o<NO>(o, corr_a, corr_b);
  }
  if (n_tiles > 0) {  // the last tile's P V
    reg_fence(o);
    wg_fence();
    pv_issue(n_tiles - 1);
    wg_wait<0>();
    pv_done(n_tiles - 1);
  }
  l_a = quad_sum(l_a);
  l_b = quad_sum(l_b);
  if constexpr (BAND == 0) {
    global_epilogue(p, o, l_a, l_b, ra, rb, h, t4);
  } else {
    static_assert(2 * 2 * 64 * 128 * NWG <= S * kStage, "the band's stages fit in the ring");
    // global_epilogue's values, kept in shared memory after the ring (conflict-free: value i of
    // thread tid at i * NT + tid) to leave the band its registers
    float* gs = reinterpret_cast<float*>(smem_raw + (k_tile(S) + 16u * S - smem_u32(smem_raw)));
    const float beta = p.beta[h];
    const float fa = l_a > 0.0f ? beta / l_a : 0.0f, fb = l_b > 0.0f ? beta / l_b : 0.0f;
#pragma unroll
    for (int i = 0; i < NO; ++i) gs[i * NT + tid] = o[i] * (i % 4 < 2 ? fa : fb);
    __syncthreads();  // every warpgroup has consumed every tile: the ring is free
    // A warpgroup with no row to write (blocks straddle the launch's row range) skips the band:
    // the same choice for its 128 threads, and its barrier is its own.
    const int64_t w0 = i0 + wg * 64 - p.first_pos;  // its first row in the shard
    if (w0 + 64 > p.row_begin && w0 < p.row_end)
      band_rows<2, BAND == 2, NT>(a, h, i0 + wg * 64, q_tile + wg * 64 * 128,
                                  k_tile(0) + (uint32_t)wg * 2 * 2 * 64 * 128, tid % 128, 1 + wg,
                                  gs + tid);
  }
#else
  __trap();
#endif
}

// Band (local window) attention alone on wgmma: out = alpha_h * Local_i (+ global_in when given),
// bf16. NWG warpgroups of 64 query rows a block, key tiles of 64 at multiples of 64 record
// positions (S-stage cp.async ring), V used as stored ([key][channel], the transposed-B form of
// wgmma). A warpgroup skips the tiles none of its rows sees; elements outside a row's window are
// masked only in tiles not fully inside every row's window. A skipped or fully masked tile leaves
// m, l and O bit-for-bit unchanged, and every row walks its tiles in ascending record order, so a
// row's arithmetic does not depend on the shard.
// FROZEN ("wgstat"): a row's softmax offset is frozen at the max of the first key tile where it
// sees a key (its exact running max until then), so later tiles take no max, no shuffles and no
// rescale of O once every row of the warp has seen a key. P = 2^(s sc - m0) may then exceed 1:
// exact up to rounding while it stays finite (elements below 2^-126 of m0 are lost, as below 2^-126
// of the running max they are in the exact pass). A row whose l reaches 2^64 (scores ~64 log2
// units above m0: alpha / l would lose bits) or whose O is not finite takes the result of a second
// pass over the block's tiles with the running max, the bits of the plain kernel; the other rows
// keep the first pass's. Either way a row's bits depend only on the row's window (for finite
// inputs: a non-finite V in a tile the row walks poisons it through 0 * inf, in both passes, as
// in every variant here).

template <int S, int MINB, bool FROZEN = false>
__global__ void __launch_bounds__(128, MINB) band_wg_kernel(const __grid_constant__ WgArgs a) {
#ifdef SPARSA_WGMMA
  constexpr int BQ = 64;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const int64_t i0 = a.tile_pos0 + (int64_t)blockIdx.x * BQ;
  load_q_tile<BQ, 128>(base, static_cast<const __nv_bfloat16*>(a.p.q), a.p, i0, blockIdx.y,
                       threadIdx.x);
  cp_async_commit();  // waited for with the first key tile
  band_rows<S, FROZEN, 0>(a, blockIdx.y, i0, base, base + BQ * 128, threadIdx.x, 0, nullptr);
#else
  __trap();
#endif
}

// vt[c][j] = bf16(gamma_j * v_global[j][c]) for j < n_global, 0 up to g_pad.
__global__ void fold_gate_kernel(const __nv_bfloat16* vg, const float* gamma, int64_t n_global,
                                 int64_t d, int64_t g_pad, __nv_bfloat16* vt) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= d * g_pad) return;
  const int64_t c = idx / g_pad, j = idx % g_pad;
  vt[idx] = j < n_global ? __float2bfloat16_rn(__bfloat162float(vg[j * d + c]) * gamma[j])
                         : __float2bfloat16_rn(0.0f);
}

// The BULK stage images (kImgStage bytes) for head h and key tile t (128 keys): K rows in the
// 128-byte swizzle, then the two V^T sub-tiles with the gate folded in. One thread per 16-byte
// chunk; keys >= n_global are zero.
__global__ void pack_stage_kernel(const __nv_bfloat16* kg, const __nv_bfloat16* vg,
                                  const float* gamma, int64_t n_global, int64_t n_heads,
                                  int64_t n_tiles, unsigned char* img) {
  constexpr int kK = kImgK, kSub = kImgVSub, kStage = kImgStage, kChunks = kStage / 16;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n_heads * n_tiles * kChunks) return;
  const int64_t tile = idx / kChunks, h = tile / n_tiles, t = tile % n_tiles;
  const int q = (int)(idx % kChunks);
  const int64_t d = n_heads * 64;
  __align__(16) __nv_bfloat16 v8[8];
  uint32_t off;
  if (q < kK / 16) {  // K: row r = key t*128 + r, chunk c = channels 8c..8c+7
    const int r = q / 8, c = q % 8;
    const int64_t j = t * 128 + r;
    for (int e = 0; e < 8; ++e)
      v8[e] = j < n_global ? kg[j * d + h * 64 + c * 8 + e] : __float2bfloat16_rn(0.0f);
    off = swz<64>(r, c);
  } else {  // V^T sub-tile u: row = channel (64: ones, 65..71: zeros), chunk c = keys 8c..8c+7
    const int w = q - kK / 16, u = w / (kSub / 16), row = (w % (kSub / 16)) / 8, c = w % 8;
    for (int e = 0; e < 8; ++e) {
      const int64_t j = t * 128 + u * 64 + c * 8 + e;
      float x = 0.0f;
      if (row < 64 && j < n_global)
        x = __bfloat162float(vg[j * d + h * 64 + row]) * gamma[j];
      else if (row == 64)
        x = 1.0f;
      v8[e] = __float2bfloat16_rn(x);
    }
    off = kK + u * kSub + swz<64>(row, c);
  }
  *reinterpret_cast<uint4*>(img + tile * kStage + off) = *reinterpret_cast<const uint4*>(v8);
}

// kmax[h] = max over the global keys j of |k_j| in head h (one block a head; max is exact in
// any order).
__global__ void key_norm_max_kernel(const __nv_bfloat16* kg, int64_t n_global, int64_t n_heads,
                                    float* kmax) {
  __shared__ float part[32];
  const int64_t h = blockIdx.x, d = n_heads * 64;
  float mx = 0.0f;
  for (int64_t j = threadIdx.x; j < n_global; j += blockDim.x) {
    const __nv_bfloat16* k = kg + j * d + h * 64;
    float ss = 0.0f;
    for (int c = 0; c < 64; ++c) {
      const float x = __bfloat162float(k[c]);
      ss = fmaf(x, x, ss);
    }
    mx = fmaxf(mx, ss);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = mx;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)blockDim.x / 32; ++w) mx = fmaxf(mx, part[w]);
    kmax[h] = sqrtf(mx);
  }
}

__global__ void probe_kernel(int* out) {
#ifdef SPARSA_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}

template <int NWG, int BK, int S, int MINB, bool LAZY, bool ONES, int BULK, bool STAT = false>
void launch_wg(const WgArgs& a_in, cudaStream_t stream) {
  constexpr int BQ = 64 * NWG;
  const int smem = 1024 + BQ * 128 + S * (BK * 128 + BK / 64 * (ONES ? 72 : 64) * 128) + S * 16;
  max_dynamic_smem_once<global_wg_kernel<NWG, BK, S, MINB, LAZY, ONES, BULK, STAT>>(smem);
  WgArgs a = a_in;
  const QueryTiles qt = query_tiles(a.p, BQ);
  a.tile_pos0 = qt.pos0;
  const dim3 grid = qt.grid;
  global_wg_kernel<NWG, BK, S, MINB, LAZY, ONES, BULK, STAT><<<grid, 128 * NWG, smem, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}

template <int NWG, int S, int BAND = 0>
void launch_pipe(const WgArgs& a_in, cudaStream_t stream) {
  constexpr int BQ = 64 * NWG;
  // BAND: the global part's values (NO = 32 floats a thread) after the ring's mbarriers
  const int smem = 1024 + BQ * 128 + S * kImgStage + 2 * S * 8 + (BAND ? 128 * NWG * 32 * 4 : 0);
  max_dynamic_smem_once<global_pipe_kernel<NWG, S, BAND>>(smem);
  WgArgs a = a_in;
  const QueryTiles qt = query_tiles(a.p, BQ);
  a.tile_pos0 = qt.pos0;
  global_pipe_kernel<NWG, S, BAND><<<qt.grid, 128 * NWG, smem, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}

template <int S, int MINB, bool FROZEN = false>
void launch_band_wg(const AttentionParams& p, cudaStream_t stream) {
  constexpr int BQ = 64;
  const int smem = 1024 + BQ * 128 + S * 2 * 64 * 128;
  max_dynamic_smem_once<band_wg_kernel<S, MINB, FROZEN>>(smem);
  WgArgs a{};
  a.p = p;
  a.scale_log2 = (float)(1.4426950408889634 / 8.0);
  const QueryTiles qt = query_tiles(p, BQ);
  a.tile_pos0 = qt.pos0;
  const dim3 grid = qt.grid;
  band_wg_kernel<S, MINB, FROZEN><<<grid, 128, smem, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}
}  // namespace

bool wgmma_available() {
  static const bool v = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0) return false;
    int* flag = nullptr;
    int host = 0;
    SPARSA_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    probe_kernel<<<1, 1>>>(flag);
    SPARSA_LAUNCH_CHECK();
    SPARSA_CUDA_CHECK(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost));
    SPARSA_CUDA_CHECK(cudaFree(flag));
    return host == 1;
  }();
  return v;
}

void launch_global_wgmma(const AttentionParams& p, const std::string& variant,
                         cudaStream_t stream) {
  if (p.type != DType::kBF16 || p.head_dim != 64 || p.n_global <= 0 ||
      (!p.global_scratch && !fused_variant(variant)))
    throw SystemError("attention: the wgmma global kernel needs bf16, head_dim 64 and a scratch");
  const int64_t d = p.n_heads * 64, g_pad = (p.n_global + 127) / 128 * 128;
  WgArgs a{};
  a.p = p;
  a.g_pad = g_pad;
  a.scale_log2 = (float)(1.4426950408889634 / 8.0);
  void* buf = nullptr;  // the gate-folded V^T, or the BULK stage images
  if (variant == "wg0" || variant == "wgcp") {
    SPARSA_CUDA_CHECK(cudaMallocAsync(&buf, (size_t)(d * g_pad) * sizeof(__nv_bfloat16), stream));
    a.vt = static_cast<__nv_bfloat16*>(buf);
    fold_gate_kernel<<<grid_for(d * g_pad, 256), 256, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(p.v_global), p.gamma, p.n_global, d, g_pad,
        static_cast<__nv_bfloat16*>(buf));
    SPARSA_LAUNCH_CHECK();
    if (variant == "wg0")
      launch_wg<2, 128, 2, 2, false, false, 0>(a, stream);
    else
      launch_wg<2, 128, 2, 2, true, true, 0>(a, stream);
  } else {
    const int64_t tiles = g_pad / 128, chunks = p.n_heads * tiles * (kImgStage / 16);
    const size_t img_bytes = (size_t)(p.n_heads * tiles * kImgStage);
    SPARSA_CUDA_CHECK(cudaMallocAsync(&buf, img_bytes + (size_t)p.n_heads * 4, stream));
    a.img = static_cast<const unsigned char*>(buf);
    const bool stat =
        variant == "wgstat" || variant.rfind("wgpipe", 0) == 0 || fused_variant(variant);
    if (stat) {
      float* kmax = reinterpret_cast<float*>(static_cast<unsigned char*>(buf) + img_bytes);
      key_norm_max_kernel<<<(unsigned)p.n_heads, 256, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(p.k_global), p.n_global, p.n_heads, kmax);
      SPARSA_LAUNCH_CHECK();
      a.kmax = kmax;
    }
    pack_stage_kernel<<<grid_for(chunks, 256), 256, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(p.k_global),
        static_cast<const __nv_bfloat16*>(p.v_global), p.gamma, p.n_global, p.n_heads, tiles,
        static_cast<unsigned char*>(buf));
    SPARSA_LAUNCH_CHECK();
    if (variant == "wgbar")
      launch_wg<2, 128, 2, 2, true, true, 1>(a, stream);
    else if (variant == "wgstat")
      launch_wg<2, 128, 2, 2, true, true, 2, true>(a, stream);
    else if (variant == "wgpipe")
      launch_pipe<3, 4>(a, stream);
    else if (variant == "wgfused")
      launch_pipe<3, 4, 2>(a, stream);
    else if (variant == "wgfused-wg")
      launch_pipe<3, 4, 1>(a, stream);
    else if (variant == "wgpipe3")
      launch_pipe<3, 3>(a, stream);
    else if (variant == "wgpipe2")
      launch_pipe<2, 4>(a, stream);
    else
      launch_wg<2, 128, 2, 2, true, true, 2>(a, stream);
  }
  SPARSA_CUDA_CHECK(cudaFreeAsync(buf, stream));
}

void launch_band_wgmma(const AttentionParams& p, const std::string& variant, cudaStream_t stream) {
  if (p.type != DType::kBF16 || p.head_dim != 64 || (p.n_global > 0 && !p.global_in))
    throw SystemError("attention: the wgmma band kernel needs bf16, head_dim 64, no fused global");
  if (variant == "wgs3")
    launch_band_wg<3, 4>(p, stream);
  else if (variant == "wgstat")
    launch_band_wg<2, 4, true>(p, stream);
  else
    launch_band_wg<2, 4>(p, stream);
}

}  // namespace sparsa::kern
