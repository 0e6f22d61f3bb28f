// sparsa: one input record (a FASTA/FASTQ sequence, a region of one, or a time series).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sparsa {

// Texts kept end to end in one buffer: a time series of millions of rows holds its time column
// in about (length + 8) bytes a row, where a std::string each took 32 bytes and, past 15
// characters (an ISO time), a heap block besides.
class StringColumn {
 public:
  StringColumn() = default;
  StringColumn(std::initializer_list<std::string_view> texts) {
    for (std::string_view t : texts) push_back(t);
  }
  void push_back(std::string_view t) {
    text_.append(t);
    ends_.push_back(text_.size());
  }
  size_t size() const { return ends_.size(); }
  bool empty() const { return ends_.empty(); }
  std::string_view operator[](size_t i) const {
    const size_t begin = i == 0 ? 0 : ends_[i - 1];
    return std::string_view(text_).substr(begin, ends_[i] - begin);
  }
  std::vector<std::string> strings() const {
    std::vector<std::string> out;
    out.reserve(size());
    for (size_t i = 0; i < size(); ++i) out.emplace_back((*this)[i]);
    return out;
  }
  bool operator==(const StringColumn&) const = default;
  // Its two buffers as they are (to send a column to another process without a copy): the texts
  // end to end, and where each ends.
  const std::string& text() const { return text_; }
  const std::vector<size_t>& ends() const { return ends_; }
  // The column of these buffers; false (and the column unchanged) unless `ends` is ascending and
  // ends at text.size().
  bool assign(std::string text, std::vector<size_t> ends) {
    size_t prev = 0;
    for (size_t e : ends) {
      if (e < prev) return false;
      prev = e;
    }
    if (prev != text.size()) return false;
    text_ = std::move(text);
    ends_ = std::move(ends);
    return true;
  }

 private:
  std::string text_;
  std::vector<size_t> ends_;
};

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
  StringColumn timestamps;
  // Time series only: each channel's scale s_c (spec 1, step 2), the divisor of its transformed
  // values; written as the record's ts_scale so a user can map tokens back to values.
  std::vector<double> ts_scale;
  // What the reader would warn about (a region cut at the record's end, a repeated FASTQ name,
  // characters --invalid-as-n read as N), for the caller to say; not part of the record's output
  // or fingerprint.
  std::string warning;
  // --invalid-as-n: how many of the record's characters were read as N (its invalid_as_n
  // attribute in the output where > 0).
  int64_t read_as_n = 0;

  int64_t n_tokens() const { return n_channels > 0 ? (int64_t)tokens.size() / n_channels : 0; }
};

}  // namespace sparsa
