// sparsa: one input record (a FASTA/FASTQ sequence, a region of one, or a time series).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

struct Record {
  std::string name;  // FASTA/FASTQ header up to the first whitespace; CSV: base name or id value
  std::string description;  // rest of the header line (after the first whitespace run), or ""
  std::string source;       // input path as the user gave it
  std::string region;       // "chr:start-end" (1-based inclusive) when taken from a region, else ""
  std::string region_name;  // a BED region's name column, else ""
  int64_t offset = 0;       // 0-based coordinate of token 0 in the source record
  int64_t n_channels = 1;   // 1 for DNA; model channels for time series
  // Token ids, token-major: tokens[i * n_channels + c]. DNA: 0..6; time series: 0..ts_bins+2.
  std::vector<int32_t> tokens;
  // Time series only: the time column's text of each row (size n_tokens()).
  std::vector<std::string> timestamps;
  // What the reader would warn about (a region cut at the record's end, a repeated FASTQ name,
  // characters --invalid-as-n read as N), for the caller to say; not part of the record's output
  // or fingerprint.
  std::string warning;

  int64_t n_tokens() const { return n_channels > 0 ? (int64_t)tokens.size() / n_channels : 0; }
};

}  // namespace sparsa
