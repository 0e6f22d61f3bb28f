// sparsa CUDA backend: the DSA model of spec section 2 on one GPU per rank (plain C++ header).
// CudaModel::forward returns exactly what sparsa::forward (the CPU oracle) returns and follows the
// same shard protocol: K/V halos after RoPE and the global set (candidates, then the chosen K/V
// rows) exchanged between the ranks of `comm`. With more than one rank, the exchanges go device to
// device through an NCCL communicator (dist/comm_nccl.hpp) that the model creates on the first
// such forward (bootstrapped over `comm`); with SPARSA_NCCL=0 (or CudaOptions::nccl = 0) they go
// through comm.start_exchange / wait_exchange / allgatherv instead, only the halo rows and the G
// chosen rows staged through host memory (so that any Comm works). Both paths give identical
// results, equal to one rank's (a row's arithmetic does not depend on the shard); on one rank
// holding the whole record nothing is exchanged.
//   fp32 mode (bf16 = false): every tensor float32, for validation against the CPU (tight).
//   bf16 mode: projections, MLP and attention in bf16 with fp32 accumulation; the residual stream,
//   norms, RoPE angles and router scores stay float32 (the router reads the fp32 stream, so the
//   global set follows the CPU's wherever scores differ by more than rounding).
#pragma once
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "backends/cuda/device.hpp"
#include "model/forward.hpp"
#include "model/weights.hpp"

namespace sparsa {

class NcclComm;  // dist/comm_nccl.hpp

using cuda::cuda_available;  // bool cuda_available(std::string* why)

// What forward() does with the final [shard size, d] float32 output y.
enum class CudaOutput {
  kHost,    // ForwardOutput::y holds it (the CPU backend's contract; 4 d bytes a token cross PCIe)
  kPooled,  // ForwardOutput::y holds the bin means [ceil(size / pool_bin), d] (kern::launch_pool);
            // for a mirrored shard (the reverse-complement pass) bin k holds the rows that
            // mirror the forward shard's bin k (rows size - 1 - t for t in bin k), so that the
            // two passes' bins pair up index by index
  kDevice,  // ForwardOutput::y is empty; CudaModel::device_output() points at y on the device
};

struct CudaOptions {
  bool bf16 = true;
  int device = -1;  // -1: node-local rank modulo the device count
  // Rows per chunk of the projection / MLP scratch (about 6.2 KB a row for dna-base in bf16);
  // 0: 131072 for a shard of up to 2^24 rows, else 65536 (env SPARSA_CHUNK_ROWS=N: N). A row's
  // bits do not depend on it (the GEMMs' algorithms are fixed per shape, tests/gpu).
  int64_t chunk_rows = 0;
  CudaOutput output = CudaOutput::kHost;
  int64_t pool_bin = 128;  // rows per bin for CudaOutput::kPooled
  // CudaOutput::kHost with mean_block > 0: ForwardOutput::block_sums (a mean pool's double sums
  // of mean_block rows each, pool_shard's bits) instead of the rows, in forward and
  // forward_rc_average (where it averages on the device). The shard must start on a block edge.
  int64_t mean_block = 0;
  // Exchanges of a split record: 1 NCCL (device to device), 0 host-staged through the Comm,
  // -1 from the environment (SPARSA_NCCL=0 selects host staging; default NCCL).
  int nccl = -1;
  // Per-stage timing with CUDA events (also switched on by the environment: SPARSA_PROFILE=1,
  // which prints the table to stderr after every forward).
  bool profile = false;
  // Rows per attention chunk: Q, K and V (of the chunk and its band), the global part's fp32
  // scratch and the attention output exist for one chunk at a time (about 10 d bytes a row in
  // bf16), so the longest record is bounded by x alone (4 d bytes a token).
  int64_t attn_chunk_rows = int64_t{1} << 20;
  // forward_rc_average: keep the forward pass's rows on the device and average there (when there
  // is room); false: bring both passes' rows back and average on the host (A/B runs, tests).
  bool rc_on_device = true;
  // CudaOutput::kHost: the rows come back as float16 (ForwardOutput::y16, y empty), converted on
  // the device with the host's rounding (to nearest even): half the bytes over PCIe, no host
  // conversion (sparsa embed --dtype float16 with per-token rows).
  bool rows_f16 = false;
};

// One stage's share of the last profiled forward: GPU time between the events that bound it,
// summed over layers and chunks (host work while the stream idles counts in the stage it stalls).
struct StageTime {
  std::string name;
  double ms = 0;
  int64_t count = 0;  // intervals summed
};

// CudaModel::forward_packed's items, options and results (below).
struct CudaPackedItem {
  const int32_t* tokens = nullptr;  // [n, n_tables]
  int64_t n = 0;
  bool mirrored = false;  // the reverse-complement pass: bins pooled as a mirrored shard's
};
struct CudaPackedOptions {
  // Items 2k and 2k + 1 are a record and its reverse complement (mirrored): one result a pair,
  // as sparsa embed's --rc-average makes it: rows (and a mean pool's blocks) of the rows
  // averaged on the device (forward_rc_average's bits); bins of each pass's bins, their means
  // averaged (0.5 f + 0.5 r). The pair's global sets are the forward pass's.
  bool rc_pairs = false;
  // CudaOutput::kHost: > 0: ForwardOutput::block_sums (a mean pool's blocks of this many rows)
  // instead of the rows.
  int64_t mean_block = 0;
};
struct CudaPackedResult {
  ForwardOutput out;
  std::exception_ptr error;
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
  // Spec 2's --rc-average in one call (CudaOutput::kHost only): forward(tokens, shard), then
  // forward(rc_tokens, mirror) for the reverse complement's mirrored shard, the rows averaged on
  // the device as rc_average_rows does (the same bits) and copied back once. Returns the forward
  // pass's output (its global sets) with y (or y16, CudaOptions::rows_f16) the average. Where the
  // device lacks room for a copy of the forward rows (4 d bytes a token and 1 GB), or
  // CudaOptions::rc_on_device is false, both passes' rows come back to the host and are averaged
  // there.
  ForwardOutput forward_rc_average(const int32_t* tokens, const Shard& shard,
                                   const int32_t* rc_tokens, const Shard& mirror, Comm& comm,
                                   const ForwardHooks& hooks = {});

