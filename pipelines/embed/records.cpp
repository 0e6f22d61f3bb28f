#include "pipelines/embed/records.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "core/error.hpp"
#include "core/progress.hpp"
#include "core/sha256.hpp"
#include "io/dna.hpp"
#include "io/timeseries.hpp"
#include "pipelines/embed/embed.hpp"

namespace sparsa {

struct RecordSource::Impl {
  const EmbedOptions& opts;
  const ModelConfig& config;
  size_t input = 0;  // next input file (streaming) or region (regions mode)
  std::unique_ptr<FastxReader> reader;
  // regions mode
  std::vector<std::unique_ptr<FaidxFetcher>> fetchers;  // one per input
  std::vector<std::pair<size_t, RegionSpec>> regions;   // (input index, region)
  int64_t region_tokens = 0;                            // their tokens, all together
  // time series: the records of the current file, tokenised lazily
  std::vector<RawSeries> series;
  size_t series_next = 0;
  std::map<size_t, std::vector<RawSeries>> primed;  // inputs already read (prime_input)

  Impl(const EmbedOptions& o, const ModelConfig& c) : opts(o), config(c) {
    for (const auto& in : opts.inputs) {
      std::error_code ec;
      const auto st = std::filesystem::status(in, ec);
      if (in == "-" ||
          (!ec && std::filesystem::exists(st) && !std::filesystem::is_regular_file(st) &&
           !std::filesystem::is_directory(st)))
        throw InputError(in + ": standard input, a pipe or a device, not a file: sparsa reads " +
                         "each input twice (the output-size estimate, then the records; --resume " +
                         "reads it again) and indexes it for --region, so it needs a file; save " +
                         "the stream first (e.g. `... > reads.fq`)");
      if (std::filesystem::is_directory(st)) throw InputError(in + ": a folder, not a file");
      if (ec && ec != std::errc::no_such_file_or_directory)  // a folder on the way not readable
        throw InputError(in + ": cannot read: " + ec.message());
      if (!std::filesystem::is_regular_file(st)) throw InputError(in + ": no such file");
    }
    const bool dna = config.kind == ModelKind::kDna;
    const bool any_region = !opts.regions.empty() || !opts.regions_bed.empty();
    if (!dna && any_region)
      throw ConfigError(
          "--region/--regions apply to DNA models; this model is a time-series model");
    if (dna && (!opts.columns.empty() || !opts.time_column.empty() || !opts.id_column.empty()))
      throw ConfigError(
          "--columns/--time-column/--id-column apply to time-series models; this model is DNA");
    if (!dna && opts.rc_average)
      throw ConfigError("--rc-average applies to DNA models; this model is a time-series model");
    if (!dna && opts.invalid_as_n)
      throw ConfigError("--invalid-as-n applies to DNA models; this model is a time-series model");
    if (dna && any_region) resolve_regions();
  }

  void resolve_regions() {
    DnaReadOptions ro{opts.invalid_as_n};
    std::vector<std::string> all_names;
    std::vector<std::map<std::string, bool>> names_of(opts.inputs.size());
    for (const auto& in : opts.inputs) {
      fetchers.push_back(std::make_unique<FaidxFetcher>(in, ro));
      for (auto& nm : fetchers.back()->names()) {
        names_of[fetchers.size() - 1][nm] = true;
        all_names.push_back(nm);
      }
    }
    std::vector<RegionSpec> specs;
    for (const auto& r : opts.regions) specs.push_back(parse_region(r, all_names));
    if (!opts.regions_bed.empty()) {
      std::vector<RegionSpec> bed = read_bed(opts.regions_bed);
      if (bed.empty())
        throw InputError(opts.regions_bed + ": the --regions BED file holds no regions");
      for (auto& r : bed) specs.push_back(std::move(r));
    }
    for (auto& spec : specs) {
      std::vector<size_t> found;
      for (size_t i = 0; i < opts.inputs.size(); ++i)
        if (names_of[i].count(spec.name)) found.push_back(i);
      if (found.empty()) {
        std::string files;
        for (const auto& in : opts.inputs) files += (files.empty() ? "" : ", ") + in;
        std::string some;  // the first few names there are, as a hint
        for (size_t k = 0; k < all_names.size() && k < 5; ++k)
          some += (k ? ", '" : "'") + all_names[k] + "'";
        if (all_names.size() > 5) some += ", ... (" + std::to_string(all_names.size()) + " in all)";
        throw InputError("region '" + spec.text + "': no record named '" + spec.name + "' in " +
                         files + "; its records: " + some);
      }
      if (found.size() > 1)
        throw InputError("region '" + spec.text + "': record '" + spec.name + "' is in both " +
                         opts.inputs[found[0]] + " and " + opts.inputs[found[1]] +
                         "; embed them in separate runs");
      // Checked here, before any record is embedded (a BED of another assembly would otherwise
      // fail part way); their tokens size the output estimate.
      region_tokens += fetchers[found[0]]->tokens_of(spec);
      regions.push_back({found[0], spec});
    }
  }

