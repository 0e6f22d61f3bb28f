// sparsa kernels: small elementwise and reshaping ops: GELU, row gather, bin pooling, the
// reverse-complement flip of tokens and the reverse-complement average of outputs.
#pragma once
#include "kernels/common/types.hpp"

namespace sparsa::kern {

// out = GELU(in) (exact erf form). float32 output: erf in double, as cpu::gelu; bf16 output:
// erff in float (within 2 ulp of float, far below bf16 rounding).
struct GeluParams {
  const float* in;  // [count]
  void* out;        // [count] of out_type
  DType out_type;
  int64_t count;
  // When set: the input is bf16 (`in` unused), the output bf16 (count even); may alias out.
  const void* in_bf16 = nullptr;
  // bf16 in and out: when set, the output of every bf16 input (a table of 65536, from
  // launch_gelu_table; the same bits as computing it), looked up in shared memory where a block
  // can have 128 KB of it (else computed).
  const void* table = nullptr;
};
void launch_gelu(const GeluParams& p, cudaStream_t stream);
// table[b] = the bf16 GELU of the bf16 whose bits are b, for all 65536 b (128 KB, device).
void launch_gelu_table(void* table, cudaStream_t stream);

// dst[r] = src[rows[r]] for rows of row_bytes bytes (row_bytes a multiple of 2).
struct GatherRowsParams {
  const void* src;      // [*, row_bytes]
  const int64_t* rows;  // [n_rows] (device)
  void* dst;            // [n_rows, row_bytes]
  int64_t n_rows, row_bytes;
};
void launch_gather_rows(const GatherRowsParams& p, cudaStream_t stream);

// Mean over bins of `bin` rows: out[b] = mean(y[b*bin .. min(n, (b+1)*bin))), summed in double
// in row order (as pool_shard in pipelines/embed). reversed: row t of the bins is y[n - 1 - t]
// (the reverse-complement pass, whose row n - 1 - t is forward row t), summed in t order.
struct PoolParams {
  const float* y;  // [n_tokens, d]
  float* out;      // [ceil(n_tokens / bin), d]
  int64_t n_tokens, d, bin;
  bool reversed = false;
};
void launch_pool(const PoolParams& p, cudaStream_t stream);

// Reverse complement of DNA tokens: out[i] = comp(in[n-1-i]); A<->T, C<->G, others unchanged.
struct RcTokensParams {
  const int32_t* in;  // [n_tokens]
  int32_t* out;       // [n_tokens], must not alias in
  int64_t n_tokens;
};
void launch_rc_tokens(const RcTokensParams& p, cudaStream_t stream);

// out[i] = (fwd[i] + rc[n-1-i]) / 2 (spec 2, --rc-average).
struct RcAverageParams {
  const float* fwd;  // [n_tokens, d]
  const float* rc;   // [n_tokens, d], row n-1-i is token i's reverse-strand output
  float* out;        // [n_tokens, d], may alias fwd
  int64_t n_tokens, d;
};
void launch_rc_average(const RcAverageParams& p, cudaStream_t stream);

// Many records packed one after another (CudaModel::forward_packed):
// - pool_segments: for segment k, the double sum (in t order, from 0) of rows first + step t,
//   t < count, of y: into sums[k] (a mean pool's block sums, as pool_shard makes them), or as
//   float(sum / count) into means[k] (a bin, as launch_pool: step -1 is a mirrored shard's bin).
struct PoolSegment {
  int64_t first, count, step;
};
struct PoolSegmentsParams {
  const float* y;  // [rows, d]
  int64_t d;
  const PoolSegment* segs;  // [n_segs] (device), or nullptr: uniform blocks (below)
  int64_t n_segs;
  // segs == nullptr: segment k is rows k * block .. min(rows, (k + 1) * block) - 1, step 1 (one
  // record's mean-pool blocks: no list to build and copy for millions of rows).
  int64_t block = 0, rows = 0;
  double* sums = nullptr;  // [n_segs, d], or
  float* means = nullptr;  // [n_segs, d]
};
void launch_pool_segments(const PoolSegmentsParams& p, cudaStream_t stream);
// - rc_average_rows: x[rows[i]] = 0.5 x[rows[i]] + 0.5 x[partners[i]] (the bits of
//   launch_rc_average: a forward row and the reverse-complement row that mirrors it).
struct RcAverageRowsParams {
  float* x;                 // [*, d]
  const int64_t* rows;      // [count] (device)
  const int64_t* partners;  // [count] (device)
  int64_t count, d;
};
void launch_rc_average_rows(const RcAverageRowsParams& p, cudaStream_t stream);
// - nonfinite_segments: for each record r, the smallest index (row - seg[r]) d + j of a value of
//   y that is not finite, atomicMin'ed into bad[r] (the caller sets it to ~0 first).
struct NonfiniteSegmentsParams {
  const float* y;  // [rows, d]
  int64_t rows, d;
  const int32_t* row_record;  // [rows] (device)
  const int64_t* seg;         // [R + 1] (device)
  unsigned long long* bad;    // [R]
};
void launch_nonfinite_segments(const NonfiniteSegmentsParams& p, cudaStream_t stream);

// out[i] = float16(in[i]), round to nearest even (as the host's conversion for the HDF5 file).
struct ToF16Params {
  const float* in;  // [count]
  void* out;        // [count] of float16
  int64_t count;
  // Optional: the smallest index (plus base) of a finite value that became Inf (|x| >= 65520:
  // past float16's range) is atomicMin'ed here; the caller sets it to ~0 first.
  unsigned long long* overflow = nullptr;
  int64_t base = 0;
};
void launch_to_f16(const ToF16Params& p, cudaStream_t stream);

}  // namespace sparsa::kern
