// sparsa kernels: tiling shared by the attention kernels (CUDA-only, internal to
// kernels/attention). Query tiles and key tiles sit at multiples of their size in record
// positions, so a row's arithmetic does not depend on how the record is sharded or chunked.
#pragma once
#include "kernels/attention/attention.hpp"
#include "kernels/common/common.cuh"

namespace sparsa::kern {

// Byte offset of (row, 16-byte chunk) in a tile of DH-wide bf16 rows, chunk c of row r stored at
// c ^ (r % 8): ldmatrix reads 8 rows without bank conflicts, and for DH = 64 (128-byte rows) it is
// the 128-byte swizzle of the wgmma descriptors.
template <int DH>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return (uint32_t)(row * DH * 2 + ((chunk ^ (row & 7)) << 4));
}
// 2^x by the MUFU (flushes denormals; 2^-inf = 0).
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Query tiles of `bq` rows covering shard rows [row_begin, row_end): the record position of the
// first tile and the launch grid (tiles x heads).
struct QueryTiles {
  int64_t pos0;
  dim3 grid;
};
inline QueryTiles query_tiles(const AttentionParams& p, int64_t bq) {
  const int64_t pos_begin = p.first_pos + p.row_begin, pos_end = p.first_pos + p.row_end;
  const int64_t pos0 = pos_begin / bq * bq, n = (pos_end - pos0 + bq - 1) / bq;
  if (n > 0x7fffffff) throw SystemError("attention: too many query tiles");
  return {pos0, dim3((unsigned)n, (unsigned)p.n_heads)};
}

// The local window over the keys [kv_begin, kv_end): W(i) = {|i - j| <= w} (causal: {i - w <= j
// <= i}), in key tiles of 64 at multiples of 64 record positions.
struct BandWindow {
  int64_t kv_begin, kv_end, w;
  bool causal;
  __device__ explicit BandWindow(const AttentionParams& p)
      : kv_begin(p.kv_begin), kv_end(p.kv_begin + p.kv_count), w(p.window), causal(p.causal) {}
  // The key tiles rows [i0, i1] see: the first tile's index t_lo and their count n (0: none).
  __device__ void tiles(int64_t i0, int64_t i1, int64_t& t_lo, int64_t& n) const {
    t_lo = n = 0;
    const int64_t klo = max(i0 - w, kv_begin), khi = min(causal ? i1 : i1 + w, kv_end - 1);
    if (khi >= klo) {
      t_lo = klo / 64;
      n = khi / 64 - t_lo + 1;
    }
  }
  // Valid key columns of row i in the tile starting at j0: [col_lo, col_hi], clamped to [-1, 64].
  __device__ int col_lo(int64_t i, int64_t j0) const { return clamp(max(kv_begin, i - w) - j0); }
  __device__ int col_hi(int64_t i, int64_t j0) const {
    return clamp(min(kv_end - 1, causal ? i : i + w) - j0);
  }

 private:
  __device__ static int clamp(int64_t x) { return (int)(x < -1 ? -1 : (x > 64 ? 64 : x)); }
};

}  // namespace sparsa::kern
