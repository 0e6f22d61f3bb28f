// sparsa kernels: RoPE "rotate half" of q and k (spec 2), fused with the conversion of q, k, v
// from the projection output (float32, or bf16 as the GEMM wrote it) to the attention type.
//   theta_k = base^(-2k/dh) (computed on the host with std::pow, as the CPU), angle = p * theta_k
//   in double, cos/sin in double: positions reach 1e9, where a float angle is off by radians.
//   The rotation itself is in double for a float32 output, in float for a bf16 output.
#pragma once
#include "kernels/common/types.hpp"

namespace sparsa::kern {

struct RopeParams {
  const void* q_in;  // [n_tokens, in_stride] of in_type, head h at columns h*head_dim ..
  const void* k_in;  // [n_tokens, in_stride] (read only when k_out is given)
  // [n_tokens, in_stride] or null (then v_out is untouched). The model passes null (W_v has its
  // own GEMM); removing the v path from the kernels made ptxas schedule rope4_kernel worse (96
  // instead of 108 registers, 1.51 -> 1.85 ms a layer at n = 1M on an H200), so it stays.
  const void* v_in;
  int64_t in_stride;
  void* q_out;  // [n_tokens, n_heads * head_dim] of out_type (may be null: q not needed)
  void* k_out;  // [n_tokens, n_heads * head_dim] (may be null: k not needed)
  void* v_out;  // [n_tokens, n_heads * head_dim]
  DType out_type;
  int64_t n_tokens, n_heads, head_dim;  // head_dim even, <= 256
  int64_t first_pos;                    // record position of row 0
  double base;
  // When set: row r's record position is positions[r] (device, [n_tokens]; rows gathered from
  // anywhere in the record) and first_pos is unused.
  const int64_t* positions = nullptr;
  // The projection output's type: float32, or bf16 (then out_type must be bf16 too).
  DType in_type = DType::kF32;
  // 0: the fastest kernel that fits (bf16 in and out, head_dim 64, no v: one warp a row); 1: the
  // 4-pairs-a-thread kernel (tests and A/B timing; SPARSA_ROPE=v1 makes it the default). Both give
  // the same bits.
  int variant = 0;
};
void launch_rope(const RopeParams& p, cudaStream_t stream);

}  // namespace sparsa::kern
