// Tensor-core DSA attention (bf16 in, fp32 accumulate): one block = 4 warps = 64 queries of one
// head; each warp owns 16 query rows. The block walks the key tiles of its band (64 keys each,
// aligned to record positions, fully masked tiles skipped) and then the global set, with one
// online softmax per part, and writes alpha * Local + beta * Global.
//
// Fragments follow the PTX layouts of mma.m16n8k16 (row.col): thread `lane` holds rows lane/4 and
// lane/4 + 8, columns 2 * (lane % 4) + {0, 1} of each 8-column accumulator tile. Shared-memory
// rows are head_dim bf16 (head_dim / 8 chunks of 16 bytes), chunk c stored at c ^ (row % 8) so
// that ldmatrix reads 8 rows without bank conflicts.
#include <cmath>
#include <cstdlib>
#include <string>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_wgmma.hpp"
#include "kernels/attention/tiles.cuh"
#include "kernels/common/common.cuh"

namespace sparsa::kern {

namespace {

constexpr int kBq = 64, kBk = 64, kWarps = 4, kThreads = 32 * kWarps;

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// Copies 64 rows (row t from src_row(t), or zeros where it returns null) of one head into a tile.
// NOTE: a zero-filled row still names a valid address (`any`): nothing is read from it.
template <int DH, class RowPtr>
__device__ __forceinline__ void load_tile(uint32_t tile, RowPtr src_row, const void* any) {
  constexpr int kChunks = DH / 8;
  for (int idx = threadIdx.x; idx < 64 * kChunks; idx += kThreads) {
    const int row = idx / kChunks, ch = idx % kChunks;
    const __nv_bfloat16* src = src_row(row);
    cp_async16(tile + swz<DH>(row, ch), src ? src + ch * 8 : any, src != nullptr);
  }
}

struct TcArgs {
  AttentionParams p;
  int64_t tile_pos0;  // record position of the first query tile (a multiple of kBq)
  float scale_log2;   // log2(e) / sqrt(head_dim)
};

template <int DH, int MINB>
__global__ void __launch_bounds__(kThreads, MINB)
    attention_tc_kernel(const __grid_constant__ TcArgs a) {
  const AttentionParams& p = a.p;
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kTile = 64 * DH * 2;  // bytes of one 64-row tile
  const uint32_t q_tile = smem_u32(smem);
  // K tiles at 1, 2 and V tiles at 3, 4 (x kTile): computed, not indexed (no local memory).
  auto k_tile = [&](int buf) { return q_tile + (uint32_t)(1 + buf) * kTile; };
  auto v_tile = [&](int buf) { return q_tile + (uint32_t)(3 + buf) * kTile; };
  float* gam_s = reinterpret_cast<float*>(smem + 5 * kTile);  // [2][64]
  int64_t* pos_s = reinterpret_cast<int64_t*>(gam_s + 128);   // [2][64]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t d = p.n_heads * DH, h = blockIdx.y;
  const int64_t i0 = a.tile_pos0 + (int64_t)blockIdx.x * kBq, i1 = i0 + kBq - 1;
  const BandWindow band(p);
  const int64_t kv_end = band.kv_end, w = band.w;
  const auto* q = static_cast<const __nv_bfloat16*>(p.q);
  const auto* k = static_cast<const __nv_bfloat16*>(p.k);
  const auto* v = static_cast<const __nv_bfloat16*>(p.v);
  const auto* kg = static_cast<const __nv_bfloat16*>(p.k_global);
  const auto* vg = static_cast<const __nv_bfloat16*>(p.v_global);

  // The key tiles: local ones [t_lo, t_lo + n_local) of aligned 64-key tiles, then global ones.
  static_assert(kBk == 64, "band key tiles of 64 (BandWindow)");
  int64_t n_local = 0, t_lo = 0;
  if (!p.skip_local) band.tiles(i0, i1, t_lo, n_local);
  int64_t n_glob = p.global_in ? 0 : (p.n_global + kBk - 1) / kBk;
  if (p.causal && n_glob > 0) {  // tiles whose first position is beyond the query tile see nothing
    int64_t lo = 0, hi = n_glob;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (p.pos_global[mid * kBk] <= i1)
        lo = mid + 1;
      else
        hi = mid;
    }
    n_glob = lo;
  }
  const int64_t n_tiles = n_local + n_glob;

