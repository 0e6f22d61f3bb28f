// sparsa kernels: shared device helpers (CUDA-only; never included by host-only code).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "core/error.hpp"

namespace sparsa::kern {

// Throws SystemError naming the expression and file:line. Used after every CUDA call and launch.
[[noreturn]] inline void cuda_fail(cudaError_t e, const char* expr, const char* file, int line) {
  throw SystemError(std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ") in " + expr + " at " + file + ":" +
                    std::to_string(line));
}
#define SPARSA_CUDA_CHECK(expr)                                                      \
  do {                                                                               \
    cudaError_t e_ = (expr);                                                         \
    if (e_ != cudaSuccess) ::sparsa::kern::cuda_fail(e_, #expr, __FILE__, __LINE__); \
  } while (0)
#define SPARSA_LAUNCH_CHECK() SPARSA_CUDA_CHECK(cudaGetLastError())

// Raises Kernel's dynamic shared-memory limit to `bytes`, once per process: a magic static per
// kernel (side-by-side models launch from several threads); the attribute is per device function.
template <auto Kernel>
void max_dynamic_smem_once(int bytes) {
  static const bool done = [bytes] {
    SPARSA_CUDA_CHECK(
        cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    return true;
  }();
  (void)done;
}

// Grid size for `count` items of `per_block`, capped by the 2^31-1 grid.x limit.
inline unsigned grid_for(int64_t count, int64_t per_block) {
  int64_t g = (count + per_block - 1) / per_block;
  if (g < 1) g = 1;
  if (g > 0x7fffffff) throw SystemError("grid too large");
  return (unsigned)g;
}

template <class T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <class T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Sum over the 32 lanes of a warp by a fixed butterfly: every lane gets the same value, and a
// row's result depends only on the row (no atomics, no order that varies between runs).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Shared-memory address of a generic pointer.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronous; !valid: zero-fill, nothing read (src must still be a
// valid address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// C[16 x 8] += A[16 x 16] B[16 x 8], bf16 operands as mma.m16n8k16 row.col fragments, float32
// accumulation (tensor cores, sm_80+).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// GELU for a bf16 output: erff in float (within 2 ulp of float, far below bf16 rounding). The
// bf16 GELU table, the GELU kernels and the up projection's fused epilogue all use this one.
__device__ __forceinline__ float gelu_f(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}

// 0.5 x (1 + erf(x / sqrt 2)) in double, as cpu::gelu.
__device__ __forceinline__ float gelu_exact(float x) {
  const double xd = x;
  return (float)(0.5 * xd * (1.0 + erf(xd * 0.70710678118654752440)));
}

}  // namespace sparsa::kern
