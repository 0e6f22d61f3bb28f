#include <cmath>

#include "kernels/common/common.cuh"
#include "kernels/rope/rope.hpp"

namespace sparsa::kern {

namespace {
struct RopeArgs {
  RopeParams p;
  double theta[128];  // base^(-2k/dh), k < head_dim / 2
};
}  // namespace

// One thread per (row, k < half): the angle and its cos/sin once (double), then the pair (k,
// k + half) of every head of q and k rotated, v's pairs copied.
template <class Out>
__global__ void rope_kernel(const __grid_constant__ RopeArgs a) {
  const RopeParams& p = a.p;
  const int64_t half = p.head_dim / 2;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.n_tokens * half) return;
  const int64_t k = idx % half, r = idx / half;
  const double ang = (double)(p.first_pos + r) * a.theta[k];
  double s, c;
  sincos(ang, &s, &c);
  for (int64_t h = 0; h < p.n_heads; ++h) {
    const int64_t in0 = r * p.in_stride + h * p.head_dim + k;
    const int64_t out0 = r * p.n_heads * p.head_dim + h * p.head_dim + k;
    if (p.q_out) {
      const double x0 = p.q_in[in0], x1 = p.q_in[in0 + half];
      static_cast<Out*>(p.q_out)[out0] = from_f<Out>((float)(x0 * c - x1 * s));
      static_cast<Out*>(p.q_out)[out0 + half] = from_f<Out>((float)(x0 * s + x1 * c));
    }
    if (p.k_out) {
      const double x0 = p.k_in[in0], x1 = p.k_in[in0 + half];
      static_cast<Out*>(p.k_out)[out0] = from_f<Out>((float)(x0 * c - x1 * s));
      static_cast<Out*>(p.k_out)[out0 + half] = from_f<Out>((float)(x0 * s + x1 * c));
    }
    if (p.v_in) {
      static_cast<Out*>(p.v_out)[out0] = from_f<Out>(p.v_in[in0]);
      static_cast<Out*>(p.v_out)[out0 + half] = from_f<Out>(p.v_in[in0 + half]);
    }
  }
}

void launch_rope(const RopeParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  if (p.head_dim % 2 != 0 || p.head_dim > 256)
    throw SystemError("rope: head_dim must be even and <= 256");
  RopeArgs a{};
  a.p = p;
  for (int64_t k = 0; k < p.head_dim / 2; ++k)
    a.theta[k] = std::pow(p.base, -2.0 * (double)k / (double)p.head_dim);
  const unsigned grid = grid_for(p.n_tokens * (p.head_dim / 2), 256);
  if (p.out_type == DType::kBF16)
    rope_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(a);
  else
    rope_kernel<float><<<grid, 256, 0, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
