// sparsa: progress on long work. A live line on a terminal; plain log lines (at most one every
// 10 s) otherwise; nothing with --quiet. Written to stderr by rank 0 only. Two kinds of line:
//   record 3 'chr1': 1.20 Mtok of 4.64 Mtok ( 26%)  320 ktok/s  ETA 10.7s  total 2.31 Mtok in 12.0s
//     while a record has run for a second or more (and when the first starts); a record that takes
//     10 s or more also keeps this line when it ends;
//   11473 of ~20000 records, 3.53 Mtok in 20.0s (176.5 ktok/s), ETA ~15.1s
//     for many short records (reads): how many are done, the rate and, where the number of
//     records is known or estimated (expect_records), the time left; "~" marks an estimate.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sparsa {

class Progress {
 public:
  // live: rewrite one line (a terminal); out: where the lines go (stderr but in tests)
  Progress(bool enabled, bool live, std::FILE* out = stderr);
  static Progress for_stderr(bool quiet);
  // A new record starts: its index (1-based), the name and its token count.
  void start_record(int64_t index, const std::string& name, int64_t n_tokens);
  // Fraction of the current record done (0..1).
  void update(double fraction);
  void finish_record();
  // The number of records this run will embed, for "of N" and the time left: exact (counted) or
  // an estimate from the input's size. 0: not known.
  void expect_records(int64_t n, bool exact);
  // Records and tokens finished by every rank so far (a run over several ranks, after each
  // batch: finish_record counts only this rank's own).
  void set_done(int64_t records, int64_t tokens);
  // A batch spread over several ranks begins: of its `records` records and `tokens` tokens, this
  // rank holds `own_records` and `own_tokens`. Until batch_done, this rank's progress through
  // its share stands for the batch's in the aggregate line and its time left (it counted this
  // rank's records alone: the time left was 2-3x too long), never past the batch's end.
  void batch_share(int64_t records, int64_t tokens, int64_t own_records, int64_t own_tokens);
  // The batch's end: every rank's records and tokens so far (as set_done) and the plain count
  // again.
  void batch_done(int64_t records, int64_t tokens);
  // A step of a long phase after the records (copying them into the output): "WHAT: done of
  // total (P%), ETA T", rate-limited like the other lines; the time left from this phase's rate.
  void steps(const std::string& what, int64_t done, int64_t total);
  // A plain message line (clears the live line first).
  void log(const std::string& msg);
  double seconds() const;

 private:
  void print(bool force, bool per_record);
  // Whether a rate-limited line may be printed now (0.2 s on a terminal, 10 s otherwise).
  bool due(std::chrono::steady_clock::time_point now) const;
  // Writes one line: over the live line on a terminal (left open unless `end_line`), else on a
  // line of its own.
  void emit(const char* line, bool end_line);
  static constexpr double kLongRecordSeconds = 10.0;
  static constexpr double kOwnLineSeconds = 1.0;  // a record running this long gets its own line
  bool enabled_, live_;
  std::FILE* out_;
  std::chrono::steady_clock::time_point t0_, last_, first_start_;
  int64_t index_ = 0, rec_tokens_ = 0, tokens_done_ = 0, records_done_ = 0;
  // batch_share: the counts when the batch began, the batch's and this rank's share of it (0:
  // no batch)
  int64_t base_records_ = 0, base_tokens_ = 0;
  int64_t batch_records_ = 0, batch_tokens_ = 0, own_records_ = 0, own_tokens_ = 0;
  int64_t expected_ = 0;
  bool expected_exact_ = false, started_ = false, steps_shown_ = false;
  double fraction_ = 0;
  std::string name_;
  std::chrono::steady_clock::time_point rec_t0_, steps_t0_;
  std::string steps_what_;
};

std::string human_count(double v);    // 1.23 M
std::string human_seconds(double s);  // 1h02m, 3m05s, 12.3s
std::string human_bytes(double b);    // 1.5 GiB
// "1 record", "2 records" (English plural by an s).
std::string count_of(int64_t n, const std::string& noun);
// An argument as a POSIX shell reads it back: as it is when it holds only characters no shell
// treats specially, else in single quotes (a quote inside as '\''); '' for an empty one.
std::string shell_quote(const std::string& arg);

}  // namespace sparsa
