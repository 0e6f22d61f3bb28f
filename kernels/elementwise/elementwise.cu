#include "kernels/common/common.cuh"
#include "kernels/elementwise/elementwise.hpp"

namespace sparsa::kern {

__global__ void gelu_f32_kernel(const float* in, float* out, int64_t count) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = gelu_exact(in[i]);
}

// 4 elements a thread: float4 in, 4 bf16 out (count % 4 == 0 checked by the launcher).
__global__ void gelu_bf16_kernel(const float4* in, __nv_bfloat162* out, int64_t count4) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count4;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float4 v = in[i];
    out[2 * i] = __floats2bfloat162_rn(gelu_f(v.x), gelu_f(v.y));
    out[2 * i + 1] = __floats2bfloat162_rn(gelu_f(v.z), gelu_f(v.w));
  }
}

// bf16 in, bf16 out (in place allowed), 2 elements a thread.
__global__ void gelu_bf16_bf16_kernel(const __nv_bfloat162* in, __nv_bfloat162* out,
                                      int64_t count2) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count2;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float2 v = __bfloat1622float2(in[i]);
    out[i] = __floats2bfloat162_rn(gelu_f(v.x), gelu_f(v.y));
  }
}

// bf16 in, bf16 out (in place allowed), 8 elements a thread: 16-byte loads and stores.
__global__ void gelu_bf16x8_kernel(const uint4* in, uint4* out, int64_t count8) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count8;
       i += (int64_t)gridDim.x * blockDim.x) {
    uint4 u = in[i];
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 v = __bfloat1622float2(h[e]);
      h[e] = __floats2bfloat162_rn(gelu_f(v.x), gelu_f(v.y));
    }
    out[i] = u;
  }
}

__global__ void gelu_table_kernel(uint16_t* table) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= 65536) return;
  const float x = __uint_as_float((uint32_t)b << 16);
  const __nv_bfloat16 y = __float2bfloat16_rn(gelu_f(x));
  table[b] = *reinterpret_cast<const uint16_t*>(&y);
}

void launch_gelu_table(void* table, cudaStream_t stream) {
  gelu_table_kernel<<<256, 256, 0, stream>>>(static_cast<uint16_t*>(table));
  SPARSA_LAUNCH_CHECK();
}

// bf16 in, bf16 out by the table, held in shared memory (128 KB): one block of 1024 threads an
// SM, 8 lookups a 16-byte load. GELU's erff costs about as much as the memory traffic; a lookup
// costs a shared-memory load.
constexpr int kGeluTableThreads = 1024;
constexpr size_t kGeluTableBytes = 65536 * 2;
__global__ void __launch_bounds__(kGeluTableThreads)
    gelu_lookup_kernel(const uint4* in, uint4* out, int64_t count8, const uint4* table) {
  extern __shared__ uint4 tab4[];
  for (int i = threadIdx.x; i < (int)(kGeluTableBytes / 16); i += blockDim.x) tab4[i] = table[i];
  __syncthreads();
  const uint16_t* tab = reinterpret_cast<const uint16_t*>(tab4);
  // kInFlight 16-byte loads a thread before the lookups: with one block an SM, one load a thread
  // left HBM short of requests (2.42 -> 2.34 ms a layer at 1M tokens, bench/NOTES.md).
  constexpr int kInFlight = 4;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i0 < count8;
       i0 += kInFlight * stride) {
    uint4 u[kInFlight];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k)
      if (i0 + k * stride < count8) u[k] = in[i0 + k * stride];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      if (i0 + k * stride >= count8) break;
      uint32_t* w = reinterpret_cast<uint32_t*>(&u[k]);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        w[e] = (uint32_t)tab[w[e] & 0xffffu] | ((uint32_t)tab[w[e] >> 16] << 16);
      out[i0 + k * stride] = u[k];
    }
  }
}