  // A panel of thousands of series (or a BED of thousands of regions) warns about its first few
  // records of each kind, then once that it stops.
  int warned_backwards = 0, warned_repeats = 0, warned_empty = 0, warned_reader = 0;
  static bool warn_more(int& count, const char* what) {
    constexpr int kMax = 3;
    if (++count <= kMax) return true;
    if (count == kMax + 1)
      std::fprintf(stderr, "[sparsa] warning: more records %s; not said again\n", what);
    return false;
  }
  // Warnings about a series that embeds, but perhaps not as its user thinks.
  bool warnings = true;
  void warn_about(const RawSeries& raw, const std::string& path) {
    if (!warnings) return;
    const char* file = path.c_str();
    if (const int64_t i = first_backwards_row(raw.timestamps);
        i > 0 && warn_more(warned_backwards, "go backwards in time"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': time goes backwards at line %lld ('%s' "
                   "after '%s'); rows are embedded in file order, so a newest-first file is "
                   "read backwards: sort it oldest first\n",
                   file, raw.name.c_str(), (long long)raw.source_rows[i],
                   std::string(raw.timestamps[i]).c_str(),
                   std::string(raw.timestamps[i - 1]).c_str());
    if (const RepeatedTimes r = repeated_times(raw.timestamps);
        r.first > 0 && warn_more(warned_repeats, "repeat timestamps"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': timestamp '%s' at line %lld repeats the "
                   "line before (%s in all); is the time split over two columns (date, "
                   "time)? Rows are embedded in file order either way\n",
                   file, raw.name.c_str(), std::string(raw.timestamps[r.first]).c_str(),
                   (long long)raw.source_rows[r.first], count_of(r.count, "such row").c_str());
    std::string empty;  // the record's channels with no value, as "column 'a', column 'b'"
    for (size_t c = 0; c < raw.values.size(); ++c) {
      const auto& v = raw.values[c];
      if (v.empty() || !std::all_of(v.begin(), v.end(), [](double x) { return std::isnan(x); }))
        continue;
      empty += (empty.empty() ? "" : ", ") + channel_label(raw, (int64_t)c);
    }
    if (!empty.empty() && warn_more(warned_empty, "have a channel with no values"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': %s: no values (every cell missing): its "
                   "tokens are all MISSING\n",
                   file, raw.name.c_str(), empty.c_str());
  }

  // What the DNA readers noted on a record (Record::warning), under the same limit for all.
  void say_reader_warning(const Record& rec) {
    if (!rec.warning.empty() && warnings && warn_more(warned_reader, "have warnings like these"))
      std::fprintf(stderr, "[sparsa] warning: %s\n", rec.warning.c_str());
  }

  bool next(Record& rec) {
    if (!fetchers.empty()) {
      if (input >= regions.size()) return false;
      auto& [idx, spec] = regions[input++];
      rec = fetchers[idx]->fetch(spec);
      say_reader_warning(rec);
      return true;
    }
    if (config.kind == ModelKind::kTimeseries) {
      while (series_next >= series.size()) {
        if (input >= opts.inputs.size()) return false;
        if (auto p = primed.find(input); p != primed.end()) {
          series = std::move(p->second);
          primed.erase(p);
        } else {
          CsvOptions co{opts.time_column, opts.columns, opts.id_column};
          series = read_timeseries_csv(opts.inputs[input], co, config.channels);
        }
        series_next = 0;
        ++input;
      }
      const RawSeries& raw = series[series_next];
      warn_about(raw, opts.inputs[input - 1]);
      rec = tokenize_series(std::move(series[series_next]), config, opts.inputs[input - 1]);
      series[series_next++] = RawSeries{};  // free what was read
      return true;
    }
    while (true) {
      if (!reader) {
        if (input >= opts.inputs.size()) return false;
        reader =
            std::make_unique<FastxReader>(opts.inputs[input++], DnaReadOptions{opts.invalid_as_n});
      }
      if (reader->next(rec)) {
        say_reader_warning(rec);
        return true;
      }
      reader.reset();
    }
  }
};

RecordSource::RecordSource(const EmbedOptions& opts, const ModelConfig& config)
    : impl_(std::make_unique<Impl>(opts, config)) {}
RecordSource::~RecordSource() = default;
bool RecordSource::next(Record& rec) { return impl_->next(rec); }
int64_t RecordSource::n_regions() const { return (int64_t)impl_->regions.size(); }
int64_t RecordSource::region_tokens() const { return impl_->region_tokens; }
void RecordSource::set_warnings(bool on) { impl_->warnings = on; }

void RecordSource::prime_input(size_t i, std::vector<RawSeries>&& series) {
  if (impl_->input != 0 || impl_->config.kind != ModelKind::kTimeseries ||
      i >= impl_->opts.inputs.size())
    throw SystemError("internal: prime_input on a source already begun or not a time series");
  impl_->primed[i] = std::move(series);
}

std::string record_fingerprint(const Record& rec) {
  Sha256 h;
  h.update_field("sparsa-record 1");
  h.update_field(rec.name);
  h.update_field(rec.description);
  h.update_field(rec.region);
  // (Only when set: the fingerprints of records without it stay those of earlier versions.)
  if (!rec.region_name.empty()) h.update_field("region_name " + rec.region_name);
  const int64_t nums[3] = {rec.offset, rec.n_channels, (int64_t)rec.tokens.size()};
  h.update(nums, sizeof nums);
  h.update(rec.tokens.data(), rec.tokens.size() * sizeof(int32_t));
  const int64_t n_ts = (int64_t)rec.timestamps.size();
  h.update(&n_ts, sizeof n_ts);
  for (size_t i = 0; i < rec.timestamps.size(); ++i) h.update_field(rec.timestamps[i]);
  return h.hex();
}

}  // namespace sparsa
