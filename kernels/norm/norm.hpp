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
};
void launch_rmsnorm(const RmsNormParams& p, cudaStream_t stream);

}  // namespace sparsa::kern