// Whether this device gives a block the table's 128 KB of shared memory (H100/H200/A100: yes;
// sm_86/sm_89, ~99 KB: no, the computing kernel runs instead); the SM count. Once per process,
// as the attention kernels' attributes (one device a process).
struct LookupSetup {
  bool ok = false;
  int sms = 0;
};
const LookupSetup& gelu_lookup_setup() {
  static const LookupSetup v = [] {
    LookupSetup r;
    int dev = 0, optin = 0;
    SPARSA_CUDA_CHECK(cudaGetDevice(&dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&r.sms, cudaDevAttrMultiProcessorCount, dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if ((size_t)optin >= kGeluTableBytes)
      r.ok = cudaFuncSetAttribute(gelu_lookup_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kGeluTableBytes) == cudaSuccess;
    cudaGetLastError();  // a refused attribute is not an error here
    return r;
  }();
  return v;
}

void launch_gelu(const GeluParams& p, cudaStream_t stream) {
  if (p.count <= 0) return;
  const unsigned grid = std::min<unsigned>(grid_for(p.count, 1024), 65536u);
  if (p.in_bf16) {
    if (p.out_type != DType::kBF16 || p.count % 2 != 0)
      throw SystemError("gelu: bf16 input needs bf16 output and an even count");
    const bool vec8 =
        p.count % 8 == 0 && (uintptr_t)p.in_bf16 % 16 == 0 && (uintptr_t)p.out % 16 == 0;
    if (vec8 && p.table && (uintptr_t)p.table % 16 == 0 && gelu_lookup_setup().ok) {
      // One block an SM: the table fills most of its shared memory.
      const int sms = gelu_lookup_setup().sms;
      gelu_lookup_kernel<<<std::min<unsigned>(grid_for(p.count / 8, kGeluTableThreads), sms),
                           kGeluTableThreads, kGeluTableBytes, stream>>>(
          (const uint4*)p.in_bf16, (uint4*)p.out, p.count / 8, (const uint4*)p.table);
    } else if (vec8) {
      gelu_bf16x8_kernel<<<std::min<unsigned>(grid_for(p.count / 8, 256), 65536u), 256, 0,
                           stream>>>((const uint4*)p.in_bf16, (uint4*)p.out, p.count / 8);
    } else {
      gelu_bf16_bf16_kernel<<<grid, 256, 0, stream>>>((const __nv_bfloat162*)p.in_bf16,
                                                      (__nv_bfloat162*)p.out, p.count / 2);
    }
  } else if (p.out_type == DType::kBF16 && p.count % 4 == 0) {
    gelu_bf16_kernel<<<grid, 256, 0, stream>>>((const float4*)p.in, (__nv_bfloat162*)p.out,
                                               p.count / 4);
  } else if (p.out_type == DType::kF32) {
    gelu_f32_kernel<<<grid, 256, 0, stream>>>(p.in, (float*)p.out, p.count);
  } else {
    throw SystemError("gelu: bf16 output needs a multiple of 4 elements");
  }
  SPARSA_LAUNCH_CHECK();
}

__global__ void gather_rows_kernel(GatherRowsParams p) {
  const int64_t w = p.row_bytes / 2;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.n_rows * w) return;
  const int64_t r = idx / w, e = idx % w;
  static_cast<uint16_t*>(p.dst)[idx] = static_cast<const uint16_t*>(p.src)[p.rows[r] * w + e];
}

void launch_gather_rows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.n_rows <= 0) return;
  if (p.row_bytes % 2) throw SystemError("gather_rows: odd row size");
  gather_rows_kernel<<<grid_for(p.n_rows * (p.row_bytes / 2), 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

__global__ void pool_kernel(PoolParams p) {
  const int64_t n_bins = (p.n_tokens + p.bin - 1) / p.bin;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n_bins * p.d) return;
  const int64_t b = idx / p.d, j = idx % p.d;
  const int64_t r0 = b * p.bin, r1 = min(p.n_tokens, r0 + p.bin);
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r)
    acc += (double)p.y[(p.reversed ? p.n_tokens - 1 - r : r) * p.d + j];
  p.out[idx] = (float)(acc / (double)(r1 - r0));
}