  auto issue = [&](int64_t t, int buf) {
    if (t < n_local) {
      const int64_t j0 = (t_lo + t) * kBk;
      auto row_k = [&](int r) -> const __nv_bfloat16* {
        const int64_t j = j0 + r;
        return (j >= p.kv_begin && j < kv_end) ? k + (j - p.kv_begin) * d + h * DH : nullptr;
      };
      auto row_v = [&](int r) -> const __nv_bfloat16* {
        const int64_t j = j0 + r;
        return (j >= p.kv_begin && j < kv_end) ? v + (j - p.kv_begin) * d + h * DH : nullptr;
      };
      load_tile<DH>(k_tile(buf), row_k, k);
      load_tile<DH>(v_tile(buf), row_v, v);
    } else {
      const int64_t g0 = (t - n_local) * kBk;
      auto row_k = [&](int r) -> const __nv_bfloat16* {
        return g0 + r < p.n_global ? kg + (g0 + r) * d + h * DH : nullptr;
      };
      auto row_v = [&](int r) -> const __nv_bfloat16* {
        return g0 + r < p.n_global ? vg + (g0 + r) * d + h * DH : nullptr;
      };
      load_tile<DH>(k_tile(buf), row_k, q);
      load_tile<DH>(v_tile(buf), row_v, q);
      if (threadIdx.x < kBk) {
        const int64_t g = g0 + threadIdx.x;
        gam_s[buf * kBk + threadIdx.x] = g < p.n_global ? p.gamma[g] : 0.0f;
        pos_s[buf * kBk + threadIdx.x] = g < p.n_global ? p.pos_global[g] : INT64_MAX;
      }
    }
    cp_async_commit();
  };

  // Queries: rows of positions i0 .. i1 that exist in this shard's q (zeros elsewhere).
  auto row_q = [&](int r) -> const __nv_bfloat16* {
    const int64_t rr = i0 + r - p.first_pos;
    return (rr >= 0 && rr < p.n_tokens) ? q + rr * d + h * DH : nullptr;
  };
  load_tile<DH>(q_tile, row_q, q);
  cp_async_commit();
  if (n_tiles > 0) issue(0, 0);

  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[DH / 16][4];
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk) {
    const int row = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
    ldsm_x4(q_tile + swz<DH>(row, kk * 2 + lane / 16), qf[kk]);
  }

