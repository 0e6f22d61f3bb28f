// sparsa bench: timings of the CUDA backend (attention alone, one layer, the whole model).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

struct BenchOptions {
  // attention-local | attention-global | attention | layer | model | gemm (the MLP up projection)
  std::string what = "attention-local";
  std::vector<int64_t> n = {65536, 131072, 262144, 524288, 1048576};
  int64_t heads = 8, head_dim = 64, window = 256, global = 1024;  // attention shapes
  bool causal = false;
  bool bf16 = true;
  int iters = 10;
  std::string config = "configs/dna-base.toml";  // layer / model
  // layer / model: what becomes of the output y: host ([n, d] float32 copied back), pooled (bin
  // means of 128 rows copied back) or device (left on the GPU).
  std::string output = "pooled";
  bool profile = true;  // layer / model: one more run with the per-stage profile printed
};

// Prints a table (n, ms, useful TFLOP/s, tokens/s, peak GPU memory) to stdout. Times are the
// median of `iters` runs after one warm-up: CUDA events for attention, wall clock around the
// (host-synchronous) forward for layer and model. Useful FLOPs count only the band and the global
// set: 4 n H dh (band + G) for attention, plus 2 n (3d^2 + d^2 + 2 d f + d r) per layer.
// Layer/model also print the per-stage profile of one extra run (CudaModel::profile).
// Returns 0, or 2 (with a message) when CUDA is not built in or no device is usable.
int run_bench(const BenchOptions& options);

}  // namespace sparsa
