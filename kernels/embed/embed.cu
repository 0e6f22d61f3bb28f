#include "kernels/common/common.cuh"
#include "kernels/embed/embed.hpp"

namespace sparsa::kern {

// One thread per (token, column); channels summed in table order, starting from 0 as the CPU.
__global__ void embed_kernel(EmbedParams p) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.n_tokens * p.d) return;
  const int64_t i = idx / p.d, j = idx % p.d;
  float acc = 0.0f;
  for (int64_t c = 0; c < p.n_tables; ++c) {
    const int32_t t = p.tokens[i * p.n_tables + c];
    if (t >= 0 && t < p.vocab) acc += p.tables[(c * p.vocab + t) * p.d + j];
  }
  p.x[idx] = acc;
}

void launch_embed(const EmbedParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  embed_kernel<<<grid_for(p.n_tokens * p.d, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
