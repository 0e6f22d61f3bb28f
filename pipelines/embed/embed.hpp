// sparsa: the batch embedding pipeline (read -> forward -> pool -> write), streamed one record
// at a time. Collective over `comm`: every rank runs it with the same options.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dist/comm.hpp"

namespace sparsa {

struct PoolSpec {
  enum Kind { kNone, kBin, kMean } kind = kNone;
  int64_t bin = 1;
  std::string text() const;       // "none", "bin:N", "mean"
  int64_t rows(int64_t n) const;  // output rows of a record of n tokens
};
// Parses none | bin:N | mean; throws ConfigError.
PoolSpec parse_pool(const std::string& s);

struct EmbedOptions {
  std::string model;
  std::vector<std::string> inputs;
  std::string output;
  std::vector<std::string> regions;  // samtools syntax
  std::string regions_bed;
  PoolSpec pool;
  bool f16 = true;  // --dtype f16 (default) or f32
  bool rc_average = false;
  bool invalid_as_n = false;
  std::vector<std::string> columns;
  std::string time_column, id_column;
  std::string device = "auto";   // cpu | cuda | auto (CUDA when a GPU is usable)
  std::string device_note;       // why the device is the CPU where the user did not say so
  std::string threads_note;      // how the default thread count came ("" where given)
  bool cuda_fp32 = false;        // --precision fp32: the CUDA backend in float32 (validation)
  bool precision_given = false;  // --precision on the command line (it applies to CUDA only)
  bool resume = false, force = false, quiet = false;
  // Records of at least this many tokens are split over all ranks; shorter ones go whole to one
  // rank each, balanced by length. Results are identical either way.
  int64_t split_min = 1 << 20;
  std::string command_line;  // echoed into the output file
};

struct EmbedSummary {
  int64_t records = 0, tokens = 0;  // computed in this run (resumed records not counted)
  int64_t resumed = 0;              // records found finished in the journal
  double seconds = 0;
  bool already_complete = false;  // --resume found a finished output
};

// Throws InputError / ConfigError / SystemError / NumericError. On any error the temporary
// output is removed and nothing is left at opts.output.
EmbedSummary run_embed(const EmbedOptions& opts, Comm& comm);

// Pools rows [first_pos, first_pos + n) of a record (the shard must start on a bin boundary):
// returns per-bin means (bin:N), the rows themselves (none), or for mean the per-64-row block sums
// (double) that combine_mean adds in block order, so the result never depends on the split.
struct Pooled {
  std::vector<float> rows;       // [n_out, d]
  std::vector<uint16_t> rows16;  // or, rows a backend returned in float16 (ForwardOutput::y16)
  std::vector<int64_t> starts;   // record positions, 0-based half-open [start, end)
  std::vector<int64_t> ends;
  std::vector<double> block_sums;  // mean only: [n_blocks, d]
};
// y: the shard's n rows [n, d]; `none` moves them into the result (a genome's rows are GBs).
Pooled pool_shard(std::vector<float>&& y, int64_t n, int64_t d, int64_t first_pos, int64_t n_record,
                  const PoolSpec& pool);
std::vector<float> combine_mean(const std::vector<double>& block_sums, int64_t d, int64_t n_record);

// Short records of one batch on the CPU, longest first (`order`: indices into `tokens`, ties in
// input order), in waves: a record a thread while there are at least as many records left as
// threads, then the rest at once, each record's ops over threads / rest of them (a lone record
// gets every thread), so the last records do not leave threads idle.
struct SideWave {
  int outer = 1, inner = 1;    // records at once, threads a record (outer x inner <= threads)
  int64_t begin = 0, end = 0;  // a range of `order`
};
struct SidePlan {
  std::vector<int64_t> order;
  std::vector<SideWave> waves;
};
SidePlan cpu_side_plan(int threads, const std::vector<int64_t>& tokens);

}  // namespace sparsa
