// sparsa CUDA backend: row-major GEMMs through cuBLASLt (plain C++ header).
//   y[M, N] = x[M, K] W[K, N]   (or y += ...), x and W of `in_type`, fp32 accumulate, y float32
//   (or bf16 when out_type is kBF16: one rounding of the fp32 result, no accumulate).
// NOTE: one algorithm per (N, K, type, accumulate), chosen once by the heuristic for a fixed
// reference M with split-K forced off, so a row's result does not depend on M (the shard size):
// the goal of bit-identical output on any number of GPUs (issue 4 item 7).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "kernels/common/types.hpp"

namespace sparsa::cuda {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  void run(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
           kern::DType in_type, bool accumulate, cudaStream_t stream,
           kern::DType out_type = kern::DType::kF32);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparsa::cuda
