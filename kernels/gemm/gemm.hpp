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

}  // namespace sparsa::kern
