// Fuzzes the time-series CSV reader and the tokeniser: the input bytes are the CSV file.
//
// The file is read as one record and, when it has an "id" column, as one record per id; every
// record that is read is then tokenised with each of the three transforms, with a small config
// whose channel count is the file's.
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/error.hpp"
#include "fuzz_util.hpp"
#include "io/timeseries.hpp"

namespace {

using sparsa::fuzz::invariant_failed;

void tokenize_all(const std::vector<sparsa::RawSeries>& records, const std::string& path) {
  for (const auto& raw : records) {
    if (raw.values.empty()) invariant_failed("a record without channels was returned");
    for (auto tr : {sparsa::TsTransform::kLevel, sparsa::TsTransform::kLogReturn,
                    sparsa::TsTransform::kDiff}) {
      sparsa::ModelConfig config;
      config.kind = sparsa::ModelKind::kTimeseries;
      config.channels = (int64_t)raw.values.size();
      config.ts_bins = 16;
      config.ts_clip = 4.0;
      config.ts_transform = tr;
      try {
        sparsa::Record rec = sparsa::tokenize_series(raw, config, path);
        if (rec.n_tokens() != (int64_t)raw.timestamps.size())
          invariant_failed("token count differs from row count");
        for (int32_t t : rec.tokens)
          if (t < 2 || t >= 3 + config.ts_bins) invariant_failed("token out of range");
      } catch (const sparsa::Error&) {
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sparsa::fuzz::write_temp("series.csv", data, size);
  for (const char* id_column : {"", "id"}) {
    sparsa::CsvOptions opts;
    opts.id_column = id_column;
    try {
      tokenize_all(sparsa::read_timeseries_csv(path, opts, 0), path);
    } catch (const sparsa::Error&) {
    }
  }
  return 0;
}
