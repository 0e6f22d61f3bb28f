#include <cub/device/device_radix_sort.cuh>
#include <mutex>

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

// Descending bitonic sort of the first `len` (a power of two) keys of a block's shared memory.
__device__ void bitonic_sort_desc(uint64_t* k, int len) {
  for (int size = 2; size <= len; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = threadIdx.x; i < len / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool desc = (lo & size) == 0;  // the final pass (size == len) is all descending
        const uint64_t a = k[lo], b = k[hi];
        if ((a < b) == desc) {
          k[lo] = b;
          k[hi] = a;
        }
      }
    }
  __syncthreads();
}

__device__ __forceinline__ uint64_t topg_key(float s, int64_t pos, unsigned long long* bad) {
  if (!isfinite(s)) {
    atomicMin(bad, (unsigned long long)pos);
    s = 0.0f;
  }
  if (s == 0.0f) s = 0.0f;  // -0 == +0 (as topg_keys_kernel)
  uint32_t u = __float_as_uint(s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ((uint64_t)u << 32) | (uint64_t)(0xffffffffu - (uint32_t)pos);
}

__global__ void topg_segments_kernel(TopgSegmentsParams p) {
  extern __shared__ uint64_t keys[];  // [len]: this record's length, up to a power of two
  __shared__ unsigned long long bad;
  const int64_t r = blockIdx.x, row0 = p.seg[r], n = p.seg[r + 1] - row0;
  const int64_t g0 = p.gseg[r], g = p.gseg[r + 1] - g0;
  int len = 1;
  while (len < n) len <<= 1;
  if (threadIdx.x == 0) bad = ~0ull;
  __syncthreads();
  for (int i = threadIdx.x; i < len; i += blockDim.x)
    keys[i] = i < n ? topg_key(p.scores[row0 + i], i, &bad) : 0;  // 0: below every real key
  // Ranked as the 64-bit keys order them: by score, then by smaller position (the low bits),
  // which is the order the stable 32-bit radix sort of launch_topg leaves.
  bitonic_sort_desc(keys, len);
  if (threadIdx.x == 0) p.bad[r] = bad;
  // The best g in position order: their words swapped, (0xffffffff - position) on top, sorted
  // descending again (positions are distinct); the rest become 0 and sink. A key's score stays
  // in it, so the first sort's ranks are not needed.
  int glen = 1;
  while (glen < g) glen <<= 1;
  for (int i = threadIdx.x; i < glen; i += blockDim.x)
    keys[i] = i < g ? (keys[i] << 32) | (keys[i] >> 32) : 0;
  bitonic_sort_desc(keys, glen);
  for (int j = threadIdx.x; j < g; j += blockDim.x) {
    const uint64_t k = (keys[j] << 32) | (keys[j] >> 32);  // back to score << 32 | ~position
    const int64_t pos = topg_key_pos(k);
    const float s = topg_key_score(k);
    p.positions[g0 + j] = pos;
    p.set_scores[g0 + j] = s;
    p.gamma[g0 + j] = (float)(1.0 / (1.0 + exp(-(double)s)));
    p.rows[g0 + j] = row0 + pos;
  }
}

static int64_t pow2_at_least(int64_t n) {
  int64_t len = 1;
  while (len < n) len <<= 1;
  return len;
}

int64_t topg_segment_max_len() {
  int device = 0, optin = 0;
  SPARSA_CUDA_CHECK(cudaGetDevice(&device));
  SPARSA_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  int64_t len = kTopgSegmentMax;
  while (len > 1 && len * 8 > optin) len >>= 1;
  return len;
}

void launch_topg_segments(const TopgSegmentsParams& p, cudaStream_t stream) {
  if (p.n_records <= 0) return;
  const int64_t bytes = pow2_at_least(p.max_len) * 8;
  if (p.max_len > topg_segment_max_len())
    throw SystemError("topg_segments: a record of " + std::to_string(p.max_len) +
                      " tokens, longer than this GPU ranks in shared memory (" +
                      std::to_string(topg_segment_max_len()) + ")");
  // Past the default 48 KB the kernel's limit is raised, never lowered (models on several
  // threads may launch it at once, each within the limit it saw).
  static std::mutex mu;
  static int64_t raised = 48 * 1024;
  if (bytes > 48 * 1024) {
    std::lock_guard<std::mutex> lock(mu);
    if (bytes > raised) {
      SPARSA_CUDA_CHECK(cudaFuncSetAttribute(
          topg_segments_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
      raised = bytes;
    }
  }
  topg_segments_kernel<<<(unsigned)p.n_records, 512, (size_t)bytes, stream>>>(p);
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