void launch_pool(const PoolParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  if (p.bin <= 0) throw SystemError("pool: bin must be positive");
  pool_kernel<<<grid_for((p.n_tokens + p.bin - 1) / p.bin * p.d, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

__global__ void rc_tokens_kernel(RcTokensParams p) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n_tokens) return;
  const int32_t t = p.in[p.n_tokens - 1 - i];
  // ids: 3 A, 4 C, 5 G, 6 T (spec 1); N and specials map to themselves.
  p.out[i] = (t >= 3 && t <= 6) ? 9 - t : t;
}

void launch_rc_tokens(const RcTokensParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  rc_tokens_kernel<<<grid_for(p.n_tokens, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

// In place is safe: thread (i, j) reads fwd[i][j] and rc[n-1-i][j] only, and rc never aliases out.
__global__ void rc_average_kernel(RcAverageParams p) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.n_tokens * p.d) return;
  const int64_t i = idx / p.d, j = idx % p.d;
  // Halves first: (f + r) / 2 of two values near FLT_MAX would overflow to Inf (the same bits
  // otherwise, but where a half is subnormal).
  p.out[idx] = 0.5f * p.fwd[idx] + 0.5f * p.rc[(p.n_tokens - 1 - i) * p.d + j];
}

void launch_rc_average(const RcAverageParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  rc_average_kernel<<<grid_for(p.n_tokens * p.d, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

__global__ void pool_segments_kernel(PoolSegmentsParams p) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.n_segs * p.d) return;
  const int64_t k = idx / p.d, j = idx % p.d;
  const PoolSegment s =
      p.segs ? p.segs[k] : PoolSegment{k * p.block, min(p.block, p.rows - k * p.block), 1};
  double acc = 0.0;
  for (int64_t t = 0; t < s.count; ++t) acc += (double)p.y[(s.first + s.step * t) * p.d + j];
  if (p.sums)
    p.sums[idx] = acc;
  else
    p.means[idx] = (float)(acc / (double)s.count);
}

void launch_pool_segments(const PoolSegmentsParams& p, cudaStream_t stream) {
  if (p.n_segs <= 0) return;
  pool_segments_kernel<<<grid_for(p.n_segs * p.d, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

__global__ void rc_average_rows_kernel(RcAverageRowsParams p) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.count * p.d) return;
  const int64_t i = idx / p.d, j = idx % p.d;
  float* out = p.x + p.rows[i] * p.d + j;
  *out = 0.5f * *out + 0.5f * p.x[p.partners[i] * p.d + j];  // as rc_average_kernel
}

void launch_rc_average_rows(const RcAverageRowsParams& p, cudaStream_t stream) {
  if (p.count <= 0) return;
  rc_average_rows_kernel<<<grid_for(p.count * p.d, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

__global__ void nonfinite_segments_kernel(NonfiniteSegmentsParams p) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.rows * p.d || isfinite(p.y[idx])) return;
  const int64_t row = idx / p.d, r = p.row_record[row];
  atomicMin(p.bad + r, (unsigned long long)((row - p.seg[r]) * p.d + idx % p.d));
}

void launch_nonfinite_segments(const NonfiniteSegmentsParams& p, cudaStream_t stream) {
  if (p.rows <= 0) return;
  nonfinite_segments_kernel<<<grid_for(p.rows * p.d, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

__global__ void to_f16_kernel(ToF16Params p) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.count) return;
  const float x = p.in[i];
  const __half h = __float2half_rn(x);
  static_cast<__half*>(p.out)[i] = h;
  if (p.overflow && __hisinf(h) && isfinite(x))
    atomicMin(p.overflow, (unsigned long long)(p.base + i));
}

void launch_to_f16(const ToF16Params& p, cudaStream_t stream) {
  if (p.count <= 0) return;
  to_f16_kernel<<<grid_for(p.count, 256), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
