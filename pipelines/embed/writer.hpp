// sparsa: the embeddings file (spec section 4), written at PATH.tmp and renamed into place only
// after `complete = 1` is written and the file is closed.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/record.hpp"
#include "io/h5.hpp"

namespace sparsa {

struct FileAttrs {
  std::string sparsa_version, model_sha256, model_config, command_line, created_utc, pool, dtype;
};

struct RecordOutput {
  const Record* record;  // metadata: name, description, source, region, offset, timestamps
  std::string kind;      // "dna" | "timeseries"
  std::string strand;    // "+" | "rc-average"
  int64_t length = 0;    // tokens
  const float* rows;     // [n_out, d]
  int64_t n_out = 0, d = 0;
  const int64_t* starts;  // [n_out] record positions (the writer adds the record's offset)
  const int64_t* ends;
  const int64_t* global_positions;  // [L, G]
  const float* global_scores;       // [L, G]
  int64_t n_layers = 0, n_global = 0;
};

class EmbeddingsWriter {
 public:
  // Creates `final_path`.tmp (replacing a stale one) and writes the root attributes.
  EmbeddingsWriter(const std::string& final_path, const FileAttrs& attrs, bool f16);
  // Removes the temporary file unless finish() succeeded.
  ~EmbeddingsWriter();
  void write(const RecordOutput& r);
  // Writes complete = 1, closes and renames to the final path.
  void finish();
  const std::string& temp_path() const { return tmp_; }
  static std::string key_for(int64_t index, const std::string& name);

 private:
  std::string final_, tmp_;
  bool f16_, done_ = false;
  int64_t count_ = 0;
  std::unique_ptr<h5::File> file_;
};

}  // namespace sparsa
