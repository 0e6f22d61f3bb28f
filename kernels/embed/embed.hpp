// sparsa kernels: embedding lookup. x[i] = sum_c table_c[tokens[i * n_tables + c]] (spec 2).
#pragma once
#include "kernels/common/types.hpp"

namespace sparsa::kern {

struct EmbedParams {
  const int32_t* tokens;  // [n_tokens, n_tables] (device)
  const float* tables;    // [n_tables, vocab, d] (device, tables back to back)
  float* x;               // [n_tokens, d]
  int64_t n_tokens, n_tables, vocab, d;
};
// Tokens outside [0, vocab) read as zero rows (the host validates tokens before upload).
void launch_embed(const EmbedParams& p, cudaStream_t stream);

}  // namespace sparsa::kern
