// sparsa CPU backend: the oracle. Every op is a plain function over a flat params struct, written
// for clarity and exactness; OpenMP over tokens, BLAS (single-threaded per call) for projections.
// Shapes: n_tokens rows of this shard, the first at record position first_pos.
//
// NOTE: a token's result must not depend on how the record is split over ranks (spec section 2).
// Every op below computes row i from row i's inputs only, in an order fixed by the model's sizes,
// never by n_tokens: GEMMs run on row tiles of kRowTile rows aligned to record positions, so a row
// always sits in the same tile slot of a GEMM of the same M, N, K (see docs/model.md).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace sparsa::cpu {

constexpr int64_t kRowTile = 64;
// How many tiles the record positions [first_pos, first_pos + n_tokens) touch (0 for none): the
// tiles an op over those rows runs, each polled once (Cancel below).
int64_t tile_count(int64_t first_pos, int64_t n_tokens);

// Makes OpenBLAS single-threaded (we parallelise over row tiles ourselves). Idempotent.
void init_threads();

struct RmsNormParams {
  const float* x;     // [n_tokens, dim]
  const float* gain;  // [dim]
  float* out;         // [n_tokens, dim] (may alias x)
  int64_t n_tokens, dim;
  double eps;
};
void rmsnorm(const RmsNormParams& p);

// Optional in the ops that run tile by tile over a layer's rows (attn_inputs, linear,
// dsa_attention, mlp_block): polled before each tile; once it returns true the tiles not begun
// are skipped, so the output is garbage and the caller must throw it away (forward stops with
// Interrupted). Like ggml's abort callback: a stop need not wait for the end of an op that takes
// seconds on a long record. Must be safe to call from any thread. (The caller also counts the
// tiles begun with it, for progress inside an op.)
using Cancel = std::function<bool()>;

// y = x W (+ y when accumulate). W is [d_in, d_out] row-major.
struct LinearParams {
  const float* x;  // [n_tokens, d_in]
  const float* w;  // [d_in, d_out]
  float* y;        // [n_tokens, d_out], must not alias x
  int64_t n_tokens, d_in, d_out;
  int64_t first_pos;  // record position of row 0 (tile alignment)
  bool accumulate;
  Cancel cancel = nullptr;
};
void linear(const LinearParams& p);

// The attention inputs of one layer, tile by tile (no [n, d] buffer for the normed input):
//   h = RMSNorm(x, norm); q, k, v = h Wq, h Wk, h Wv; s = router(h).
struct AttnInputParams {
  const float* x;             // [n_tokens, d]
  const float* norm;          // [d]
  const float *wq, *wk, *wv;  // [d, d]
  const float* router_w1;     // [d, hidden]
  const float* router_b1;     // [hidden]
  const float* router_w2;     // [hidden]
  float router_b2;
  float *q, *k, *v;  // [n_tokens, d] each (before RoPE)
  float* scores;     // [n_tokens]
  int64_t n_tokens, d, hidden, first_pos;
  double eps;
  Cancel cancel = nullptr;
};
void attn_inputs(const AttnInputParams& p);

// RoPE "rotate half" on each head of each row, angle = p * base^(-2k/dh) in double.
struct RopeParams {
  float* x;  // [n_tokens, n_heads * head_dim]
  int64_t n_tokens, n_heads, head_dim;
  int64_t first_pos;
  double base;
  float* x2 = nullptr;  // optional second tensor of the same shape (k beside q): shares cos/sin
};
void rope(const RopeParams& p);

// s_i = GELU(h_i W1 + b1) . w2 + b2 (exact erf GELU).
struct RouterParams {
  const float* h;   // [n_tokens, d]
  const float* w1;  // [d, hidden]
  const float* b1;  // [hidden]
  const float* w2;  // [hidden]
  float b2;
  float* scores;  // [n_tokens]
  int64_t n_tokens, d, hidden, first_pos;
};
void router(const RouterParams& p);

// A routing candidate: ordered by score descending, then position ascending (spec tie rule).
struct GlobalCandidate {
  float score;
  int64_t pos;
};
inline bool better(const GlobalCandidate& a, const GlobalCandidate& b) {
  return a.score > b.score || (a.score == b.score && a.pos < b.pos);
}
// The best `g` of n_tokens scores in O(n log g), best first. Throws NumericError on NaN/Inf.
std::vector<GlobalCandidate> top_g(const float* scores, int64_t n_tokens, int64_t first_pos,
                                   int64_t g);
// The best `g` of a union of candidate lists, returned in ascending position order.
std::vector<GlobalCandidate> select_global(std::vector<GlobalCandidate> all, int64_t g);

// Local-window + gated global attention, mixed per head:
//   out_i = alpha_h * Local_i + beta_h * Global_i
struct AttentionParams {
  const float* q;  // [n_tokens, d], after RoPE
  const float* k;  // [kv_count, d], positions kv_begin .. kv_begin + kv_count - 1, after RoPE
  const float* v;  // [kv_count, d]
  int64_t kv_begin, kv_count;
  const float* k_global;      // [n_global, d], after RoPE
  const float* v_global;      // [n_global, d]
  const float* gamma;         // [n_global] sigmoid(score)
  const int64_t* pos_global;  // [n_global], ascending
  int64_t n_global;
  const float* alpha;  // [n_heads]
  const float* beta;   // [n_heads]
  float* out;          // [n_tokens, d]; may alias q
  int64_t n_tokens, first_pos, n_record, n_heads, head_dim, window;
  bool causal;
  int64_t row_begin, row_end;  // rows of this shard to compute (for interior/edge overlap)
  Cancel cancel = nullptr;
};
void dsa_attention(const AttentionParams& p);

// x += GELU(RMSNorm(x, norm) W_up) W_down, tile by tile (no [n, d_ff] buffer).
struct MlpParams {
  float* x;             // [n_tokens, d]
  const float* norm;    // [d]
  const float* w_up;    // [d, d_ff]
  const float* w_down;  // [d_ff, d]
  int64_t n_tokens, d, d_ff, first_pos;
  double eps;
  Cancel cancel = nullptr;
};
void mlp_block(const MlpParams& p);

// x[i] = sum_c table_c[tok[i * n_tables + c]]
struct EmbedParams {
  const int32_t* tokens;       // [n_tokens, n_tables]
  const float* const* tables;  // n_tables pointers to [vocab, d]
  float* x;                    // [n_tokens, d]
  int64_t n_tokens, n_tables, vocab, d;
};
void embed(const EmbedParams& p);

float gelu(float x);  // 0.5 x (1 + erf(x / sqrt 2)), computed in double
// Index of the first non-finite value, or -1.
int64_t find_nonfinite(const float* x, int64_t n);

}  // namespace sparsa::cpu
