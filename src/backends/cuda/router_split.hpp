// sparsa CUDA backend: bf16 mode's router GEMM on split operands, host side.
//
// The router score s = GELU(h W1 + b1) . w2 + b2 decides the global set. fp32 mode computes h W1
// with a float32 GEMM, as the CPU. bf16 mode uses one bf16 GEMM on split operands (h and W1 are
// float32): h = hi + lo and W1 = Whi + Wlo, all bf16, and
//   [hi | lo] (K = 2d)  x  [[Whi, Wlo], [Whi, 0]] (N = 2r)  =  [a | b],   h W1 ~ a + b,
// float32 accumulation. The fused kernel (kernels/router, launch_router_fused; the default where
// it applies) computes hi Whi + hi Wlo + lo Whi the same way, with h itself in float. It drops
// lo*Wlo and the remainders of the splits (about 2^-16 relative to each |h_j W1_jk|): the operands
// carry 16 significant bits instead of 24, for a GEMM that costs a bf16 GEMM of twice the size
// instead of a float32 one (about 3x less time on an H100-class GPU). Scores then differ from the
// float32 router's by at most `bound` (worst case, rigorous; the differences measured in tests/gpu
// are under 1e-4 of it, a few 1e-6 of the score spread): the global set can differ from the float32
// router's only where two scores are that close.
#pragma once
#include <cstdint>
#include <vector>

namespace sparsa::cuda {

struct RouterSplit {
  std::vector<uint16_t> w;  // bf16 [2d, 2r]: rows e < d: Whi[e] | Wlo[e]; rows d + e: Whi[e] | 0
  // The same Whi and Wlo as kernels/router's fused kernel takes them (pack_router_frags), where
  // it supports d and r (router_fused_supported); else empty.
  std::vector<uint32_t> frags;
  std::vector<uint16_t> images;  // the same for its sm_90a kernel (pack_router_images)
  double bound = 0;              // |split - float32 score| <= bound for every row, either way
};

// From the layer's float32 router weights and its attn_norm gain (||h||_2 <= sqrt(d) max|g|).
RouterSplit make_router_split(const float* w1, const float* b1, const float* w2, float b2,
                              const float* gain, int64_t d, int64_t r);

}  // namespace sparsa::cuda
