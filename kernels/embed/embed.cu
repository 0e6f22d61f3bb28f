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

// d % 4 == 0 and 16-byte aligned tables and x: one warp per token, 16-byte loads and stores; the
// same sum per element (tables in order from 0) as embed_kernel.
__global__ void embed4_kernel(EmbedParams p) {
  const int64_t i = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= p.n_tokens) return;
  const int64_t d4 = p.d / 4;
  float4* x = reinterpret_cast<float4*>(p.x + i * p.d);
  for (int64_t j = lane; j < d4; j += 32) {
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int64_t c = 0; c < p.n_tables; ++c) {
      const int32_t t = p.tokens[i * p.n_tables + c];
      if (t >= 0 && t < p.vocab) {
        const float4 v = reinterpret_cast<const float4*>(p.tables + (c * p.vocab + t) * p.d)[j];
        acc.x += v.x;
        acc.y += v.y;
        acc.z += v.z;
        acc.w += v.w;
      }
    }
    x[j] = acc;
  }
}

void launch_embed(const EmbedParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  if (p.d % 4 == 0 && (uintptr_t)p.tables % 16 == 0 && (uintptr_t)p.x % 16 == 0)
    embed4_kernel<<<grid_for(p.n_tokens, 8), 256, 0, stream>>>(p);
  else
    embed_kernel<<<grid_for(p.n_tokens * p.d, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