  const int64_t ra = i0 + warp * 16 + lane / 4, rb = ra + 8;  // this thread's two query rows
  float o[DH / 8][4], acc[DH / 8][4];
#pragma unroll
  for (int n = 0; n < DH / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = acc[n][e] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

  // Adds weight * acc / l to o and restarts the online softmax.
  auto fold = [&](float weight) {
    float la = l_a + __shfl_xor_sync(0xffffffffu, l_a, 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    float lb = l_b + __shfl_xor_sync(0xffffffffu, l_b, 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    const float fa = la > 0.0f ? weight / la : 0.0f, fb = lb > 0.0f ? weight / lb : 0.0f;
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) {
      o[n][0] += fa * acc[n][0];
      o[n][1] += fa * acc[n][1];
      o[n][2] += fb * acc[n][2];
      o[n][3] += fb * acc[n][3];
      acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    }
    m_a = m_b = -INFINITY;
    l_a = l_b = 0.0f;
  };

  for (int64_t t = 0; t < n_tiles; ++t) {
    const int buf = (int)(t & 1);
    if (t + 1 < n_tiles) {
      issue(t + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bool global = t >= n_local;
    if (t == n_local && n_local > 0) fold(p.alpha[h]);

    // S = Q K^T for this warp's 16 rows and the 64 keys of the tile.
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        const int key = np * 16 + (lane % 8) + (lane / 16) * 8;
        ldsm_x4(k_tile(buf) + swz<DH>(key, kk * 2 + (lane / 8) % 2), b);
        mma_bf16(s[2 * np], qf[kk], b[0], b[1]);
        mma_bf16(s[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }

    // Scale, mask, online softmax (log2 domain).
    const int c0 = 2 * (lane % 4);
    bool full;
    int64_t j0 = 0;
    if (!global) {
      j0 = (t_lo + t) * kBk;
      full = j0 >= p.kv_begin && j0 + kBk <= kv_end && j0 >= i1 - w &&
             (p.causal ? j0 + kBk - 1 <= i0 : j0 + kBk - 1 <= i0 + w);
    } else {
      full = pos_s[buf * kBk + kBk - 1] != INT64_MAX &&
             (!p.causal || pos_s[buf * kBk + kBk - 1] <= i0);
    }
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * a.scale_log2;
        if (!full) {
          const int col = n * 8 + c0 + (e & 1);
          const int64_t i = e < 2 ? ra : rb;
          bool ok;
          if (!global) {
            const int64_t j = j0 + col;
            ok = j >= p.kv_begin && j < kv_end && j >= i - w && (p.causal ? j <= i : j <= i + w);
          } else {
            const int64_t pj = pos_s[buf * kBk + col];
            ok = pj != INT64_MAX && (!p.causal || pj <= i);
          }
          if (!ok) x = -INFINITY;
        }
        s[n][e] = x;
        if (e < 2)
          mx_a = fmaxf(mx_a, x);
        else
          mx_b = fmaxf(mx_b, x);
      }
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
    const float use_a = mn_a == -INFINITY ? 0.0f : mn_a, use_b = mn_b == -INFINITY ? 0.0f : mn_b;
    const float corr_a = exp2f(m_a - use_a), corr_b = exp2f(m_b - use_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      s[n][0] = exp2f(s[n][0] - use_a);
      s[n][1] = exp2f(s[n][1] - use_a);
      s[n][2] = exp2f(s[n][2] - use_b);
      s[n][3] = exp2f(s[n][3] - use_b);
      sum_a += s[n][0] + s[n][1];
      sum_b += s[n][2] + s[n][3];
    }
    l_a = l_a * corr_a + sum_a;
    l_b = l_b * corr_b + sum_b;
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) {
      acc[n][0] *= corr_a;
      acc[n][1] *= corr_a;
      acc[n][2] *= corr_b;
      acc[n][3] *= corr_b;
    }
    if (global) {  // the gate multiplies v_j outside the softmax: scale p after the sums
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const float g0 = gam_s[buf * kBk + n * 8 + c0], g1 = gam_s[buf * kBk + n * 8 + c0 + 1];
        s[n][0] *= g0;
        s[n][1] *= g1;
        s[n][2] *= g0;
        s[n][3] *= g1;
      }
    }

    // acc += P V.
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kt][0], s[2 * kt][1]),
                              pack_bf16(s[2 * kt][2], s[2 * kt][3]),
                              pack_bf16(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                              pack_bf16(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
      for (int dp = 0; dp < DH / 16; ++dp) {
        uint32_t b[4];
        const int key = kt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        ldsm_x4_t(v_tile(buf) + swz<DH>(key, dp * 2 + lane / 16), b);
        mma_bf16(acc[2 * dp], pa, b[0], b[1]);
        mma_bf16(acc[2 * dp + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites the other buffer
  }
  if (n_glob == 0 && n_local > 0)
    fold(p.alpha[h]);
  else if (n_glob > 0)
    fold(p.beta[h]);

  // Store the rows of this shard in [row_begin, row_end).
  auto* out = static_cast<__nv_bfloat16*>(p.out);
  const int c0 = 2 * (lane % 4);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t rr = (half ? rb : ra) - p.first_pos;
    if (rr < p.row_begin || rr >= p.row_end) continue;
    __nv_bfloat16* orow = out + rr * d + h * DH;
    if (p.global_in) {
      const float* grow = p.global_in + rr * d + h * DH;
#pragma unroll
      for (int n = 0; n < DH / 8; ++n) {
        const float2 g = *reinterpret_cast<const float2*>(grow + n * 8 + c0);
        *reinterpret_cast<__nv_bfloat162*>(orow + n * 8 + c0) =
            __floats2bfloat162_rn(o[n][2 * half] + g.x, o[n][2 * half + 1] + g.y);
      }
    } else {
#pragma unroll
      for (int n = 0; n < DH / 8; ++n)
        *reinterpret_cast<__nv_bfloat162*>(orow + n * 8 + c0) =
            __floats2bfloat162_rn(o[n][2 * half], o[n][2 * half + 1]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// v4 kernels (head_dim 64): band-only and global-only, S-stage cp.async pipelines with one
// barrier per key tile, exp2 as one FFMA + ex2.approx (the log2(e)/sqrt(dh) scale folded in),
// and in the band kernel: 16 rows a warp, NW warps a block (BQ = 16 NW queries), int32 masks on
// the tile's column range, and 16-key sub-blocks that no row of a warp sees skipped (no QK^T,
// no exp2, no PV). Per row: tiles aligned to record positions in ascending order, so the
// arithmetic does not depend on the shard; a skipped or fully masked sub-block changes nothing.

// Copies ROWS rows (row t from src_row(t), zeros where it returns null) of one head with NT
// threads.
template <int DH, int ROWS, int NT, class RowPtr>
__device__ __forceinline__ void load_rows(uint32_t tile, RowPtr src_row, const void* any) {
  constexpr int kChunks = DH / 8;
#pragma unroll
  for (int it = 0; it < (ROWS * kChunks + NT - 1) / NT; ++it) {
    const int idx = threadIdx.x + it * NT;
    if ((ROWS * kChunks) % NT != 0 && idx >= ROWS * kChunks) break;
    const int row = idx / kChunks, ch = idx % kChunks;
    const __nv_bfloat16* src = src_row(row);
    cp_async16(tile + swz<DH>(row, ch), src ? src + ch * 8 : any, src != nullptr);
  }
}

constexpr int band_minb(int nw) { return nw == 8 ? 2 : 4; }

// Band (local window) attention alone: out = alpha * Local (+ global_in when given).
template <int NW, int S>
__global__ void __launch_bounds__(32 * NW, band_minb(NW))
    band_tc_kernel(const __grid_constant__ TcArgs a) {
  constexpr int DH = 64, BQ = 16 * NW, NT = 32 * NW;
  constexpr int kTile = 64 * DH * 2;
  const AttentionParams& p = a.p;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t q_tile = smem_u32(smem);
  const uint32_t kv0 = q_tile + BQ * DH * 2;
  auto k_tile = [&](int buf) { return kv0 + (uint32_t)(2 * buf) * kTile; };
  auto v_tile = [&](int buf) { return kv0 + (uint32_t)(2 * buf + 1) * kTile; };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t d = p.n_heads * DH, h = blockIdx.y;
  const int64_t i0 = a.tile_pos0 + (int64_t)blockIdx.x * BQ, i1 = i0 + BQ - 1;
  const BandWindow band(p);
  const int64_t kv_end = band.kv_end;
  const auto* q = static_cast<const __nv_bfloat16*>(p.q);
  const auto* k = static_cast<const __nv_bfloat16*>(p.k);
  const auto* v = static_cast<const __nv_bfloat16*>(p.v);

  int64_t n_tiles = 0, t_lo = 0;
  if (!p.skip_local) band.tiles(i0, i1, t_lo, n_tiles);
  auto issue = [&](int64_t t, int buf) {
    if (t < n_tiles) {
      const int64_t j0 = (t_lo + t) * kBk;
      auto row_k = [&](int r) -> const __nv_bfloat16* {
        const int64_t j = j0 + r;
        return (j >= p.kv_begin && j < kv_end) ? k + (j - p.kv_begin) * d + h * DH : nullptr;
      };
      auto row_v = [&](int r) -> const __nv_bfloat16* {
        const int64_t j = j0 + r;
        return (j >= p.kv_begin && j < kv_end) ? v + (j - p.kv_begin) * d + h * DH : nullptr;
      };
      load_rows<DH, 64, NT>(k_tile(buf), row_k, k);
      load_rows<DH, 64, NT>(v_tile(buf), row_v, v);
    }
    cp_async_commit();  // always: the group count stays uniform
  };

  auto row_q = [&](int r) -> const __nv_bfloat16* {
    const int64_t rr = i0 + r - p.first_pos;
    return (rr >= 0 && rr < p.n_tokens) ? q + rr * d + h * DH : nullptr;
  };
  load_rows<DH, BQ, NT>(q_tile, row_q, q);
  cp_async_commit();
#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s, s);
  cp_async_wait<S - 1>();  // the Q group
  __syncthreads();
  uint32_t qf[DH / 16][4];
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk) {
    const int row = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
    ldsm_x4(q_tile + swz<DH>(row, kk * 2 + lane / 16), qf[kk]);
  }

  const int64_t wr0 = i0 + warp * 16;              // this warp's first row
  const int64_t ra = wr0 + lane / 4, rb = ra + 8;  // this thread's two rows
  const int c0 = 2 * (lane % 4);
  float acc[DH / 8][4];
#pragma unroll
  for (int n = 0; n < DH / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
  const float sc = a.scale_log2;

  int buf = 0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    cp_async_wait<S - 2>();
    __syncthreads();  // tile t landed for everyone; everyone is done with tile t - 1's buffer
    {
      int nb = buf + S - 1;
      if (nb >= S) nb -= S;
      issue(t + S - 1, nb);
    }
    const int cur = buf;
    if (++buf == S) buf = 0;

    const int64_t j0 = (t_lo + t) * kBk;
    const int lo_f = band.col_lo(wr0, j0), lo_l = band.col_lo(wr0 + 15, j0);
    const int hi_f = band.col_hi(wr0, j0), hi_l = band.col_hi(wr0 + 15, j0);
    if (lo_f > hi_l) continue;  // no row of this warp sees a key of this tile
    const int lo_a = band.col_lo(ra, j0), hi_a = band.col_hi(ra, j0);
    const int lo_b = band.col_lo(rb, j0), hi_b = band.col_hi(rb, j0);

    float s[8][4];
    bool act[4];
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      act[np] = 16 * np + 15 >= lo_f && 16 * np <= hi_l;
#pragma unroll
      for (int e = 0; e < 4; ++e) s[2 * np][e] = s[2 * np + 1][e] = act[np] ? 0.0f : -INFINITY;
      if (act[np]) {
#pragma unroll
        for (int kk = 0; kk < DH / 16; ++kk) {
          uint32_t b[4];
          const int key = np * 16 + (lane % 8) + (lane / 16) * 8;
          ldsm_x4(k_tile(cur) + swz<DH>(key, kk * 2 + (lane / 8) % 2), b);
          mma_bf16(s[2 * np], qf[kk], b[0], b[1]);
          mma_bf16(s[2 * np + 1], qf[kk], b[2], b[3]);
        }
        if (!(16 * np >= lo_l && 16 * np + 15 <= hi_f)) {  // some element of the block masked
#pragma unroll
          for (int hn = 0; hn < 2; ++hn)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int col = (2 * np + hn) * 8 + c0 + (e & 1);
              const bool ok = e < 2 ? (col >= lo_a && col <= hi_a) : (col >= lo_b && col <= hi_b);
              if (!ok) s[2 * np + hn][e] = -INFINITY;
            }
        }
      }
    }
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      mx_a = fmaxf(mx_a, fmaxf(s[n][0], s[n][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[n][2], s[n][3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    const float mn_a = fmaxf(m_a, mx_a * sc), mn_b = fmaxf(m_b, mx_b * sc);
    const float use_a = mn_a == -INFINITY ? 0.0f : mn_a, use_b = mn_b == -INFINITY ? 0.0f : mn_b;
    const float corr_a = ex2_approx(m_a - use_a), corr_b = ex2_approx(m_b - use_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      if (act[n / 2]) {
        s[n][0] = ex2_approx(fmaf(s[n][0], sc, -use_a));
        s[n][1] = ex2_approx(fmaf(s[n][1], sc, -use_a));
        s[n][2] = ex2_approx(fmaf(s[n][2], sc, -use_b));
        s[n][3] = ex2_approx(fmaf(s[n][3], sc, -use_b));
        sum_a += s[n][0] + s[n][1];
        sum_b += s[n][2] + s[n][3];
      }
    }
    l_a = l_a * corr_a + sum_a;
    l_b = l_b * corr_b + sum_b;
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) {
      acc[n][0] *= corr_a;
      acc[n][1] *= corr_a;
      acc[n][2] *= corr_b;
      acc[n][3] *= corr_b;
    }
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
      if (!act[kt]) continue;
      const uint32_t pa[4] = {pack_bf16(s[2 * kt][0], s[2 * kt][1]),
                              pack_bf16(s[2 * kt][2], s[2 * kt][3]),
                              pack_bf16(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                              pack_bf16(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
      for (int dp = 0; dp < DH / 16; ++dp) {
        uint32_t b[4];
        const int key = kt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        ldsm_x4_t(v_tile(cur) + swz<DH>(key, dp * 2 + lane / 16), b);
        mma_bf16(acc[2 * dp], pa, b[0], b[1]);
        mma_bf16(acc[2 * dp + 1], pa, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();  // no copy in flight at exit

  float la = l_a + __shfl_xor_sync(0xffffffffu, l_a, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  float lb = l_b + __shfl_xor_sync(0xffffffffu, l_b, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
  const float alpha = p.alpha[h];
  const float fa = la > 0.0f ? alpha / la : 0.0f, fb = lb > 0.0f ? alpha / lb : 0.0f;
  auto* out = static_cast<__nv_bfloat16*>(p.out);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t rr = (half ? rb : ra) - p.first_pos;
    if (rr < p.row_begin || rr >= p.row_end) continue;
    const float f = half ? fb : fa;
    __nv_bfloat16* orow = out + rr * d + h * DH;
    if (p.global_in) {
      const float* grow = p.global_in + rr * d + h * DH;
#pragma unroll
      for (int n = 0; n < DH / 8; ++n) {
        const float2 g = *reinterpret_cast<const float2*>(grow + n * 8 + c0);
        *reinterpret_cast<__nv_bfloat162*>(orow + n * 8 + c0) =
            __floats2bfloat162_rn(f * acc[n][2 * half] + g.x, f * acc[n][2 * half + 1] + g.y);
      }
    } else {
#pragma unroll
      for (int n = 0; n < DH / 8; ++n)
        *reinterpret_cast<__nv_bfloat162*>(orow + n * 8 + c0) =
            __floats2bfloat162_rn(f * acc[n][2 * half], f * acc[n][2 * half + 1]);
    }
  }
}

// Global part alone, v4: MT m-tiles of 16 rows a warp, NW warps (BQ = 16 NW MT queries), S stages.
// Writes beta_h * Global (fp32) to p.global_scratch for rows [row_begin, row_end).
template <int MT, int NW, int S, int MINB>
__global__ void __launch_bounds__(32 * NW, MINB)
    global4_tc_kernel(const __grid_constant__ TcArgs a) {
  constexpr int DH = 64, NT = 32 * NW, BQ = 16 * NW * MT;
  constexpr int kTile = 64 * DH * 2;
  const AttentionParams& p = a.p;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t q_tile = smem_u32(smem);
  const uint32_t kv0 = q_tile + BQ * DH * 2;
  auto k_tile = [&](int buf) { return kv0 + (uint32_t)(2 * buf) * kTile; };
  auto v_tile = [&](int buf) { return kv0 + (uint32_t)(2 * buf + 1) * kTile; };
  float* gam_s = reinterpret_cast<float*>(smem + BQ * DH * 2 + 2 * S * kTile);  // [S][64]
  int64_t* pos_s = reinterpret_cast<int64_t*>(gam_s + S * kBk);                 // [S][64]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t d = p.n_heads * DH, h = blockIdx.y;
  const int64_t i0 = a.tile_pos0 + (int64_t)blockIdx.x * BQ, i1 = i0 + BQ - 1;
  const auto* q = static_cast<const __nv_bfloat16*>(p.q);
  const auto* kg = static_cast<const __nv_bfloat16*>(p.k_global);
  const auto* vg = static_cast<const __nv_bfloat16*>(p.v_global);

  int64_t n_tiles = (p.n_global + kBk - 1) / kBk;
  if (p.causal) {
    int64_t lo = 0, hi = n_tiles;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (p.pos_global[mid * kBk] <= i1)
        lo = mid + 1;
      else
        hi = mid;
    }
    n_tiles = lo;
  }
  auto issue = [&](int64_t t, int buf) {
    if (t < n_tiles) {
      const int64_t g0 = t * kBk;
      auto row_k = [&](int r) -> const __nv_bfloat16* {
        return g0 + r < p.n_global ? kg + (g0 + r) * d + h * DH : nullptr;
      };
      auto row_v = [&](int r) -> const __nv_bfloat16* {
        return g0 + r < p.n_global ? vg + (g0 + r) * d + h * DH : nullptr;
      };
      load_rows<DH, 64, NT>(k_tile(buf), row_k, q);
      load_rows<DH, 64, NT>(v_tile(buf), row_v, q);
      if (threadIdx.x < kBk) {
        const int64_t g = g0 + threadIdx.x;
        gam_s[buf * kBk + threadIdx.x] = g < p.n_global ? p.gamma[g] : 0.0f;
        pos_s[buf * kBk + threadIdx.x] = g < p.n_global ? p.pos_global[g] : INT64_MAX;
      }
    }
    cp_async_commit();
  };

  auto row_q = [&](int r) -> const __nv_bfloat16* {
    const int64_t rr = i0 + r - p.first_pos;
    return (rr >= 0 && rr < p.n_tokens) ? q + rr * d + h * DH : nullptr;
  };
  load_rows<DH, BQ, NT>(q_tile, row_q, q);
  cp_async_commit();
#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s, s);
  cp_async_wait<S - 1>();
  __syncthreads();
  uint32_t qf[MT][DH / 16][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) {
      const int row = mt * 16 * NW + warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
      ldsm_x4(q_tile + swz<DH>(row, kk * 2 + lane / 16), qf[mt][kk]);
    }

  float acc[MT][DH / 8][4];
  float m_r[MT][2], l_r[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int n = 0; n < DH / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][n][e] = 0.0f;
    m_r[mt][0] = m_r[mt][1] = -INFINITY;
    l_r[mt][0] = l_r[mt][1] = 0.0f;
  }
  const int c0 = 2 * (lane % 4);
  const float sc = a.scale_log2;

  int buf = 0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    cp_async_wait<S - 2>();
    __syncthreads();
    {
      int nb = buf + S - 1;
      if (nb >= S) nb -= S;
      issue(t + S - 1, nb);
    }
    const int cur = buf;
    if (++buf == S) buf = 0;

    float s[MT][8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        const int key = np * 16 + (lane % 8) + (lane / 16) * 8;
        ldsm_x4(k_tile(cur) + swz<DH>(key, kk * 2 + (lane / 8) % 2), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * np], qf[mt][kk], b[0], b[1]);
          mma_bf16(s[mt][2 * np + 1], qf[mt][kk], b[2], b[3]);
        }
      }
    }

    const int64_t last = pos_s[cur * kBk + kBk - 1];
    const bool full = last != INT64_MAX && (!p.causal || last <= i0);
    uint32_t pa[MT][4][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int64_t ra = i0 + mt * 16 * NW + warp * 16 + lane / 4, rb = ra + 8;
      if (!full) {
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t pj = pos_s[cur * kBk + n * 8 + c0 + (e & 1)];
            if (!(pj != INT64_MAX && (!p.causal || pj <= (e < 2 ? ra : rb))))
              s[mt][n][e] = -INFINITY;
          }
      }
      float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        mx_a = fmaxf(mx_a, fmaxf(s[mt][n][0], s[mt][n][1]));
        mx_b = fmaxf(mx_b, fmaxf(s[mt][n][2], s[mt][n][3]));
      }
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
      const float mn_a = fmaxf(m_r[mt][0], mx_a * sc), mn_b = fmaxf(m_r[mt][1], mx_b * sc);
      const float use_a = mn_a == -INFINITY ? 0.0f : mn_a, use_b = mn_b == -INFINITY ? 0.0f : mn_b;
      const float corr_a = ex2_approx(m_r[mt][0] - use_a), corr_b = ex2_approx(m_r[mt][1] - use_b);
      m_r[mt][0] = mn_a;
      m_r[mt][1] = mn_b;
      float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        s[mt][n][0] = ex2_approx(fmaf(s[mt][n][0], sc, -use_a));
        s[mt][n][1] = ex2_approx(fmaf(s[mt][n][1], sc, -use_a));
        s[mt][n][2] = ex2_approx(fmaf(s[mt][n][2], sc, -use_b));
        s[mt][n][3] = ex2_approx(fmaf(s[mt][n][3], sc, -use_b));
        sum_a += s[mt][n][0] + s[mt][n][1];
        sum_b += s[mt][n][2] + s[mt][n][3];
      }
      l_r[mt][0] = l_r[mt][0] * corr_a + sum_a;
      l_r[mt][1] = l_r[mt][1] * corr_b + sum_b;
#pragma unroll
      for (int n = 0; n < DH / 8; ++n) {
        acc[mt][n][0] *= corr_a;
        acc[mt][n][1] *= corr_a;
        acc[mt][n][2] *= corr_b;
        acc[mt][n][3] *= corr_b;
      }
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const float2 g = *reinterpret_cast<const float2*>(gam_s + cur * kBk + n * 8 + c0);
        s[mt][n][0] *= g.x;
        s[mt][n][1] *= g.y;
        s[mt][n][2] *= g.x;
        s[mt][n][3] *= g.y;
      }
#pragma unroll
      for (int kt = 0; kt < 4; ++kt) {
        pa[mt][kt][0] = pack_bf16(s[mt][2 * kt][0], s[mt][2 * kt][1]);
        pa[mt][kt][1] = pack_bf16(s[mt][2 * kt][2], s[mt][2 * kt][3]);
        pa[mt][kt][2] = pack_bf16(s[mt][2 * kt + 1][0], s[mt][2 * kt + 1][1]);
        pa[mt][kt][3] = pack_bf16(s[mt][2 * kt + 1][2], s[mt][2 * kt + 1][3]);
      }
    }
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
#pragma unroll
      for (int dp = 0; dp < DH / 16; ++dp) {
        uint32_t b[4];
        const int key = kt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        ldsm_x4_t(v_tile(cur) + swz<DH>(key, dp * 2 + lane / 16), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(acc[mt][2 * dp], pa[mt][kt], b[0], b[1]);
          mma_bf16(acc[mt][2 * dp + 1], pa[mt][kt], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

  const float beta = p.beta[h];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float la = l_r[mt][0] + __shfl_xor_sync(0xffffffffu, l_r[mt][0], 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    float lb = l_r[mt][1] + __shfl_xor_sync(0xffffffffu, l_r[mt][1], 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    const float fa = la > 0.0f ? beta / la : 0.0f, fb = lb > 0.0f ? beta / lb : 0.0f;
    const int64_t ra = i0 + mt * 16 * NW + warp * 16 + lane / 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t rr = ra + half * 8 - p.first_pos;
      if (rr < p.row_begin || rr >= p.row_end) continue;
      const float f = half ? fb : fa;
      float* grow = p.global_scratch + rr * d + h * DH;
#pragma unroll
      for (int n = 0; n < DH / 8; ++n) {
        float2 o;
        o.x = f * acc[mt][n][2 * half];
        o.y = f * acc[mt][n][2 * half + 1];
        *reinterpret_cast<float2*>(grow + n * 8 + c0) = o;
      }
    }
  }
}

// The kernel arguments and grid of a launch over query tiles of `bq` rows.
TcArgs tc_args(const AttentionParams& p, int64_t bq, dim3& grid) {
  const QueryTiles qt = query_tiles(p, bq);
  grid = qt.grid;
  TcArgs a{};
  a.p = p;
  a.tile_pos0 = qt.pos0;
  a.scale_log2 = (float)(1.4426950408889634 / std::sqrt((double)p.head_dim));
  return a;
}

template <int DH, int MINB>
void launch_dh(const AttentionParams& p, cudaStream_t stream) {
  const int smem = 5 * 64 * DH * 2 + 2 * kBk * (4 + 8);
  max_dynamic_smem_once<attention_tc_kernel<DH, MINB>>(smem);
  dim3 grid;
  const TcArgs a = tc_args(p, kBq, grid);
  attention_tc_kernel<DH, MINB><<<grid, kThreads, smem, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}

bool split_enabled() {
  static const bool v = [] {
    const char* e = std::getenv("SPARSA_ATTN_SPLIT");
    return !(e && e[0] == '0');
  }();
  return v;
}

// Kernel choice (head_dim 64, bf16), for A/B runs (scripts/device-check.sh, bench/NOTES.md).
// SPARSA_ATTN_BAND: auto (default: wgstat on an sm_90a device, else 8), wgstat, wg and wgs3
// (wgmma kernels, attention_wgmma.cu), 8 (v4 band kernel on mma.sync), old (the v1 fused kernel).
// SPARSA_ATTN_GLOBAL: auto (default on sm_90a: wgfused, or wgfused-wg with SPARSA_ATTN_BAND=wg,
// or wgpipe then the band kernel with any other band variant; else 2x4), wgfused, wgfused-wg,
// wgpipe, wgpipe3, wgstat, wgpipe2, wg, wgbar, wgcp and wg0 (wgmma), 2x4 (v4 global kernel on
// mma.sync).
// SPARSA_ATTN_SPLIT=0: the global part fused into the v1 kernel.
const char* env_or(const char* name, const char* dflt) {
  const char* e = std::getenv(name);
  return e && e[0] ? e : dflt;
}
const std::string& band_variant() {
  static const std::string v = env_or("SPARSA_ATTN_BAND", "auto");
  return v;
}
const std::string& global_variant() {
  static const std::string v = env_or("SPARSA_ATTN_GLOBAL", "auto");
  return v;
}

template <int NW, int S>
void launch_band(const AttentionParams& p, cudaStream_t stream) {
  constexpr int kBQ = 16 * NW;
  const int smem = (kBQ + 2 * S * 64) * 64 * 2;
  max_dynamic_smem_once<band_tc_kernel<NW, S>>(smem);
  dim3 grid;
  const TcArgs a = tc_args(p, kBQ, grid);
  band_tc_kernel<NW, S><<<grid, 32 * NW, smem, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}

template <int MT, int NW, int S, int MINB>
void launch_global4(const AttentionParams& p, cudaStream_t stream) {
  constexpr int kBQ = 16 * NW * MT;
  const int smem = (kBQ + 2 * S * 64) * 64 * 2 + S * kBk * (4 + 8);
  max_dynamic_smem_once<global4_tc_kernel<MT, NW, S, MINB>>(smem);
  dim3 grid;
  const TcArgs a = tc_args(p, kBQ, grid);
  global4_tc_kernel<MT, NW, S, MINB><<<grid, 32 * NW, smem, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}

// The global kernel variant for these parameters, "" when the global part is not split off (no
// global set, head_dim not 64, split_global false, SPARSA_ATTN_SPLIT=0).
std::string global_choice(const AttentionParams& p) {
  if (!p.split_global || p.head_dim != 64 || p.n_global <= 0 || !split_enabled()) return "";
  std::string gv = global_variant();
  if (gv == "auto") {
    const std::string& bv = band_variant();
    gv = !wgmma_available()               ? "2x4"
         : bv == "auto" || bv == "wgstat" ? "wgfused"
         : bv == "wg"                     ? "wgfused-wg"
                                          : "wgpipe";
  }
  return gv;
}

}  // namespace

bool global_scratch_needed_tc(const AttentionParams& p) {
  const std::string gv = global_choice(p);
  return !gv.empty() && !fused_variant(gv);
}

void launch_attention_tc(const AttentionParams& p_in, cudaStream_t stream) {
  AttentionParams p = p_in;
  const std::string gv = global_choice(p);
  if (fused_variant(gv)) {  // the band too: out written, no scratch
    launch_global_wgmma(p, gv, stream);
    return;
  }
  if (!gv.empty() && p.global_scratch) {
    if (gv.rfind("wg", 0) == 0)
      launch_global_wgmma(p, gv, stream);
    else
      launch_global4<2, 4, 3, 2>(p, stream);
    p.global_in = p.global_scratch;
  }
  // The band kernel alone serves every case without a global part of its own.
  if (p.head_dim == 64 && (p.global_in || p.n_global == 0) && band_variant() != "old") {
    std::string bv = band_variant();
    if (bv == "auto") bv = wgmma_available() ? "wgstat" : "8";
    if (bv.rfind("wg", 0) == 0) {
      launch_band_wgmma(p, bv, stream);
      return;
    }
    launch_band<8, 3>(p, stream);
    return;
  }
  if (p.head_dim == 64) {
    // 4 blocks an SM (128 registers): measured fastest for this kernel (bench/NOTES.md, v2).
    launch_dh<64, 4>(p, stream);
  } else {
    launch_dh<128, 1>(p, stream);
  }
}

}  // namespace sparsa::kern
