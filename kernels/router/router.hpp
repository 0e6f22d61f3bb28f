// sparsa kernels: the router. launch_router is its second half: given hid = h W1 (float32,
// from a GEMM),
//   s_i = sum_j GELU(hid_ij + b1_j) * w2_j + b2     (exact erf GELU, sum in double as the CPU)
// Each row is computed from that row alone in a fixed order, so equal rows get equal scores
// (the spec's tie rule then decides, not rounding).
#pragma once
#include <vector>

#include "kernels/common/types.hpp"

namespace sparsa::kern {

struct RouterParams {
  const float* hid;  // [n_tokens, hidden] = h W1
  const float* b1;   // [hidden]
  const float* w2;   // [hidden]
  float b2;
  float* scores;  // [n_tokens]
  int64_t n_tokens, hidden;
  // hid holds [a | b] a row ([n_tokens, 2 hidden], the split GEMM of router_split.hpp) and
  // h W1 = a + b (one float add): the approximate pass.
  bool split = false;
};
void launch_router(const RouterParams& p, cudaStream_t stream);

// bf16 mode's router in one pass: the split arithmetic of backends/cuda/router_split.hpp fused
// with the RMSNorm before it and the score after it. Per row: y = x * g in float, y = hi + lo
// and W1 = Whi + Wlo in bf16, hi Whi + hi Wlo + lo Whi on tensor cores (float32 accumulation),
// times RMSNorm's inv (a factor of the row, applied after the sum; inv from a float sum of
// squares: the product is within (d / 8 + 10) float ulps of h W1 for the RMSNorm kernel's h),
// then s = sum_k GELU(z_k + b1_k) w2_k + b2 with the terms in float (erff), added in float in
// groups of at most 16 and the groups in double. Reads x once (no h, no [a | b] in memory). W1's
// parts live in registers, as mma.sync B fragments packed by pack_router_frags; a block takes
// one chunk of router_fused_width(r) hidden units for every tile of 32 rows, and with several
// chunks their partial sums meet in `partial`. A row's score depends on the row alone (fixed
// order everywhere), not on n_tokens or where the row sits.
struct RouterFusedParams {
  const float* x;         // [n_tokens, d] the layer input
  const float* gain;      // [d] attn_norm
  float eps_scaled;       // RMSNorm's eps times 2^-64 (router_fused_eps)
  const uint32_t* frags;  // pack_router_frags(W1's hi, W1's lo, d, r), on the device
  const float* b1;        // [r]
  const float* w2;        // [r]
  float b2;
  double* partial;  // [r / router_fused_width(r), n_tokens] scratch (unused with one chunk)
  float* scores;    // [n_tokens]
  int64_t n_tokens, d, r;
  // pack_router_images(...) on the device: the sm_90a (wgmma) kernel, used where the GPU has it
  // (wgmma_available) unless mma_only; else the mma.sync kernel and `frags`. The same arithmetic
  // per row, summed in another order: scores agree within the split bound, not bit for bit.
  const uint16_t* images = nullptr;
  bool mma_only = false;
  // The mma.sync kernel's x buffers: 0 (two where they fit the GPU's shared memory, else one),
  // or 1 or 2 (tests; the same bits). One buffer (up to 144 KB at d = 512) fits an A100; the next
  // tile is then loaded only while this one's scores are summed.
  int mma_buffers = 0;
};
float router_fused_eps(double eps);
// d = 128, 256 or 512 and r a multiple of 32.
bool router_fused_supported(int64_t d, int64_t r);
// ... and the kernel launch_router_fused would take on this device (wgmma on an sm_90a GPU unless
// mma_only) fits its shared memory: the mma.sync kernel needs up to 206 KB (d = 512) with two x
// buffers, 144 KB with one (an A100 has 163 KB); on sm_86/89 (99 KB) it fits at d = 128, and at
// d = 256 with r an odd multiple of 32. Elsewhere the caller keeps the unfused passes.
bool router_fused_fits(int64_t d, int64_t r, bool mma_only);
int64_t router_fused_width(int64_t r);  // hidden units a chunk: 64 if r % 64 == 0, else 32
// W1 = hi + lo (bf16 bits, [d, r] row-major each) as the kernel's B fragments, in the order it
// loads them: [chunk][warp 8][k step d / 128][n tile][hi, lo][lane 32][2] 32-bit words, word j of
// lane = 4 g + t holding W[k][n], W[k + 1][n] (low half first) for n = 8 tile + g and k = 2 t +
// 8 j of the warp's k step (mma.m16n8k16's "col" B layout).
std::vector<uint32_t> pack_router_frags(const uint16_t* hi, const uint16_t* lo, int64_t d,
                                        int64_t r);
// W1 = hi + lo as the wgmma kernel's K-major B images with the 128-byte swizzle:
// [chunk][hi, lo][k block of 64][unit n of the chunk][64 k], 16-byte chunk c of a row stored at
// c ^ (n % 8) (the layout of desc128 in kernels/common/wgmma.cuh).
std::vector<uint16_t> pack_router_images(const uint16_t* hi, const uint16_t* lo, int64_t d,
                                         int64_t r);
void launch_router_fused(const RouterFusedParams& p, cudaStream_t stream);

}  // namespace sparsa::kern
