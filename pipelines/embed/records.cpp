#include "pipelines/embed/records.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "core/error.hpp"
#include "core/paths.hpp"
#include "core/progress.hpp"
#include "core/sha256.hpp"
#include "core/signals.hpp"
#include "core/utf8.hpp"
#include "dist/comm.hpp"
#include "io/dna.hpp"
#include "io/timeseries.hpp"
#include "pipelines/embed/embed.hpp"

namespace sparsa {

namespace {
// Whether two timestamps are local times of one day without a UTC offset ("2024-11-03 01:30"
// and "2024-11-03 01:00"): a step back within a day may be the hour daylight saving time
// repeats.
bool same_day(std::string_view a, std::string_view b) {
  return a.size() > 10 && b.size() > 10 && a.substr(0, 10) == b.substr(0, 10) &&
         a.find_first_of("T ", 8) != std::string_view::npos &&
         a.find_first_of("+-Z", 10) == std::string_view::npos &&
         b.find_first_of("+-Z", 10) == std::string_view::npos;
}
}  // namespace

void check_input_files(const std::vector<std::string>& inputs) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string& in = inputs[i];
    std::error_code ec;
    const auto st = std::filesystem::status(in, ec);
    if (in == "-" || (!ec && std::filesystem::exists(st) && !std::filesystem::is_regular_file(st) &&
                      !std::filesystem::is_directory(st)))
      throw InputError(in + ": standard input, a pipe or a device, not a file: sparsa reads " +
                       "each input twice (the output-size estimate, then the records; --resume " +
                       "reads it again) and indexes it for --region, so it needs a file; save " +
                       "the stream first (e.g. `... > reads.fq` or `... > series.csv`)");
    if (std::filesystem::is_directory(st)) throw InputError(in + ": a folder, not a file");
    if (ec && ec != std::errc::no_such_file_or_directory)  // a folder on the way not readable
      throw InputError(in + ": cannot read: " + ec.message());
    // (a second input named like an output: most likely `-i in.fa out.h5`, minimap2's order)
    const bool like_output = i > 0 && in.size() > 3 && in.ends_with(".h5");
    if (!std::filesystem::is_regular_file(st))
      throw InputError(in + ": no such file" +
                       (like_output
                            ? " (input " + std::to_string(i + 1) +
                                  ": -i/--input takes every word up to the next option, so a "
                                  "word meant as the output goes after -o/--output)"
                            : std::string()));
    if (::access(in.c_str(), R_OK) != 0)
      throw InputError(in + ": cannot read: " + std::strerror(errno));
  }
}

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
  Comm* shared = nullptr;   // share_from_root: rank 0 reads, every rank gets each record
  int64_t input_bytes = 0;  // the inputs' sizes together

  bool build_indexes = true;
  Impl(const EmbedOptions& o, const ModelConfig& c, bool build) : opts(o), config(c) {
    build_indexes = build;
    check_input_files(opts.inputs);
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
    // Each input's format (its first line), before any record is embedded: a CSV or a SAM file
    // among FASTA inputs stopped the run only when its turn came, and dropping it from the
    // command then made a different run that --resume refuses; a single input too, so that an
    // empty file or a CSV is said before the device is set up.
    if (dna && !any_region)
      for (const auto& in : opts.inputs) FastxReader probe(in, DnaReadOptions{opts.invalid_as_n});
  }

  void resolve_regions() {
    if (!opts.regions_bed.empty()) refuse_named_fifo(opts.regions_bed, "--regions");
    DnaReadOptions ro{opts.invalid_as_n, build_indexes};
    std::vector<std::string> all_names;
    std::vector<std::map<std::string, bool>> names_of(opts.inputs.size());
    // An input that cannot be indexed (plain gzip) among several: its names read through, and
    // its error said only where a region names one of its records (the others' regions ran).
    std::vector<std::string> unindexed(opts.inputs.size());
    for (size_t i = 0; i < opts.inputs.size(); ++i) {
      std::vector<std::string> names;
      try {
        fetchers.push_back(std::make_unique<FaidxFetcher>(opts.inputs[i], ro));
        names = fetchers.back()->names();
      } catch (const InputError& e) {
        if (opts.inputs.size() == 1 || !plain_gzip(opts.inputs[i])) throw;
        fetchers.push_back(nullptr);
        unindexed[i] = e.what();
        names = record_names(opts.inputs[i]);
      }
      for (auto& nm : names) {
        names_of[i][nm] = true;
        all_names.push_back(nm);
      }
    }
    std::vector<RegionSpec> specs;
    for (const auto& r : opts.regions) {
      specs.push_back(parse_region(r, all_names));
      if (!specs.back().warning.empty()) setup_warnings.push_back(specs.back().warning);
    }
    if (!opts.regions_bed.empty()) {
      std::vector<RegionSpec> bed;
      std::vector<long long> empty;
      try {
        bed = read_bed(opts.regions_bed, &empty);
      } catch (const InputError& e) {  // which option named the file (a folder, a FASTA...)
        throw InputError("--regions " + std::string(e.what()));
      }
      if (bed.empty())
        throw InputError(opts.regions_bed + ": the --regions BED file holds no regions" +
                         (empty.empty() ? "" : " of one base or more (only zero-length ones)"));
      if (!empty.empty()) {
        std::string lines;
        for (size_t k = 0; k < empty.size() && k < 5; ++k)
          lines += (k ? ", " : "") + std::to_string(empty[k]);
        if (empty.size() > 5) lines += ", ...";
        setup_warnings.push_back(opts.regions_bed + ": " +
                                 count_of((int64_t)empty.size(), "zero-length interval") +
                                 " (start = end) skipped: no base to embed (line" +
                                 (empty.size() == 1 ? " " : "s ") + lines + ")");
      }
      {  // the same line twice (a BED concatenated twice): embedded each time, said once
        std::map<std::tuple<std::string, int64_t, int64_t, std::string>, const RegionSpec*> first;
        std::string said;
        int64_t repeats = 0;
        auto line_of = [&](const std::string& text) {  // "PATH line N" -> "line N"
          const std::string lead = opts.regions_bed + " ";
          return text.rfind(lead, 0) == 0 ? text.substr(lead.size()) : text;
        };
        for (const auto& r : bed)
          if (const auto [at, fresh] = first.try_emplace({r.name, r.begin, r.end, r.label}, &r);
              !fresh) {
            if (++repeats <= 3)
              said += std::string(said.empty() ? "" : "; ") + line_of(r.text) + " repeats " +
                      line_of(at->second->text) + " (" + r.name + " " + std::to_string(r.begin) +
                      " " + std::to_string(r.end) + ")";
          }
        if (repeats > 0)
          setup_warnings.push_back(
              opts.regions_bed + ": " + count_of(repeats, "line") +
              " with the interval and name of an earlier line, each embedded again as a record " +
              "of its own: " + said + (repeats > 3 ? "; ..." : ""));
      }
      for (auto& r : bed) specs.push_back(std::move(r));
    }
    int64_t n_cut = 0;  // regions that end past their record
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
        std::string stale;  // a name added after the index was made is not in it
        for (const auto& f : fetchers)
          if (f) stale += f->stale_index_hint();
        // A record without sequence is left out of the index: said as what it is (where no
        // index is older than its file, which would explain a missing name too).
        for (size_t i = 0; stale.empty() && i < fetchers.size(); ++i)
          if (const long long ln = fetchers[i] ? fetchers[i]->empty_record_line(spec.name) : 0;
              ln > 0)
            throw InputError(opts.inputs[i] + ": line " + std::to_string(ln) + ": region '" +
                             spec.text + "': record '" + spec.name +
                             "' is empty (no sequence; the faidx index leaves such records out)");
        throw InputError("region '" + spec.text + "': no record named '" + spec.name + "' in " +
                         files + "; its records: " + some + stale);
      }
      if (found.size() > 1) {
        // The same file by two paths (or twice by one): the input given twice is the mistake.
        std::error_code ec;
        if (std::filesystem::equivalent(opts.inputs[found[0]], opts.inputs[found[1]], ec))
          throw InputError("region '" + spec.text + "': input " + opts.inputs[found[1]] +
                           " is given twice (as --input " + std::to_string(found[0] + 1) + " and " +
                           std::to_string(found[1] + 1) + "), so its record '" + spec.name +
                           "' is in both; give each input once");
      }
      if (found.size() > 1)
        throw InputError("region '" + spec.text + "': record '" + spec.name + "' is in both " +
                         opts.inputs[found[0]] + " and " + opts.inputs[found[1]] +
                         "; embed them in separate runs");
      if (!fetchers[found[0]]) throw InputError(unindexed[found[0]]);
      // Checked here, before any record is embedded (a BED of another assembly would otherwise
      // fail part way); their tokens size the output estimate.
      region_tokens += fetchers[found[0]]->tokens_of(spec);
      if (std::string cut = fetchers[found[0]]->cut_warning(spec); !cut.empty()) {
        if (++n_cut <= 3) setup_warnings.push_back(std::move(cut));
      }
      regions.push_back({found[0], spec});
    }
    // (said here, before any record is embedded, not when the record's turn comes: a BED of
    // another assembly is seen at once)
    if (n_cut > 3)
      setup_warnings.push_back(count_of(n_cut, "region") +
                               " in all end past their record and are embedded to its end (the "
                               "first 3 said above)");
    // With regions only the regions are embedded: an input none of them names adds nothing (a
    // file given by mistake, or a region of it mistyped as one of another file's names).
    for (size_t i = 0; i < opts.inputs.size(); ++i)
      if (std::none_of(regions.begin(), regions.end(), [&](const auto& r) { return r.first == i; }))
        setup_warnings.push_back(opts.inputs[i] +
                                 ": no region names one of its records, so nothing of it is "
                                 "embedded (with --region/--regions only the regions are)");
  }
  // What the set-up found worth a warning: said once, by the rank that says warnings
  // (set_warnings), not by every rank that made a record source.
  std::vector<std::string> setup_warnings;

  // A panel of thousands of series (or a BED of thousands of regions) warns about its first few
  // records of each kind, then once that it stops.
  int warned_backwards = 0, warned_repeats = 0, warned_empty = 0, warned_lone = 0,
      warned_unnamed = 0, warned_reader = 0, warned_unordered = 0, warned_negative = 0,
      warned_other_input = 0, warned_id_blanks = 0;
  // Several FASTA inputs: each name's hash and the input that had it first. A name repeated
  // within a FASTA is refused (FastxReader); across inputs both records embed, with a warning.
  // (Not for FASTQ: mates of two files share names, and 10^8 reads would take GBs.)
  std::unordered_map<size_t, size_t> fasta_names;
  // Several CSV inputs: each series name's hash and the file that had it first (two p.csv in
  // two folders are both records 'p').
  std::unordered_map<size_t, std::string> series_names;
  std::set<std::string> warned_time_choice;  // files told which time column the rule took
  static constexpr int kMaxWarned = 3;
  // The kinds of warning past their limit, for their counts at the input's end.
  std::vector<std::pair<const char*, const int*>> capped;
  bool totals_said = false;
  bool warn_more(int& count, const char* what) {
    if (++count <= kMaxWarned) return true;
    if (count == kMaxWarned + 1) {
      std::fprintf(stderr,
                   "[sparsa] warning: more records %s; not said one by one (their count comes "
                   "when the input has been read)\n",
                   what);
      capped.emplace_back(what, &count);
    }
    return false;
  }
  // A record of `file` named like one of the earlier input `other` (FASTA or CSV inputs).
  void warn_other_input(const std::string& file, const std::string& name,
                        const std::string& other) {
    if (warn_more(warned_other_input, "have the name of a record of an earlier input"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': %s has a record of that name too; both "
                   "are embedded, told apart by their keys and `source` attributes\n",
                   file.c_str(), name.c_str(), other.c_str());
  }
  // At the input's end: how many records each capped kind of warning met in all.
  void say_totals() {
    if (std::exchange(totals_said, true)) return;
    for (const auto& [what, count] : capped)
      std::fprintf(stderr,
                   "[sparsa] warning: %d records in all %s (the first %d said above) of %lld "
                   "read\n",
                   *count, what, kMaxWarned, (long long)records_read);
  }
  int64_t records_read = 0;
  // Warnings about a series that embeds, but perhaps not as its user thinks.
  bool warnings = true;
  void warn_about(const RawSeries& raw, const std::string& path) {
    if (!warnings) return;
    const char* file = path.c_str();
    if (opts.inputs.size() > 1) {
      const auto [it, added] = series_names.try_emplace(std::hash<std::string>{}(raw.name), path);
      if (!added && it->second != path) warn_other_input(path, raw.name, it->second);
    }
    if (raw.id_blanks_line > 0 && warn_more(warned_id_blanks, "have ids with and without blanks"))
      std::fprintf(
          stderr,
          "[sparsa] warning: %s: record '%s': its id cell has blanks around it on "
          "one of lines %lld and %lld and none on the other: blanks around an unquoted cell "
          "are dropped, so both are one series '%s'; where they are two, quote the ids "
          "(\" AAPL\") or rename one\n",
          file, raw.name.c_str(), (long long)raw.id_first_line, (long long)raw.id_blanks_line,
          raw.name.c_str());
    if (!raw.time_others.empty() && warned_time_choice.insert(path).second) {
      std::string others;
      for (const std::string& o : raw.time_others)
        others += (others.empty() ? " '" : ", '") + o + "'";
      std::fprintf(stderr,
                   "[sparsa] warning: %s: the time column is '%s' (an exact name first: "
                   "timestamp, date, time), though the header names%s too; is the time split "
                   "over two columns? --time-column chooses (the other is embedded as a channel "
                   "unless --columns leaves it out)\n",
                   file, raw.time_name.c_str(), others.c_str());
    }
    const TimeOrder order = time_order(raw.timestamps);
    if (const int64_t i = order.backwards;
        i > 0 && warn_more(warned_backwards, "go backwards in time"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': time goes backwards at line %lld ('%s' "
                   "after '%s'); rows are embedded in file order, so a newest-first file is "
                   "read backwards: sort it oldest first%s\n",
                   file, raw.name.c_str(), (long long)raw.source_rows[i],
                   std::string(raw.timestamps[i]).c_str(),
                   std::string(raw.timestamps[i - 1]).c_str(),
                   same_day(raw.timestamps[i], raw.timestamps[i - 1])
                       ? " (or, an hour back on one day, local times without a UTC offset where "
                         "daylight saving time ends: write their offsets, e.g. +01:00, or UTC)"
                       : "");
    if (const int64_t i = order.unread;
        i >= 0 && warn_more(warned_unordered, "whose time order was not checked"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': time order not checked: line %lld's "
                   "timestamp '%.60s' is %s (ISO 8601 such as 2024-01-31 10:00, epoch seconds, "
                   "or a date with the year last such as 12/31/2024); rows are embedded in file "
                   "order, so make sure the file runs oldest first\n",
                   file, raw.name.c_str(), (long long)raw.source_rows[i],
                   std::string(raw.timestamps[i]).c_str(),
                   i == 0 ? "not in a form this check reads"
                          : "not of the form and length of the rows above");
    if (const RepeatedTimes r = repeated_times(raw.timestamps);
        r.first > 0 && warn_more(warned_repeats, "repeat timestamps"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': timestamp '%s' at line %lld repeats the "
                   "line before (%s in all); is the time split over two columns (date, "
                   "time), or does %s? Rows are embedded in file order either way\n",
                   file, raw.name.c_str(), std::string(raw.timestamps[r.first]).c_str(),
                   (long long)raw.source_rows[r.first], count_of(r.count, "such row").c_str(),
                   opts.id_column.empty()
                       ? "the file hold several series, one per value of a column such as a "
                         "symbol (--id-column COL)"
                       : ("the id column, '" + opts.id_column +
                          "', leave two series in one record (a symbol listed on two venues?)")
                             .c_str());
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
    // A channel column with no name: pandas' index column (0, 1, 2, ...) as to_csv writes it,
    // embedded as a channel where no --columns chose the channels.
    for (size_t c = 0; c < raw.channel_names.size(); ++c)
      if (trim_blanks(raw.channel_names[c]).empty() &&
          warn_more(warned_unnamed, "have a channel column with no name")) {
        std::fprintf(stderr,
                     "[sparsa] warning: %s: record '%s': channel %zu is a column with no name in "
                     "the header (pandas' index column?); it is embedded as a channel: choose "
                     "the channels with --columns\n",
                     file, raw.name.c_str(), c + 1);
        break;
      }
    // Negative values under log_return: ln(x_t / x_{t-1}) of two negatives is that of their
    // magnitudes, so a fall (-10 to -11) reads as a rise. The spec's math; worth saying.
    if (config.ts_transform == TsTransform::kLogReturn)
      for (size_t c = 0; c < raw.values.size(); ++c) {
        const auto& v = raw.values[c];
        const auto neg = std::find_if(v.begin(), v.end(), [](double x) { return x < 0; });
        if (neg == v.end()) continue;
        if (warn_more(warned_negative, "have negative values under log_return"))
          std::fprintf(stderr,
                       "[sparsa] warning: %s: record '%s': %s has negative values (the first at "
                       "line %lld: %.10g); a log return of two negative values is that of their "
                       "magnitudes, so a fall from -10 to -11 reads as a rise (ln(11/10) > 0); "
                       "ts_transform = \"diff\" keeps the sign of a change\n",
                       file, raw.name.c_str(), channel_label(raw, (int64_t)c).c_str(),
                       (long long)raw.source_rows[size_t(neg - v.begin())], *neg);
        break;
      }
    // log_return and diff need two neighbouring values: a channel with values, none of them
    // next to another (a weekly column in daily rows, a one-row record), is all MISSING too.
    if (config.ts_transform == TsTransform::kLevel) return;
    std::string lone;
    for (size_t c = 0; c < raw.values.size(); ++c) {
      const auto& v = raw.values[c];
      bool any = false, pair = false;
      for (size_t t = 0; t < v.size() && !pair; ++t) {
        any = any || !std::isnan(v[t]);
        pair = t > 0 && !std::isnan(v[t]) && !std::isnan(v[t - 1]);
      }
      if (any && !pair) lone += (lone.empty() ? "" : ", ") + channel_label(raw, (int64_t)c);
    }
    if (!lone.empty() && warn_more(warned_lone, "have a channel with no two neighbouring values"))
      std::fprintf(stderr,
                   "[sparsa] warning: %s: record '%s': %s: no two neighbouring rows both have a "
                   "value, so its %s are all missing: its tokens are all MISSING\n",
                   file, raw.name.c_str(), lone.c_str(),
                   config.ts_transform == TsTransform::kLogReturn ? "log returns" : "differences");
  }

  // What the DNA readers noted on a record (Record::warning), under the same limit for all.
  void say_reader_warning(const Record& rec) {
    if (!rec.warning.empty() && warnings && warn_more(warned_reader, "have warnings like these"))
      std::fprintf(stderr, "[sparsa] warning: %s\n", rec.warning.c_str());
  }

  // share_from_root: rank 0 reads records (next_here) and sends them to every rank in batches
  // of up to kBatchRecords records or kBatchBytes, so that the ranks meet once a batch, not at
  // every record (a rank embedding its record would hold up the others' next one).
  static constexpr int64_t kBatchRecords = 1024, kBatchBytes = int64_t{16} << 20;
  std::deque<Record> batch;        // received, not yet taken
  bool batch_end = false;          // rank 0 has read every record
  std::exception_ptr batch_error;  // rank 0: met after a batch's first record, thrown next time

  bool next_shared(Record& rec) {
    if (batch.empty() && !batch_end) fetch_batch();
    if (batch.empty()) return false;
    rec = std::move(batch.front());
    batch.pop_front();
    return true;
  }

  void fetch_batch() {
#if defined(__GLIBCXX__) && defined(__x86_64__)
    // Every field of Record is sent below: a field added there must be added here too.
    static_assert(sizeof(Record) == 320, "Record changed: send its new fields in fetch_batch");
#endif
    Comm& c = *shared;
    const bool root = c.rank() == 0;
    // The batch's description: a flag (1: the input ends with it), the record count, then for
    // each record n_channels, offset, its tokens, its time column's text bytes and rows, the
    // characters read as N, and its
    // strings (name, description, source, region, region_name, warning) with their lengths,
    // then its channels' scales (a count and the doubles' bits).
    std::string meta;
    auto put = [&](int64_t v) { meta.append(reinterpret_cast<const char*>(&v), sizeof v); };
    int64_t meta_bytes = 0;
    {
      // Rank 0 may parse a whole CSV for this batch: the others' wait allows for the inputs'
      // bytes (rank 0 alone knows which file is next).
      Watched w(c, "a wait for rank 0, which reads the time-series CSVs", input_bytes);
      on_root(c, [&] {
        if (batch_error) std::rethrow_exception(std::exchange(batch_error, nullptr));
        int64_t bytes = 0;
        bool end = false;
        while ((int64_t)batch.size() < kBatchRecords && bytes < kBatchBytes) {
          Record r;
          try {
            if (!next_here(r)) {
              end = true;
              break;
            }
          } catch (...) {
            if (batch.empty()) throw;
            batch_error = std::current_exception();  // the records before it go first
            break;
          }
          bytes +=
              (int64_t)(r.tokens.size() * 4 + r.timestamps.text().size() + r.timestamps.size() * 8);
          batch.push_back(std::move(r));
        }
        put(end);
        put((int64_t)batch.size());
        for (const Record& r : batch) {
          for (int64_t v :
               {r.n_channels, r.offset, (int64_t)r.tokens.size(),
                (int64_t)r.timestamps.text().size(), (int64_t)r.timestamps.size(), r.read_as_n})
            put(v);
          for (const std::string* f :
               {&r.name, &r.description, &r.source, &r.region, &r.region_name, &r.warning}) {
            put((int64_t)f->size());
            meta.append(*f);
          }
          put((int64_t)r.ts_scale.size());
          for (double v : r.ts_scale) put(std::bit_cast<int64_t>(v));
        }
        meta_bytes = (int64_t)meta.size();
      });
      c.broadcast(&meta_bytes, sizeof meta_bytes, 0);
    }
    meta.resize(meta_bytes);
    broadcast_big(c, meta.data(), meta_bytes);
    size_t at = 0;
    auto get = [&]() {
      int64_t v = 0;
      if (at + sizeof v > meta.size())
        throw SystemError("internal: time-series records from rank 0 arrived damaged");
      std::memcpy(&v, meta.data() + at, sizeof v);
      at += sizeof v;
      return v;
    };
    batch_end = get() != 0;
    const int64_t n = get();
    int64_t bulk = 0;  // the bytes of the batch's tokens and time columns
    std::vector<std::array<int64_t, 6>> sizes(n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t& v : sizes[i]) v = get();
      if (!root) {
        Record& r = batch.emplace_back();
        r.n_channels = sizes[i][0];
        r.offset = sizes[i][1];
        r.read_as_n = sizes[i][5];
        for (std::string* f :
             {&r.name, &r.description, &r.source, &r.region, &r.region_name, &r.warning}) {
          const int64_t len = get();
          if (len < 0 || at + len > meta.size())
            throw SystemError("internal: time-series records from rank 0 arrived damaged");
          f->assign(meta, at, len);
          at += len;
        }
        const int64_t n_scales = get();
        if (n_scales < 0 || at + n_scales * 8 > meta.size())
          throw SystemError("internal: time-series records from rank 0 arrived damaged");
        for (int64_t k = 0; k < n_scales; ++k) r.ts_scale.push_back(std::bit_cast<double>(get()));
      } else {
        for (int k = 0; k < 6; ++k) at += get();
        at += get() * 8;  // (the scales)
      }
      bulk += sizes[i][2] * 4 + sizes[i][3] + sizes[i][4] * 8;
    }
    // Each record's arrays straight into place (a record of 10^8 rows is not copied again).
    Watched w(c, "time-series records sent by rank 0", bulk);
    for (int64_t i = 0; i < n; ++i) {
      Record& r = batch[i];
      std::string text;
      std::vector<size_t> ends;
      if (!root) {
        r.tokens.resize(sizes[i][2]);
        text.resize(sizes[i][3]);
        ends.resize(sizes[i][4]);
      }
      broadcast_big(c, r.tokens.data(), sizes[i][2] * (int64_t)sizeof(int32_t));
      broadcast_big(c, root ? const_cast<char*>(r.timestamps.text().data()) : text.data(),
                    sizes[i][3]);
      broadcast_big(c, root ? const_cast<size_t*>(r.timestamps.ends().data()) : ends.data(),
                    sizes[i][4] * (int64_t)sizeof(size_t));
      if (!root && !r.timestamps.assign(std::move(text), std::move(ends)))
        throw SystemError("internal: a time-series record from rank 0 arrived damaged");
    }
  }
  bool next(Record& rec) {
    if (shared) return next_shared(rec);
    return next_here(rec);
  }

  bool next_here(Record& rec) {
    if (!fetchers.empty()) {
      if (input >= regions.size()) return say_totals(), false;
      auto& [idx, spec] = regions[input++];
      rec = fetchers[idx]->fetch(spec);
      ++records_read;
      say_reader_warning(rec);
      return true;
    }
    if (config.kind == ModelKind::kTimeseries) {
      while (series_next >= series.size()) {
        if (input >= opts.inputs.size()) return say_totals(), false;
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
      ++records_read;
      warn_about(raw, opts.inputs[input - 1]);
      rec = tokenize_series(std::move(series[series_next]), config, opts.inputs[input - 1]);
      series[series_next++] = RawSeries{};  // free what was read
      return true;
    }
    while (true) {
      if (!reader) {
        if (input >= opts.inputs.size()) return say_totals(), false;
        reader =
            std::make_unique<FastxReader>(opts.inputs[input++], DnaReadOptions{opts.invalid_as_n});
      }
      if (reader->next(rec)) {
        ++records_read;
        say_reader_warning(rec);
        if (opts.inputs.size() > 1 && !reader->fastq() && warnings) {
          const auto [it, added] =
              fasta_names.try_emplace(std::hash<std::string>{}(rec.name), input - 1);
          if (!added && it->second != input - 1)
            warn_other_input(rec.source, rec.name, opts.inputs[it->second]);
        }
        return true;
      }
      reader.reset();
    }
  }
};

RecordSource::RecordSource(const EmbedOptions& opts, const ModelConfig& config, bool build_indexes)
    : impl_(std::make_unique<Impl>(opts, config, build_indexes)) {}
RecordSource::~RecordSource() = default;
bool RecordSource::next(Record& rec) { return impl_->next(rec); }
int64_t RecordSource::n_regions() const { return (int64_t)impl_->regions.size(); }
int64_t RecordSource::region_tokens() const { return impl_->region_tokens; }
void RecordSource::set_warnings(bool on) {
  impl_->warnings = on;
  if (on)
    for (const std::string& w : impl_->setup_warnings)
      std::fprintf(stderr, "[sparsa] warning: %s\n", w.c_str());
  impl_->setup_warnings.clear();
}

void RecordSource::share_from_root(Comm& comm) {
  if (impl_->config.kind != ModelKind::kTimeseries || comm.size() == 1) return;
  impl_->shared = &comm;
  impl_->input_bytes = root_input_bytes(impl_->opts.inputs, comm);  // (the others do not read)
}

int64_t root_input_bytes(const std::vector<std::string>& inputs, Comm& comm) {
  int64_t bytes = 0;
  for (const std::string& in : inputs) {
    std::error_code ec;
    const auto n = std::filesystem::file_size(in, ec);
    if (!ec) bytes += (int64_t)n;
  }
  if (comm.size() > 1) comm.broadcast(&bytes, sizeof bytes, 0);
  return bytes;
}

int64_t RecordSource::shared_input_bytes() const { return impl_->shared ? impl_->input_bytes : 0; }

void on_root(Comm& comm, const std::function<void()>& fn) {
  if (comm.size() == 1) return fn();
  int64_t kind = 0;  // 0: none; 1 input, 2 config, 3 system, 4 numeric error, 5 a stop, 6 memory
  std::string text;
  if (comm.rank() == 0) {
    try {
      fn();
    } catch (const Interrupted& e) {
      kind = 5, text = e.what();
    } catch (const OutOfMemory& e) {
      kind = 6, text = e.what();
    } catch (const InputError& e) {
      kind = 1, text = e.what();
    } catch (const ConfigError& e) {
      kind = 2, text = e.what();
    } catch (const NumericError& e) {
      kind = 4, text = e.what();
    } catch (const std::exception& e) {
      kind = 3, text = e.what();
    }
  }
  int64_t head[2] = {kind, (int64_t)text.size()};
  comm.broadcast(head, sizeof head, 0);
  kind = head[0];
  text.resize(head[1]);
  if (head[1] > 0) comm.broadcast(text.data(), head[1], 0);
  switch (kind) {
    case 0:
      return;
    case 1:
      throw InputError(text);
    case 2:
      throw ConfigError(text);
    case 4:
      throw NumericError(text);
    case 5:
      throw Interrupted(text);
    case 6:
      throw OutOfMemory(text);
    default:
      throw SystemError(text);
  }
}

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
  // A time series' description says which columns went in ("columns close; time date", since
  // session 22): left out, so the fingerprints of earlier versions' records stay theirs (the
  // columns' values are in the tokens and timestamps anyway).
  h.update_field(rec.timestamps.size() > 0 ? std::string() : rec.description);
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
