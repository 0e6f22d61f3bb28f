// sparsa kernels: DSA attention of one layer, fused: local window + gated global set + per-head mix
//   out_i = alpha_h * Local_i + beta_h * Global_i                          (spec 2)
//   Local_i  = sum_{j in W(i)} softmax_j(q_i.k_j / sqrt(dh)) v_j
//   Global_i = sum_{j in S'(i)} softmax_j(q_i.k_j / sqrt(dh)) gamma_j v_j   (0 where S'(i) is
//   empty)
// Bidirectional W(i) = {|i-j| <= w}; causal W(i) = {i-w <= j <= i}, S'(i) = {j in S : j <= i}.
// Implementations behind one launcher:
//   - bf16, head_dim 64 with split_global (the default) or no global set, on an sm_90a device:
//     the global part, then the band, flash-style on Hopper warpgroup MMAs (wgmma, fp32
//     accumulate, online softmax in fp32; attention_wgmma.cu), in one kernel by default (each
//     block's band rows after its global part), or as two (the band alone when there is no global
//     set). On other GPUs the same split into two kernels on mma.sync (the v4 kernels of
//     attention_tc.cu).
//   - bf16, head_dim 64 or 128 otherwise: the v1 fused kernel on mma.sync (tiles of 64 queries).
//     In all of these, query and key tiles are aligned to record positions, so a row's arithmetic
//     does not depend on how the record is sharded. SPARSA_ATTN_BAND / SPARSA_ATTN_GLOBAL pick
//     variants for A/B runs (attention_tc.cu; bench/NOTES.md).
//   - otherwise (fp32 validation mode, other head dims): one warp per (row, head) on CUDA cores,
//     fp32, exact softmax in two passes. Slow, simple.
// No n x n buffer in either: memory is the inputs and the output.
#pragma once
#include "kernels/common/types.hpp"

namespace sparsa::kern {

struct AttentionParams {
  DType type;     // of q, k, v, k_global, v_global and out
  const void* q;  // [n_tokens, d] after RoPE, d = n_heads * head_dim
  const void* k;  // [kv_count, d] record positions kv_begin .. kv_begin + kv_count - 1
  const void* v;  // [kv_count, d]
  int64_t kv_begin, kv_count;
  const void* k_global;       // [n_global, d] after RoPE
  const void* v_global;       // [n_global, d]
  const float* gamma;         // [n_global] sigmoid(score)
  const int64_t* pos_global;  // [n_global] ascending record positions
  int64_t n_global;
  const float* alpha;  // [n_heads]
  const float* beta;   // [n_heads]
  void* out;           // [n_tokens, d]; may alias q (each block reads its queries first)
  int64_t n_tokens, first_pos, n_record, n_heads, head_dim, window;
  bool causal;
  int64_t row_begin, row_end;  // shard rows to write (interior/edge split)
  bool skip_local = false;     // benchmarks: the global part alone (alpha treated as 0)
  // bf16, head_dim 64, n_global > 0: the global part split from the band. On an sm_90a device
  // (the default variant) one kernel runs both, each block's band rows after its global part;
  // otherwise the global part runs as its own kernel first and writes beta * Global in fp32 to
  // global_scratch (needed then: attention_needs_global_scratch), which the band kernel adds to
  // alpha * Local. Without a split (split_global false, or no scratch where one is needed) the v1
  // kernel computes both in one pass. Each way a row's arithmetic is independent of the shard.
  bool split_global = true;
  float* global_scratch = nullptr;   // [n_tokens, d] float32
  const float* global_in = nullptr;  // internal: the band kernel adds this instead of a global part
  bool force_simple = false;         // tests: the CUDA-core kernel even where tensor cores apply
};
void launch_attention(const AttentionParams& p, cudaStream_t stream);

// Whether the tensor-core path serves these parameters.
bool attention_uses_tensor_cores(const AttentionParams& p);
// Whether launch_attention with these parameters (type, head_dim, n_global, split_global, the
// variant environment) writes through global_scratch: a split global part without the sm_90a
// kernel that runs both parts. The model reserves the scratch (n_tokens x d floats) only then.
bool attention_needs_global_scratch(const AttentionParams& p);

}  // namespace sparsa::kern
