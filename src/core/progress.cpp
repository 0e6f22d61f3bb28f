#include "core/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.hpp"

namespace sparsa {

using Clock = std::chrono::steady_clock;

std::string human_count(double v) {
  char b[32];
  if (v >= 1e9)
    std::snprintf(b, sizeof b, "%.2f G", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(b, sizeof b, "%.2f M", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(b, sizeof b, "%.1f k", v / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f ", v);
  return b;
}

std::string human_seconds(double s) {
  char b[32];
  if (s >= 3600)
    std::snprintf(b, sizeof b, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
  else if (s >= 60)
    std::snprintf(b, sizeof b, "%dm%02ds", (int)(s / 60), (int)s % 60);
  else
    std::snprintf(b, sizeof b, "%.1fs", s);
  return b;
}

std::string human_bytes(double v) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char b[32];
  std::snprintf(b, sizeof b, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return b;
}

namespace {
// The time left of work of which `done` of `total` took `seconds`: ", ETA 1m05s" ("~" marks an
// estimated total); "" when it cannot be told.
std::string eta_of(double seconds, double done, double total, const char* approx = "") {
  if (!(done > 0 && total > done && seconds > 0)) return "";
  return std::string(", ETA ") + approx + human_seconds(seconds * (total - done) / done);
}
}  // namespace

std::string count_of(int64_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

Progress::Progress(bool enabled, bool live, std::FILE* out)
    : enabled_(enabled),
      live_(live),
      out_(out),
      t0_(Clock::now()),
      last_(t0_),
      first_start_(t0_),
      rec_t0_(t0_) {}

Progress Progress::for_stderr(bool quiet) { return Progress(!quiet, isatty(2) == 1); }

double Progress::seconds() const {
  return std::chrono::duration<double>(Clock::now() - t0_).count();
}

void Progress::start_record(int64_t index, const std::string& name, int64_t n_tokens) {
  index_ = index;
  name_ = printable(name);
  rec_tokens_ = n_tokens;
  fraction_ = 0;
  rec_t0_ = Clock::now();
  const bool first = !started_;
  if (first) first_start_ = rec_t0_;  // (a resumed run's first may not be record 1)
  started_ = true;
  // The first at once, with its name; later ones as the rate limit allows.
  print(first, records_done_ == 0);
}

void Progress::update(double fraction) {
  fraction_ = fraction;
  // Said by finish_record, with the record counted in the total: so a line at fraction 1 is
  // always one whose record tokens_done_ holds.
  if (fraction >= 1) return;
  print(false, std::chrono::duration<double>(Clock::now() - rec_t0_).count() >= kOwnLineSeconds);
}

void Progress::finish_record() {
  fraction_ = 1.0;
  tokens_done_ += rec_tokens_;
  ++records_done_;
  // A record that took a while keeps a line of its own; short ones (reads) only feed the
  // rate-limited line, so a FASTQ of a million reads does not print a million lines.
  const bool long_record =
      std::chrono::duration<double>(Clock::now() - rec_t0_).count() >= kLongRecordSeconds;
  print(long_record, long_record);
  if (enabled_ && live_ && long_record) std::fputc('\n', out_);
}

void Progress::expect_records(int64_t n, bool exact) {
  expected_ = n > 0 ? n : 0;
  expected_exact_ = exact;
}

void Progress::set_done(int64_t records, int64_t tokens) {
  records_done_ = records;
  tokens_done_ = tokens;
}

void Progress::batch_share(int64_t records, int64_t tokens, int64_t own_records,
                           int64_t own_tokens) {
  base_records_ = records_done_;
  base_tokens_ = tokens_done_;
  batch_records_ = records;
  batch_tokens_ = tokens;
  own_records_ = own_records;
  own_tokens_ = own_tokens;
}

void Progress::batch_done(int64_t records, int64_t tokens) {
  set_done(records, tokens);
  batch_records_ = batch_tokens_ = own_records_ = own_tokens_ = 0;
}

void Progress::steps(const std::string& what, int64_t done, int64_t total) {
  if (!enabled_) return;
  const auto now = Clock::now();
  if (what != steps_what_) {  // a new phase: its rate from here
    steps_what_ = what;
    steps_t0_ = now;
    steps_shown_ = false;
  }
  // The end of a phase that showed a line shows 100% (and ends a live line); a quick phase
  // shows nothing.
  const bool last = done >= total;
  if (last ? !steps_shown_ : !due(now)) return;
  last_ = now;
  steps_shown_ = true;
  const double s = std::chrono::duration<double>(now - steps_t0_).count();
  char line[512];
  std::snprintf(line, sizeof line, "%s: %lld of %lld (%.0f%%)%s", what.c_str(), (long long)done,
                (long long)total, total > 0 ? 100.0 * (double)done / (double)total : 100.0,
                eta_of(s, (double)done, (double)total).c_str());
  emit(line, last);
}

void Progress::log(const std::string& msg) {
  if (!enabled_) return;
  emit(msg.c_str(), true);
}

bool Progress::due(Clock::time_point now) const {
  return std::chrono::duration<double>(now - last_).count() >= (live_ ? 0.2 : 10.0);
}

void Progress::emit(const char* line, bool end_line) {
  std::fprintf(out_, "%s[sparsa] %s%s", live_ ? "\r\033[K" : "", line,
               live_ && !end_line ? "" : "\n");
  std::fflush(out_);
}

void Progress::print(bool force, bool per_record) {
  if (!enabled_) return;
  const auto now = Clock::now();
  if (!force && !due(now)) return;
  last_ = now;
  char line[512];
  if (!per_record && records_done_ > 0) {
    const double s = std::chrono::duration<double>(now - first_start_).count();
    // (within a batch over several ranks, this rank's share done for the batch's)
    int64_t records = records_done_, tokens = tokens_done_;
    auto scaled = [](int64_t base, int64_t done, int64_t own, int64_t batch) {
      if (own <= 0) return done;
      const double part = std::clamp((double)(done - base) / (double)own, 0.0, 1.0);
      return base + (int64_t)std::llround(part * (double)batch);
    };
    if (batch_records_ > 0) {
      records = scaled(base_records_, records_done_, own_records_, batch_records_);
      tokens = scaled(base_tokens_, tokens_done_, own_tokens_, batch_tokens_);
    }
    const double tok_rate = s > 0 ? (double)tokens / s : 0;
    const char* approx = expected_exact_ ? "" : "~";
    const std::string of =
        expected_ > records ? std::string(" of ") + approx + std::to_string(expected_) : "";
    // ("1 record", but "1 of 2 records")
    const char* noun = records == 1 && of.empty() ? "record" : "records";
    std::snprintf(line, sizeof line, "%lld%s %s, %stok in %s (%stok/s)%s", (long long)records,
                  of.c_str(), noun, human_count((double)tokens).c_str(),
                  human_seconds(seconds()).c_str(), human_count(tok_rate).c_str(),
                  eta_of(s, (double)records, (double)expected_, approx).c_str());
  } else {
    const double rec_s = std::chrono::duration<double>(now - rec_t0_).count();
    const double done = fraction_ * (double)rec_tokens_;
    const double rate = rec_s > 0 ? done / rec_s : 0;
    const std::string eta = fraction_ >= 1 ? "0.0s"
                            : rate > 0     ? human_seconds(((double)rec_tokens_ - done) / rate)
                                           : "--";
    if (fraction_ == 0)  // just begun: no rate or time left to show yet
      std::snprintf(line, sizeof line, "record %lld '%.60s': %stok, started", (long long)index_,
                    name_.c_str(), human_count((double)rec_tokens_).c_str());
    else
      std::snprintf(
          line, sizeof line,
          "record %lld '%.60s': %stok of %stok (%3.0f%%)  %stok/s  ETA %s  total %stok in %s",
          (long long)index_, name_.c_str(), human_count(done).c_str(),
          human_count((double)rec_tokens_).c_str(), 100.0 * fraction_, human_count(rate).c_str(),
          eta.c_str(), human_count((double)tokens_done_ + (fraction_ < 1 ? done : 0)).c_str(),
          human_seconds(seconds()).c_str());
  }
  emit(line, false);
}

std::string shell_quote(const std::string& arg) {
  const bool plain = !arg.empty() && arg.find_first_not_of(
                                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                         "0123456789_@%+=:,./-") == std::string::npos;
  if (plain) return arg;
  std::string q = "'";
  for (char c : arg) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace sparsa
