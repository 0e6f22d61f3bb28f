// sparsa kernels: plain C++ types shared by every launcher header (no CUDA headers here).
#pragma once
#include <cstdint>

struct CUstream_st;
using cudaStream_t = CUstream_st*;

// Small helpers that host code and kernels share (plain C++ outside nvcc).
#if defined(__CUDACC__)
#define SPARSA_HOST_DEVICE __host__ __device__
#else
#define SPARSA_HOST_DEVICE
#endif

namespace sparsa::kern {

// Element type of an activation tensor: float32 (validation mode) or bfloat16 (fast mode).
enum class DType { kF32, kBF16 };
inline int64_t dtype_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// True on a compute capability 9.0 device when the sm_90a (wgmma) kernels were compiled in
// (defined in kernels/attention/attention_wgmma.cu).
bool wgmma_available();

}  // namespace sparsa::kern
