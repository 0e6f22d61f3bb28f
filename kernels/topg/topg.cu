#include <cub/device/device_radix_sort.cuh>

#include "kernels/common/common.cuh"
#include "kernels/topg/topg.hpp"

namespace sparsa::kern {

__global__ void topg_keys_kernel(TopgParams p) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n_tokens) return;
  float s = p.scores[i];
  const int64_t pos = p.first_pos + i;
  if (!isfinite(s)) {
    atomicMin(p.bad, (unsigned long long)pos);
    s = 0.0f;
  }
  if (s == 0.0f) s = 0.0f;  // -0 == +0 for the tie rule: one key for both
  uint32_t u = __float_as_uint(s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  p.keys[i] = ((uint64_t)u << 32) | (uint64_t)(0xffffffffu - (uint32_t)pos);
}

size_t topg_temp_bytes(int64_t n) {
  if (n > 0x7fffffff) throw SystemError("topg: shard too large for one sort");
  size_t bytes = 0;
  SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(
      nullptr, bytes, (const uint64_t*)nullptr, (uint64_t*)nullptr, (int)n, 32, 64));
  return bytes;
}

void launch_topg(const TopgParams& p, cudaStream_t stream) {
  SPARSA_CUDA_CHECK(cudaMemsetAsync(p.bad, 0xff, sizeof(unsigned long long), stream));
  if (p.n_tokens <= 0) return;
  if (p.first_pos + p.n_tokens > 0xffffffffll)
    throw SystemError("topg: record positions must be < 2^32");
  topg_keys_kernel<<<grid_for(p.n_tokens, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
  // Sorted by the score's 32 bits alone: CUB's radix sort is stable, and the keys come in
  // position order, so equal scores stay in ascending position, the order the low 32 bits
  // (~position) gave a 64-bit sort, in half its digit passes.
  size_t bytes = p.temp_bytes;
  SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(
      p.temp, bytes, (const uint64_t*)p.keys, p.sorted, (int)p.n_tokens, 32, 64, stream));
}

// Select keys: position << 32 | index in the ranked list (positions < 2^32, distinct).
__global__ void topg_select_keys_kernel(TopgSelectParams p) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= p.g) return;
  p.scratch[j] = ((uint64_t)topg_key_pos(p.sorted[j]) << 32) | (uint64_t)j;
}

__global__ void topg_select_out_kernel(TopgSelectParams p) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.g) return;
  const uint64_t k = p.scratch[p.g + i];
  const int64_t pos = (int64_t)(k >> 32), j = (int64_t)(k & 0xffffffffu);
  p.positions[i] = pos;
  p.scores[i] = topg_key_score(p.sorted[j]);
  p.rows[i] = pos - p.first_pos;
}

size_t topg_select_temp_bytes(int64_t g) {
  size_t bytes = 0;
  SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, bytes, (const uint64_t*)nullptr,
                                                   (uint64_t*)nullptr, (int)std::max<int64_t>(g, 1),
                                                   0, 64));
  return bytes;
}

void launch_topg_select(const TopgSelectParams& p, cudaStream_t stream) {
  if (p.g <= 0) return;
  topg_select_keys_kernel<<<grid_for(p.g, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
  size_t bytes = p.temp_bytes;
  SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(p.temp, bytes, (const uint64_t*)p.scratch,
                                                   p.scratch + p.g, (int)p.g, 0, 64, stream));
  topg_select_out_kernel<<<grid_for(p.g, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

__global__ void topg_gate_kernel(const float* scores, int64_t g, float* gamma) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= g) return;
  gamma[j] = (float)(1.0 / (1.0 + exp(-(double)scores[j])));
}

void launch_topg_gate(const float* scores, int64_t g, float* gamma, cudaStream_t stream) {
  if (g <= 0) return;
  topg_gate_kernel<<<grid_for(g, 256), 256, 0, stream>>>(scores, g, gamma);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
