// sparsa: progress on long work. A live line on a terminal; plain log lines (at most one every
// 10 s) otherwise; nothing with --quiet. A record that takes 10 s or more also gets a line when
// it starts (the first record) and when it ends; short records (reads) only feed the rate-limited
// line. Written to stderr by rank 0 only.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace sparsa {

class Progress {
 public:
  Progress(bool enabled, bool live);  // live: rewrite one line (a terminal)
  static Progress for_stderr(bool quiet);
  // A new record starts: its index (1-based), the name and its token count.
  void start_record(int64_t index, const std::string& name, int64_t n_tokens);
  // Fraction of the current record done (0..1).
  void update(double fraction);
  void finish_record();
  // A plain message line (clears the live line first).
  void log(const std::string& msg);
  double seconds() const;

 private:
  void print(bool force);
  static constexpr double kLongRecordSeconds = 10.0;
  bool enabled_, live_;
  std::chrono::steady_clock::time_point t0_, last_;
  int64_t index_ = 0, rec_tokens_ = 0, tokens_done_ = 0;
  double fraction_ = 0;
  std::string name_;
  std::chrono::steady_clock::time_point rec_t0_;
};

std::string human_count(double v);    // 1.23 M
std::string human_seconds(double s);  // 1h02m, 3m05s, 12.3s
std::string human_bytes(double b);    // 1.5 GiB

}  // namespace sparsa
