// sparsa CUDA backend (internal): checks for CUDA and cuBLASLt calls on the host. Each failure
// throws SystemError naming the call, file:line and (where known) the MPI rank.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "core/error.hpp"

namespace sparsa::cuda {

[[noreturn]] void fail_cuda(cudaError_t e, const char* expr, const char* file, int line);
[[noreturn]] void fail_cublas(cublasStatus_t s, const char* expr, const char* file, int line);

}  // namespace sparsa::cuda

#define CUDA_OK(expr)                                                                \
  do {                                                                               \
    cudaError_t e_ = (expr);                                                         \
    if (e_ != cudaSuccess) ::sparsa::cuda::fail_cuda(e_, #expr, __FILE__, __LINE__); \
  } while (0)
#define CUBLAS_OK(expr)                                                                          \
  do {                                                                                           \
    cublasStatus_t s_ = (expr);                                                                  \
    if (s_ != CUBLAS_STATUS_SUCCESS) ::sparsa::cuda::fail_cublas(s_, #expr, __FILE__, __LINE__); \
  } while (0)
