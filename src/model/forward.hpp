// sparsa: the forward pass of one record, or of one rank's shard of it (spec section 2).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/error.hpp"
#include "dist/comm.hpp"
#include "model/weights.hpp"

namespace sparsa {

// Rank `rank` of `size` owns record positions [begin, end) of a record of n_record tokens.
struct Shard {
  int64_t n_record = 0;
  int64_t begin = 0, end = 0;
  int64_t align = 1;      // the layout's boundaries are multiples of align (pooling bins)
  bool mirrored = false;  // reverse-complement pass: rank r owns the mirror of its forward shard
  int64_t size() const { return end - begin; }
};
// Contiguous, balanced split with boundaries rounded down to multiples of `align`: rank r gets
// [B(r), B(r+1)) with B(r) = floor(floor(r n / P) / align) * align, B(P) = n. Mirrored: rank r
// gets [n - B(r+1), n - B(r)), so the reverse-complement output of a rank's forward rows is local.
Shard shard_of(int64_t n_record, int rank, int size, int64_t align = 1, bool mirrored = false);

// Record positions [begin, end) whose K and V a shard's band attention reads (its rows plus the
// window beyond each edge, clipped to the record; the left side only when causal).
struct KvRange {
  int64_t begin, end;
};
KvRange kv_range(const Shard& s, int64_t window, bool causal);

// The halo plan of one rank: for every other rank, which of its own rows that rank needs (sends)
// and which of that rank's rows it needs (recvs), in record positions. Both backends use it, so
// they exchange the same rows.
struct HaloPlan {
  std::vector<std::pair<int, KvRange>> sends, recvs;  // (peer, record positions)
};
HaloPlan plan_halo(const Shard& me, int rank, int size, int64_t window, bool causal);

struct ForwardOutput {
  std::vector<float> y;  // [shard size, d] = RMSNorm(x, final_norm)
  // Instead of y, where a backend was asked for float16 rows (CudaOptions::rows_f16): their
  // float16 bits, rounded to nearest even from the float32 rows.
  std::vector<uint16_t> y16;
  // 0: y holds a row per token. N > 0: a backend pooled on the device and y holds the means of
  // N-row bins of the shard ([ceil(size / N), d], double sums as pool_shard does).
  int64_t pooled_bin = 0;
  // Instead of y, where a backend made a mean pool's block sums on the device (CudaModel::
  // forward_packed): the double sums of the shard's blocks of rows, [blocks, d], as pool_shard
  // makes them.
  std::vector<double> block_sums;
  int64_t n_global = 0;                   // G
  std::vector<int64_t> global_positions;  // [L, G] ascending per layer
  std::vector<float> global_scores;       // [L, G]
  // The rows went to ForwardHooks::rows_out instead of into y / y16 (both empty).
  bool rows_streamed = false;
};

struct ForwardHooks {
  std::function<void(int64_t layer)> after_layer;  // progress; called on every rank
  // Progress inside a layer (a backend whose layers take long: the CPU's): the share of the
  // layer's work done, by its FLOPs, after each of its stages. Optional, rank-local.
  std::function<void(int64_t layer, double fraction)> in_layer;
  // Optional, honoured by the CPU backend with one rank only (ranks together stop at layer ends):
  // polled inside a layer's ops; once true, forward throws Interrupted(cancel_message) at the
  // end of the op at work, its remaining tiles skipped (the record's work is lost: the caller
  // keeps nothing of it). A stop need not wait for a layer that takes minutes.
  bool (*cancel)() = nullptr;
  const char* cancel_message = "stopped";
  // Optional, a row per token only: a backend that brings rows back from a device may hand
  // them over here in pieces, in order (shard rows [row0, row0 + n_rows), float16 bits where it
  // was asked for float16 rows, else float32; the memory is valid during the call), and set
  // ForwardOutput::rows_streamed. The host never holds all rows at once then. Not called when
  // the output is not finite (forward throws instead). Backends may ignore it (the CPU does).
  std::function<void(int64_t row0, int64_t n_rows, const void* rows)> rows_out;
};

// Runs the model on one shard. `tokens` holds the shard's tokens ([shard size, n_tables]).
// With comm.size() == 1 the shard must be the whole record. Collective: every rank of `comm`
// calls it with the same record and its own shard (shard_of(n, rank, size)).
// Throws NumericError when any output is NaN or Inf.
ForwardOutput forward(const ModelWeights& w, const int32_t* tokens, const Shard& shard, Comm& comm,
                      const ForwardHooks& hooks = {});

// Spec 2's --rc-average of a shard's rows: fwd[t] = (fwd[t] + rev[m - 1 - t]) / 2, where rev holds
// the rows of the mirrored shard of the reverse complement (its row m - 1 - t is forward row t).
void rc_average_rows(std::vector<float>& fwd, const std::vector<float>& rev, int64_t m, int64_t d);

// The errors for a value that is not finite, the same from every backend: a router score (its
// layer and record position) or an output value (position and dimension), with the likely cause.
NumericError router_not_finite(int64_t position, int64_t layer);
NumericError output_not_finite(int64_t position, int64_t dimension);

}  // namespace sparsa
