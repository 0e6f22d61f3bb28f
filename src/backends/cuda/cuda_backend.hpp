// sparsa CUDA backend: the DSA model of spec section 2 on one GPU per rank (plain C++ header).
// CudaModel::forward returns exactly what sparsa::forward (the CPU oracle) returns and follows the
// same shard protocol: K/V halos after RoPE through comm.start_exchange / wait_exchange and the
// global set through comm.allgatherv, staged through host memory so that any Comm works.
//   fp32 mode (bf16 = false): every tensor float32, for validation against the CPU (tight).
//   bf16 mode: projections, MLP and attention in bf16 with fp32 accumulation; the residual stream,
//   norms, RoPE angles and router scores stay float32 (the router reads the fp32 stream, so the
//   global set follows the CPU's wherever scores differ by more than rounding).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "backends/cuda/device.hpp"
#include "model/forward.hpp"
#include "model/weights.hpp"

namespace sparsa {

using cuda::cuda_available;  // bool cuda_available(std::string* why)

struct CudaOptions {
  bool bf16 = true;
  int device = -1;             // -1: node-local rank modulo the device count
  int64_t chunk_rows = 65536;  // rows per chunk of the projection / MLP scratch
};

class CudaModel {
 public:
  // Selects the device and uploads the weights once (bf16 copies in bf16 mode).
  CudaModel(const ModelWeights& weights, const CudaOptions& options);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // Collective over `comm`, as sparsa::forward. Throws NumericError on NaN/Inf (router scores or
  // output), SystemError on CUDA failures.
  ForwardOutput forward(const int32_t* tokens, const Shard& shard, Comm& comm,
                        const ForwardHooks& hooks = {});

  int device() const;
  // Device bytes held by this model (weights + the largest activations so far).
  int64_t device_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparsa
