// The progress line: a record's own line while it runs, an aggregate line for many short records.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "core/progress.hpp"

namespace {

using namespace std::chrono_literals;

// What a Progress wrote into a temporary file.
struct Capture {
  std::FILE* f = std::tmpfile();
  ~Capture() { std::fclose(f); }
  std::string text() const {
    std::fflush(f);
    std::string s;
    std::rewind(f);
    char buf[4096];
    for (size_t got; (got = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, got);
    return s;
  }
  // The text after the last live-line rewrite ("\r\033[K"), i.e. what the terminal shows.
  std::string shown() const {
    const std::string s = text();
    const size_t at = s.rfind("\r\033[K");
    return at == std::string::npos ? s : s.substr(at + 4);
  }
};

// Within a batch spread over several ranks rank 0 sees only its own records: its share done
// stands for the batch's (the aggregate line and its time left counted rank 0's alone: an ETA
// 2-3x too long), never past the batch's end, from the count when the batch began (a split
// record before it, which every rank embedded, counts once); batch_done gives every rank's.
TEST(Progress, ABatchOverRanksCountsRankZerosShareForTheBatch) {
  Capture c;
  ASSERT_NE(c.f, nullptr);
  sparsa::Progress p(true, true, c.f);
  p.expect_records(20, true);
  p.start_record(1, "split", 1000);  // a split record: rank 0 counts it, once
  p.finish_record();
  // A batch of 6 records, 600 tokens, over 3 ranks: rank 0 holds 2 of 200 tokens.
  p.batch_share(6, 600, 2, 200);
  std::this_thread::sleep_for(250ms);
  p.start_record(2, "r2", 100);
  p.finish_record();
  std::this_thread::sleep_for(250ms);
  p.start_record(5, "r5", 100);
  EXPECT_EQ(c.shown().rfind("[sparsa] 4 of 20 records, 1.3 ktok in ", 0), 0u) << c.text();
  p.finish_record();
  std::this_thread::sleep_for(250ms);
  p.start_record(30, "x", 100);  // (past its share: the batch's end at most)
  p.finish_record();
  std::this_thread::sleep_for(250ms);
  p.start_record(31, "y", 100);
  EXPECT_EQ(c.shown().rfind("[sparsa] 7 of 20 records, 1.6 ktok in ", 0), 0u) << c.text();
  p.batch_done(7, 1600);
  std::this_thread::sleep_for(250ms);
  p.start_record(32, "z", 100);
  EXPECT_EQ(c.shown().rfind("[sparsa] 7 of 20 records, 1.6 ktok in ", 0), 0u) << c.text();
}

TEST(Progress, ManyShortRecordsGetAnAggregateLineWithTheTimeLeft) {
  Capture c;
  ASSERT_NE(c.f, nullptr);
  sparsa::Progress p(true, true, c.f);  // live: one line, at most every 0.2 s
  p.expect_records(4, true);
  p.start_record(1, "read1", 150);  // the first: at once, with its name
  EXPECT_NE(c.shown().find("record 1 'read1': 150 tok, started"), std::string::npos) << c.text();
  p.finish_record();
  std::this_thread::sleep_for(250ms);
  p.start_record(2, "read2", 150);
  std::string s = c.shown();
  EXPECT_EQ(s.find("record 2"), std::string::npos) << s;  // not the 0% of a read just started
  EXPECT_EQ(s.rfind("[sparsa] 1 of 4 records, 150 tok in ", 0), 0u) << s;
  EXPECT_NE(s.find(", ETA "), std::string::npos) << s;
  EXPECT_EQ(s.find("~"), std::string::npos) << s;  // a counted total: no "~"
  p.finish_record();
  p.expect_records(10, false);  // an estimate: marked
  std::this_thread::sleep_for(250ms);
  p.start_record(3, "read3", 150);
  s = c.shown();
  EXPECT_EQ(s.rfind("[sparsa] 2 of ~10 records, 300 tok in ", 0), 0u) << s;
  EXPECT_NE(s.find(", ETA ~"), std::string::npos) << s;
  // The rate-limited line does not print again within 0.2 s.
  const size_t before = c.text().size();
  p.finish_record();
  EXPECT_EQ(c.text().size(), before);
  // Past the estimate: the count alone, no "of" and no time left.
  p.expect_records(2, false);
  std::this_thread::sleep_for(250ms);
  p.start_record(4, "read4", 1000);
  s = c.shown();
  EXPECT_EQ(s.rfind("[sparsa] 3 records, 450 tok in ", 0), 0u) << s;
  EXPECT_EQ(s.find("ETA"), std::string::npos) << s;
  // A record that has run for a second gets its own line again.
  std::this_thread::sleep_for(1100ms);
  p.update(0.5);
  s = c.shown();
  EXPECT_EQ(s.rfind("[sparsa] record 4 'read4': 500 tok of 1.0 ktok ( 50%)", 0), 0u) << s;
  // Other ranks' records, counted after a batch, replace this rank's own count.
  p.set_done(40, 6000);
  std::this_thread::sleep_for(250ms);
  p.finish_record();  // short of 10 s: the aggregate line
  s = c.shown();
  EXPECT_EQ(s.rfind("[sparsa] 41 records, 7.0 ktok in ", 0), 0u) << s;
}

// A record's last layer (fraction 1) is not a line of its own: the record's end says it, with
// its tokens in the total (a line at 100% said "total 0 tok" before the record was counted).
TEST(Progress, ARecordsEndIsSaidOnceWithItsTokensCounted) {
  Capture c;
  sparsa::Progress p(true, true, c.f);
  p.start_record(1, "chr", 2000);
  std::this_thread::sleep_for(1100ms);
  p.update(0.5);
  std::string s = c.shown();
  EXPECT_EQ(s.rfind("[sparsa] record 1 'chr': 1.0 ktok of 2.0 ktok ( 50%)", 0), 0u) << s;
  EXPECT_NE(s.find("total 1.0 ktok in "), std::string::npos) << s;
  std::this_thread::sleep_for(250ms);
  const size_t before = c.text().size();
  p.update(1.0);
  EXPECT_EQ(c.text().size(), before) << c.text();
  p.finish_record();
  s = c.shown();
  EXPECT_EQ(s.find("total 0 tok"), std::string::npos) << c.text();
  EXPECT_NE(s.find("2.0 ktok"), std::string::npos) << s;
}

TEST(Progress, StepsOfALongPhaseShowTheShareAndEndTheLine) {
  Capture c;
  sparsa::Progress p(true, true, c.f);
  p.steps("writing o.h5, records", 0, 1000);  // within 0.2 s of the start: not yet
  EXPECT_EQ(c.text(), "");
  std::this_thread::sleep_for(250ms);
  p.steps("writing o.h5, records", 250, 1000);
  std::string s = c.shown();
  EXPECT_EQ(s.rfind("[sparsa] writing o.h5, records: 250 of 1000 (25%), ETA ", 0), 0u) << s;
  p.steps("writing o.h5, records", 1000, 1000);  // the end: at once, and the line ends
  s = c.shown();
  EXPECT_EQ(s, "[sparsa] writing o.h5, records: 1000 of 1000 (100%)\n") << c.text();
  // A phase over before the first line was due shows nothing at all.
  Capture q;
  sparsa::Progress quick(true, true, q.f);
  quick.steps("writing", 0, 2);
  quick.steps("writing", 2, 2);
  EXPECT_EQ(q.text(), "");
}

TEST(Progress, QuietPrintsNothing) {
  Capture c;
  sparsa::Progress p(false, false, c.f);
  p.expect_records(2, true);
  p.start_record(1, "a", 10);
  p.finish_record();
  p.log("hello");
  EXPECT_EQ(c.text(), "");
}

}  // namespace

// The output's command_line attribute can be pasted back into a shell: every argument reads back
// as given, however odd (regions with '|' and '*', spaces, quotes, an empty argument).
TEST(Progress, ShellQuoteReadsBackThroughTheShell) {
  const std::vector<std::string> args = {"gi|9626243|ref|NC_001416.1|:1-1000",
                                         "HLA-A*01:01:01:01:1-10",
                                         "sp ace.fq",
                                         "it's",
                                         "",
                                         "$HOME",
                                         "a\"b`c`\\d",
                                         "plain-arg_1.5,x=y/z:2"};
  std::string cmd = "printf '%s\\n'";
  for (const auto& a : args) cmd += " " + sparsa::shell_quote(a);
  EXPECT_EQ(sparsa::shell_quote("plain-arg_1.5,x=y/z:2"), "plain-arg_1.5,x=y/z:2");
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[256];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0);
  std::string want;
  for (const auto& a : args) want += a + "\n";
  EXPECT_EQ(out, want);
}
