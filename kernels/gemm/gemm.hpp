// sparsa kernels: our own GEMM on Hopper warpgroup MMAs (sm_90a), for the products whose
// epilogue cuBLASLt cannot do: the MLP's up projection with the spec's exact-erf GELU fused
// (cuBLASLt's GELU epilogue is the tanh approximation).
//
//   y[M, N] = bf16(GELU(bf16(x[M, K] W[K, N])))   (or without the GELU: bf16(x W))
//
// bf16 operands, float32 accumulation, one rounding to bf16 of the product and, with the GELU,
// gelu_f (kernels/common/common.cuh) of that value rounded again: the bits of cuBLASLt's bf16
// output followed by the model's bf16 GELU table whenever the float32 sums agree. Each row's
// dot products run over k in one fixed order whatever M is, so a row's result does not depend on
// the shard (issue 4 item 7).
//
// Operands are pre-packed "images": the bytes a shared-memory stage needs, so that one bulk copy
// (TMA unit) moves a tile. A K-major tile holds rows of 64 bf16 (128 bytes) with the 128-byte
// swizzle of the wgmma descriptors: 16-byte chunk c of row r at chunk c ^ (r % 8).
//   x: [ceil(M / 128) * 2][K / 64] tiles of 64 rows x 64 k (8 KB): gemm_a_offset. The row block
//      is padded to 128 rows; padded rows are computed and not stored (RMSNorm writes this
//      layout directly: RmsNormParams::act_tiled).
//   W: [N / 128][K / 64] tiles of 128 output columns x 64 k (16 KB), i.e. W^T's rows:
//      gemm_b_offset, pack_gemm_b.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/common/types.hpp"

namespace sparsa::kern {

// Byte offset of element k (< 64) of row r within a swizzled tile of 128-byte rows.
SPARSA_HOST_DEVICE inline int64_t swizzle128_offset(int64_t r, int64_t k) {
  return r * 128 + ((((k >> 3) ^ r) & 7) << 4) + (k & 7) * 2;
}
// Byte offset of x[row][k] in the A images of a K-column operand.
SPARSA_HOST_DEVICE inline int64_t gemm_a_offset(int64_t row, int64_t k, int64_t K) {
  return ((row >> 6) * (K >> 6) + (k >> 6)) * 8192 + swizzle128_offset(row & 63, k & 63);
}
// Byte offset of W[k][col] in the B images of a [K, N] weight.
SPARSA_HOST_DEVICE inline int64_t gemm_b_offset(int64_t k, int64_t col, int64_t K) {
  return ((col >> 7) * (K >> 6) + (k >> 6)) * 16384 + swizzle128_offset(col & 127, k & 63);
}
// Bytes of the A images for M rows (padded to 128) of K columns.
inline int64_t gemm_a_bytes(int64_t m, int64_t k) { return (m + 127) / 128 * 128 * k * 2; }

// Whether gemm_images can run these shapes here: an sm_90a device (wgmma_available), K a
// multiple of 64 up to 512 (x's row block must fit in shared memory) and N a multiple of 128.
bool gemm_images_supported(int64_t n, int64_t k);

// The B images of a row-major bf16 weight w[K, N] (bits), K % 64 == 0, N % 128 == 0.
std::vector<uint16_t> pack_gemm_b(const uint16_t* w, int64_t k, int64_t n);

struct GemmImagesParams {
  const void* a;  // A images of x (gemm_a_offset), gemm_a_bytes(m, k) bytes
  const void* b;  // B images of W (pack_gemm_b)
  void* y;        // bf16 [m, n] row-major
  int64_t m, n, k;
  bool gelu = true;
  // With gelu: the bf16 GELU of every bf16 input (launch_gelu_table), or null to compute it.
  const uint16_t* gelu_table = nullptr;
};
// Persistent kernel, one block an SM: a 128-row block of x held in shared memory, W streamed
// through a ring of 64-k tiles; two consumer warpgroups take 128 x 128 output tiles in turn.
void launch_gemm_images(const GemmImagesParams& p, cudaStream_t stream);

// The attention's output projection with the residual and the MLP's RMSNorm fused (the model's
// x = x + a W_o, then h = RMSNorm(x, g) for the up projection), bf16 mode:
//   v[i, j] = x[i, j] + sum_k a[i, k] W[k, j]   (bf16 a and W, float32 accumulation, one add)
//   x[i, j] = v[i, j];  h[i, j] = bf16(v[i, j] inv_i g[j])     (float products, in that order)
//   inv_i = 1 / sqrt(sum_j v[i, j]^2 / n + eps)                  (float, one fixed order)
// so x crosses memory once each way instead of three times (cuBLASLt's C in and D out, then the
// RMSNorm's read). The float norm is bf16 mode's (h is rounded to bf16 anyway); each row's
// arithmetic is fixed, so a row's bits do not depend on m or on where the row sits. h may be a:
// every read of a block's rows of a is done before any of their h is written.
// A cluster of n / 128 blocks shares each 64-row block: block c of the cluster holds columns
// 128 c .. 128 c + 127 of W (its B images, 128 KB at k = 512) in shared memory for the whole
// run, a's tiles come by TMA multicast to every block of the cluster (read from L2 once), the
// rows' partial sums of squares are exchanged through distributed shared memory, and v stays in
// registers until h is written.
struct GemmResidualNormParams {
  const void* a;      // bf16 [m, k] row-major, 16-byte aligned rows
  const void* b;      // B images of W [k, n] (pack_gemm_b)
  float* x;           // float32 [m, n] row-major: read, then written
  const float* gain;  // [n]
  float eps;
  void* h;  // bf16 [m, n] row-major (may be a)
  int64_t m, n, k;
};
// An sm_90a device, k a multiple of 128 up to 512 and n = 128, 256 or 512.
bool gemm_residual_norm_supported(int64_t n, int64_t k);
void launch_gemm_residual_norm(const GemmResidualNormParams& p, cudaStream_t stream);

}  // namespace sparsa::kern
