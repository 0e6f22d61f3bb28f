// sparsa kernels: RMSNorm(x, g) = x / sqrt(mean(x^2) + eps) * g, per row, in double as the CPU.
#pragma once
#include "kernels/common/types.hpp"

namespace sparsa::kern {

struct RmsNormParams {
  const float* x;     // [n_tokens, dim]
  const float* gain;  // [dim]
  float* out_f32;     // [n_tokens, dim] or null (may alias x)
  void* out_act;      // [n_tokens, dim] of act_type, or null
  DType act_type;
  int64_t n_tokens, dim;
  double eps;
  // Or null: bf16 [n_tokens, 2 dim], row i = hi | lo of the float result v (hi = bf16(v),
  // lo = bf16(v - hi)): the split operand of the router's approximate GEMM (router.hpp).
  void* out_split = nullptr;
  // bf16 out_act written as the A images of kernels/gemm (gemm_a_offset; dim % 64 == 0): the
  // operand of launch_gemm_images, gemm_a_bytes(n_tokens, dim) bytes.
  bool act_tiled = false;
  // Or null: the smallest flat index row * dim + j of a non-finite output value is atomicMin'ed
  // into *bad (the caller sets it to ~0 first): the output check of the final RMSNorm, fused.
  unsigned long long* bad = nullptr;
};
void launch_rmsnorm(const RmsNormParams& p, cudaStream_t stream);

}  // namespace sparsa::kern
