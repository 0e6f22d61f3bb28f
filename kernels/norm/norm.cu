#include "kernels/common/common.cuh"
#include "kernels/norm/norm.hpp"

namespace sparsa::kern {

// One warp per row. The sum of squares is in double (as cpu::rmsnorm_row) so the float result
// matches the CPU except for the order of a double sum.
template <class Act>
__global__ void rmsnorm_kernel(RmsNormParams p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.n_tokens) return;
  const float* x = p.x + row * p.dim;
  double ss = 0.0;
  for (int64_t j = lane; j < p.dim; j += 32) ss += (double)x[j] * (double)x[j];
  ss = warp_sum(ss);
  const double inv = 1.0 / sqrt(ss / (double)p.dim + p.eps);
  Act* oa = p.out_act ? static_cast<Act*>(p.out_act) + row * p.dim : nullptr;
  float* of = p.out_f32 ? p.out_f32 + row * p.dim : nullptr;
  for (int64_t j = lane; j < p.dim; j += 32) {
    const float v = (float)((double)x[j] * inv * (double)p.gain[j]);
    if (oa) oa[j] = from_f<Act>(v);
    if (of) of[j] = v;
  }
}

void launch_rmsnorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  const unsigned grid = grid_for(p.n_tokens, 8);
  if (p.act_type == DType::kBF16)
    rmsnorm_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p);
  else
    rmsnorm_kernel<float><<<grid, 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
