// sparsa: the records of an embed run, in output order, from FASTA/FASTQ (whole records or
// regions) or time-series CSVs. Every problem that can be found before heavy work (missing
// files, unknown region names, bad BED lines) is found in the constructor.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/record.hpp"
#include "io/timeseries.hpp"

namespace sparsa {

class Comm;
struct EmbedOptions;

// Each input must be a file (not "-", a pipe, a device or a folder) that exists: InputError
// naming it otherwise. Checked with the paths, before --force sets an old output aside.
void check_input_files(const std::vector<std::string>& inputs);

class RecordSource {
 public:
  // build_indexes: --region builds a missing faidx index (false: rank 0 built it already; see
  // DnaReadOptions::build_index).
  RecordSource(const EmbedOptions& opts, const ModelConfig& config, bool build_indexes = true);
  ~RecordSource();
  // The next record, tokenised; false when all inputs are done.
  bool next(Record& rec);
  // Time series, before the first next(): input i's records, already read (by the output-size
  // estimate), so that the file is not parsed a second time.
  void prime_input(size_t i, std::vector<RawSeries>&& series);
  // With --region/--regions: how many regions (records) the run has; 0 without.
  int64_t n_regions() const;
  // With --region/--regions: the tokens of all of them (each cut at its record's end).
  int64_t region_tokens() const;
  // Time series under several ranks: from now on rank 0 alone reads the CSVs, and next() sends
  // each record it reads to every rank (a collective: every rank calls next() alike). Another
  // rank then holds one record at a time instead of every CSV parsed whole; an error in reading
  // is thrown on every rank. No-op for DNA (every rank streams the FASTA/FASTQ) and one rank.
  // Collective (rank 0's total input size is broadcast).
  void share_from_root(Comm& comm);
  // After share_from_root: rank 0's inputs' bytes together (what a rank waiting for rank 0 to
  // read them allows for); 0 without.
  int64_t shared_input_bytes() const;
  // Time series: whether next() warns about a series that embeds but perhaps not as meant (time
  // going backwards, repeated timestamps, a channel with no values); on by default. One rank
  // warns for all (every rank reads every record).
  void set_warnings(bool on);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Collective: the bytes of rank 0's inputs together (what a rank waiting for rank 0 to read
// them allows for), the same on every rank.
int64_t root_input_bytes(const std::vector<std::string>& inputs, Comm& comm);

// Runs `fn` on rank 0 alone. What it throws there is thrown on every rank, as an InputError,
// ConfigError, NumericError, Interrupted, OutOfMemory (without its device size) or SystemError
// (anything else) of the same text, so that all ranks stop at the same point and rank 0 says why.
void on_root(Comm& comm, const std::function<void()>& fn);

// Hex SHA-256 of what a record's output is made from: its name, description, region, offset,
// channels, tokens and timestamps (not the input's path). Written with the record as
// input_sha256; --resume reuses a finished record only while its record hashes the same.
std::string record_fingerprint(const Record& rec);

}  // namespace sparsa
