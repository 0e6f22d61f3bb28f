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
      nullptr, bytes, (const uint64_t*)nullptr, (uint64_t*)nullptr, (int)n, 0, 64));
  return bytes;
}

void launch_topg(const TopgParams& p, cudaStream_t stream) {
  SPARSA_CUDA_CHECK(cudaMemsetAsync(p.bad, 0xff, sizeof(unsigned long long), stream));
  if (p.n_tokens <= 0) return;
  if (p.first_pos + p.n_tokens > 0xffffffffll)
    throw SystemError("topg: record positions must be < 2^32");
  topg_keys_kernel<<<grid_for(p.n_tokens, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
  size_t bytes = p.temp_bytes;
  SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(
      p.temp, bytes, (const uint64_t*)p.keys, p.sorted, (int)p.n_tokens, 0, 64, stream));
}

}  // namespace sparsa::kern
