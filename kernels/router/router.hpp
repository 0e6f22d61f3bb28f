// sparsa kernels: the router's second half. Given hid = h W1 (float32, from the GEMM),
//   s_i = sum_j GELU(hid_ij + b1_j) * w2_j + b2     (exact erf GELU, sum in double as the CPU)
// Each row is computed from that row alone in a fixed order, so equal rows get equal scores
// (the spec's tie rule then decides, not rounding).
#pragma once
#include "kernels/common/types.hpp"

namespace sparsa::kern {

struct RouterParams {
  const float* hid;  // [n_tokens, hidden] = h W1
  const float* b1;   // [hidden]
  const float* w2;   // [hidden]
  float b2;
  float* scores;  // [n_tokens]
  int64_t n_tokens, hidden;
  // hid holds [a | b] a row ([n_tokens, 2 hidden], the split GEMM of router_split.hpp) and
  // h W1 = a + b (one float add): the approximate pass.
  bool split = false;
};
void launch_router(const RouterParams& p, cudaStream_t stream);

}  // namespace sparsa::kern