  // Many short whole records in one pass (a FASTQ of reads): their rows packed one after
  // another, so the embedding, norms, projections, router, MLP and output run once over all of
  // them; the global sets are chosen per record in one launch (kern::launch_topg_segments) and
  // the attention runs per record (launches spread over several streams). Each item's output is
  // what forward(tokens, its whole-record shard, a one-rank Comm) returns, bit for bit (a row's
  // arithmetic does not depend on the rows beside it); see PackedOptions for pairs and means.
  // An item's error (NumericError: a router score or output that is not finite) is its own; the
  // others are still returned. Records of up to packed_max_tokens() tokens; CudaOutput::kHost
  // or kPooled. Throws OutOfMemory where the pack does not fit (the caller then runs the records
  // one at a time).
  using PackedItem = CudaPackedItem;
  using PackedOptions = CudaPackedOptions;
  using PackedResult = CudaPackedResult;
  std::vector<PackedResult> forward_packed(const std::vector<PackedItem>& items,
                                           const PackedOptions& options = {});
  // The longest record forward_packed takes on this model's GPU (kern::topg_segment_max_len).
  int64_t packed_max_tokens() const;
  // Frees the buffers only forward_packed uses (Q/K/V of every packed row, its tables), so a
  // long record after a batch of short ones has their room; the next pack makes them again.
  void release_packed();

  // The NCCL communicator over `comm` that a split record's forward will use, still being made
  // (NcclComm::start, on this model's device): taken, with its error if any, by the first forward
  // that needs it, instead of made there (~0.5 s). Ignored where NCCL is off for this model.
  void adopt_nccl(std::future<std::unique_ptr<NcclComm>> pending, Comm& comm);

  int device() const;
  // y of the last forward on the device ([shard size, d] float32), for CudaOutput::kDevice.
  const float* device_output() const;
  // Per-stage times of the last forward when profiling was on (empty otherwise), and a table.
  void set_profile(bool on);
  const std::vector<StageTime>& profile() const;
  static std::string format_profile(const std::vector<StageTime>& stages, int64_t n_layers);
  // Device bytes held by this model (weights + the largest activations so far).
  int64_t device_bytes() const;
  // Whether the last forward scored the router with the split bf16 GEMM (router_split.hpp).
  bool split_router() const;
  // ... and whether by the fused kernel (kern::launch_router_fused).
  bool fused_router() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparsa
