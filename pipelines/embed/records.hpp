// sparsa: the records of an embed run, in output order, from FASTA/FASTQ (whole records or
// regions) or time-series CSVs. Every problem that can be found before heavy work (missing
// files, unknown region names, bad BED lines) is found in the constructor.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/record.hpp"

namespace sparsa {

struct EmbedOptions;

class RecordSource {
 public:
  RecordSource(const EmbedOptions& opts, const ModelConfig& config);
  ~RecordSource();
  // The next record, tokenised; false when all inputs are done.
  bool next(Record& rec);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparsa
