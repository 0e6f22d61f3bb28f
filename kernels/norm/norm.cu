#include "kernels/common/common.cuh"
#include "kernels/gemm/gemm.hpp"
#include "kernels/norm/norm.hpp"

namespace sparsa::kern {

namespace {
// The outputs of element j of a row from its float value v.
template <class Act>
__device__ __forceinline__ void put(const RmsNormParams& p, int64_t row, int64_t j, float v) {
  if (p.out_act) {
    if (p.act_tiled)  // bf16 only (launch_rmsnorm checks)
      *reinterpret_cast<Act*>(static_cast<char*>(p.out_act) + gemm_a_offset(row, j, p.dim)) =
          from_f<Act>(v);
    else
      static_cast<Act*>(p.out_act)[row * p.dim + j] = from_f<Act>(v);
  }
  if (p.out_f32) p.out_f32[row * p.dim + j] = v;
  if (p.out_split) {
    __nv_bfloat16* o = static_cast<__nv_bfloat16*>(p.out_split) + row * 2 * p.dim;
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    o[j] = hi;
    o[p.dim + j] = __float2bfloat16_rn(v - __bfloat162float(hi));  // v - hi is exact in float
  }
}
}  // namespace

// p.bad: the warp's smallest flat index of a non-finite value (~0: none), one atomic a warp.
__device__ __forceinline__ void report_nonfinite(const RmsNormParams& p, unsigned long long mine) {
  if (!p.bad) return;
  for (int o = 16; o > 0; o /= 2) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, mine, o);
    mine = other < mine ? other : mine;
  }
  if (threadIdx.x % 32 == 0 && mine != ~0ull) atomicMin(p.bad, mine);
}

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
  unsigned long long mine = ~0ull;
  for (int64_t j = lane; j < p.dim; j += 32) {
    const float v = (float)((double)x[j] * inv * (double)p.gain[j]);
    if (!isfinite(v) && mine == ~0ull) mine = (unsigned long long)(row * p.dim + j);
    put<Act>(p, row, j, v);
  }
  report_nonfinite(p, mine);
}

// dim = 128 Q (Q = 1, 2, 4 or 8) and 16-byte aligned rows: the same arithmetic per element (the
// double sum of squares in another order, which can move the last bit), with the row held in
// registers (one read) and float4 loads (lane takes elements 4 (lane + 32 t) .. + 3, t < Q). The
// kernel depends only on d and the alignment, so every row of a model takes the same one.
template <class Act, int Q>
__global__ void rmsnorm4_kernel(RmsNormParams p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.n_tokens) return;
  const float4* x = reinterpret_cast<const float4*>(p.x + row * p.dim);
  float4 v[Q];
  double ss = 0.0;
#pragma unroll
  for (int t = 0; t < Q; ++t) {
    v[t] = x[lane + 32 * t];
    ss += (double)v[t].x * v[t].x + (double)v[t].y * v[t].y + (double)v[t].z * v[t].z +
          (double)v[t].w * v[t].w;
  }
  ss = warp_sum(ss);
  const double inv = 1.0 / sqrt(ss / (double)p.dim + p.eps);
  unsigned long long mine = ~0ull;
#pragma unroll
  for (int t = 0; t < Q; ++t) {
    const int64_t j = 4 * (lane + 32 * t);
    const float4 g = *reinterpret_cast<const float4*>(p.gain + j);
    const float4 o = make_float4(
        (float)((double)v[t].x * inv * (double)g.x), (float)((double)v[t].y * inv * (double)g.y),
        (float)((double)v[t].z * inv * (double)g.z), (float)((double)v[t].w * inv * (double)g.w));
    if (p.bad && mine == ~0ull) {
      const float e[4] = {o.x, o.y, o.z, o.w};
      for (int k = 0; k < 4; ++k)
        if (!isfinite(e[k])) {
          mine = (unsigned long long)(row * p.dim + j + k);
          break;
        }
    }
    if (p.out_f32) *reinterpret_cast<float4*>(p.out_f32 + row * p.dim + j) = o;
    if (p.out_act) {
      if constexpr (sizeof(Act) == 2) {
        const __nv_bfloat162 b0 = __floats2bfloat162_rn(o.x, o.y),
                             b1 = __floats2bfloat162_rn(o.z, o.w);
        // 4 elements in one half of a 16-byte chunk, in the row layout or the tiled one
        char* o = static_cast<char*>(p.out_act) +
                  (p.act_tiled ? gemm_a_offset(row, j, p.dim) : (row * p.dim + j) * 2);
        *reinterpret_cast<uint2*>(o) = make_uint2(*reinterpret_cast<const uint32_t*>(&b0),
                                                  *reinterpret_cast<const uint32_t*>(&b1));
      } else {
        *reinterpret_cast<float4*>(static_cast<Act*>(p.out_act) + row * p.dim + j) = o;
      }
    }
    if (p.out_split) {
      const __nv_bfloat162 h0 = __floats2bfloat162_rn(o.x, o.y),
                           h1 = __floats2bfloat162_rn(o.z, o.w);
      const float2 f0 = __bfloat1622float2(h0), f1 = __bfloat1622float2(h1);
      const __nv_bfloat162 l0 = __floats2bfloat162_rn(o.x - f0.x, o.y - f0.y),
                           l1 = __floats2bfloat162_rn(o.z - f1.x, o.w - f1.y);
      __nv_bfloat16* s = static_cast<__nv_bfloat16*>(p.out_split) + row * 2 * p.dim;
      *reinterpret_cast<uint2*>(s + j) = make_uint2(*reinterpret_cast<const uint32_t*>(&h0),
                                                    *reinterpret_cast<const uint32_t*>(&h1));
      *reinterpret_cast<uint2*>(s + p.dim + j) = make_uint2(
          *reinterpret_cast<const uint32_t*>(&l0), *reinterpret_cast<const uint32_t*>(&l1));
    }
  }
  report_nonfinite(p, mine);
}

template <class Act>
bool launch_rmsnorm4(const RmsNormParams& p, unsigned grid, cudaStream_t stream) {
  switch (p.dim) {
    case 128:
      rmsnorm4_kernel<Act, 1><<<grid, 256, 0, stream>>>(p);
      return true;
    case 256:
      rmsnorm4_kernel<Act, 2><<<grid, 256, 0, stream>>>(p);
      return true;
    case 512:
      rmsnorm4_kernel<Act, 4><<<grid, 256, 0, stream>>>(p);
      return true;
    case 1024:
      rmsnorm4_kernel<Act, 8><<<grid, 256, 0, stream>>>(p);
      return true;
    default:
      return false;
  }
}

void launch_rmsnorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  if (p.act_tiled && (p.act_type != DType::kBF16 || p.dim % 64 != 0))
    throw SystemError("rmsnorm: the tiled output needs bf16 and dim % 64 == 0");
  const unsigned grid = grid_for(p.n_tokens, 8);
  bool vec = true;
  for (const void* q : {(const void*)p.x, (const void*)p.gain, (const void*)p.out_f32})
    vec = vec && (uintptr_t)q % 16 == 0;
  vec = vec && (uintptr_t)p.out_act % (p.act_type == DType::kBF16 ? 8 : 16) == 0 &&
        (uintptr_t)p.out_split % 8 == 0;
  if (p.act_type == DType::kBF16) {
    if (!vec || !launch_rmsnorm4<__nv_bfloat16>(p, grid, stream))
      rmsnorm_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p);
  } else if (!vec || !launch_rmsnorm4<float>(p, grid, stream)) {
    rmsnorm_kernel<float><<<grid, 256, 0, stream>>>(p);
  }
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
