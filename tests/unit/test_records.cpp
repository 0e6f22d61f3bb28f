// RecordSource::share_from_root's protocol between ranks, with two threads as two ranks (a Comm
// whose broadcast meets at a barrier): rank 0 reads the CSVs, both get the same records in
// batches, and an error rank 0 meets after a batch's first record comes to both after the
// records before it. (Under mpirun this is tests/mpi's MpiInvariance.TimeSeries*; the deferred
// error is reached there only by a CSV that changes during the run.)
#include <gtest/gtest.h>

#include <barrier>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/record.hpp"
#include "dist/comm.hpp"
#include "pipelines/embed/embed.hpp"
#include "pipelines/embed/records.hpp"
#include "test_util.hpp"

using namespace sparsa::testing;

namespace {

// Two ranks in one process: broadcast only (all RecordSource uses).
struct Meeting {
  std::barrier<> sync{2};
  std::vector<char> buf;
};

class ThreadComm : public sparsa::Comm {
 public:
  ThreadComm(Meeting& m, int rank) : m_(m), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return 2; }
  const char* name() const override { return "threads"; }
  void broadcast(void* data, int64_t bytes, int root) override {
    if (rank_ == root) {
      m_.buf.assign(static_cast<char*>(data), static_cast<char*>(data) + bytes);
    }
    m_.sync.arrive_and_wait();
    if (rank_ != root) {
      if ((int64_t)m_.buf.size() != bytes) throw std::logic_error("broadcast sizes differ");
      std::memcpy(data, m_.buf.data(), (size_t)bytes);
    }
    m_.sync.arrive_and_wait();
  }
  void barrier() override { m_.sync.arrive_and_wait(); }
  [[noreturn]] void abort(int) override { std::abort(); }
  void allgatherv(const void*, int64_t, std::vector<uint8_t>&, std::vector<int64_t>*) override {
    unused();
  }
  void gatherv(const void*, int64_t, std::vector<uint8_t>&, std::vector<int64_t>*, int) override {
    unused();
  }
  void allreduce_sum(double*, int64_t) override { unused(); }
  void allreduce_max(int64_t*, int64_t) override { unused(); }
  int start_exchange(const std::vector<sparsa::Transfer>&,
                     const std::vector<sparsa::Transfer>&) override {
    unused();
  }
  void wait_exchange(int) override { unused(); }

 private:
  [[noreturn]] static void unused() { throw std::logic_error("not used by RecordSource"); }
  Meeting& m_;
  int rank_;
};

struct Seen {
  std::vector<sparsa::Record> records;
  std::string error;  // what next() threw at the end, if anything
};

// Rank r reads inputs[r] through a shared source; what each saw. (Rank 1's files are decoys
// of other contents: what it sees is rank 0's.)
std::vector<Seen> read_on_two_ranks(const std::vector<std::string> (&inputs)[2], Meeting& m) {
  const sparsa::ModelConfig c = sparsa::parse_model_config(
      "[model]\nkind = \"timeseries\"\nd_model = 16\nn_layers = 1\nn_heads = 2\nd_ff = 32\n"
      "window = 4\ncausal = true\nglobal_every = 8\nglobal_max = 8\nrouter_hidden = 8\n"
      "channels = 1\nts_bins = 16\nts_transform = \"log_return\"\n",
      "test");
  std::vector<Seen> seen(2);
  auto rank = [&](int r) {
    sparsa::EmbedOptions o;
    o.inputs = inputs[r];
    o.id_column = "id";
    ThreadComm comm(m, r);
    sparsa::RecordSource source(o, c);
    source.set_warnings(false);
    source.share_from_root(comm);
    try {
      for (sparsa::Record rec; source.next(rec);) seen[r].records.push_back(rec);
    } catch (const sparsa::InputError& e) {
      seen[r].error = e.what();
    }
  };
  std::thread one(rank, 1);
  rank(0);
  one.join();
  return seen;
}

std::string panel(int n_series, int rows) {
  std::string csv = "timestamp,id,close\n";
  for (int s = 0; s < n_series; ++s)
    for (int i = 0; i < rows; ++i)
      csv += "2024-01-" + std::to_string(10 + i) + ",s" + std::to_string(s) + "," +
             std::to_string(100 + s + i) + "\n";
  return csv;
}

void expect_same(const sparsa::Record& a, const sparsa::Record& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.n_channels, b.n_channels);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.timestamps, b.timestamps);
}

}  // namespace

TEST(SharedRecords, EveryRankGetsRankZerosRecordsInBatches) {
  TempDir t;
  // 1,030 series: a batch of 1,024, then one of 6 that ends the input.
  write_file(t / "a.csv", panel(1030, 3));
  write_file(t / "decoy.csv", panel(2, 5));
  Meeting m;
  const std::vector<Seen> seen = read_on_two_ranks({{t / "a.csv"}, {t / "decoy.csv"}}, m);
  ASSERT_EQ(seen[0].error, "");
  ASSERT_EQ(seen[1].error, "");
  ASSERT_EQ(seen[0].records.size(), 1030u);
  ASSERT_EQ(seen[1].records.size(), 1030u);
  for (size_t i = 0; i < 1030; ++i) expect_same(seen[0].records[i], seen[1].records[i]);
  EXPECT_EQ(seen[1].records[1029].name, "s1029");
  EXPECT_EQ(seen[1].records[1029].timestamps.strings(),
            (std::vector<std::string>{"2024-01-10", "2024-01-11", "2024-01-12"}));
  EXPECT_EQ(seen[1].records[0].source, t / "a.csv");  // rank 0's input, not the decoy
}

// The second CSV is bad: the first one's records reach both ranks, then the error does.
TEST(SharedRecords, AnErrorAfterTheFirstRecordsComesAfterThem) {
  TempDir t;
  write_file(t / "a.csv", panel(3, 4));
  write_file(t / "b.csv", "timestamp,id,close\n2024-01-01,z,1\n2024-01-02,z,oops\n");
  write_file(t / "decoy.csv", panel(1, 5));
  Meeting m;
  const std::vector<Seen> seen =
      read_on_two_ranks({{t / "a.csv", t / "b.csv"}, {t / "decoy.csv", t / "decoy.csv"}}, m);
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_EQ(seen[r].records.size(), 3u);
    EXPECT_EQ(seen[r].records[2].name, "s2");
    EXPECT_NE(seen[r].error.find(t / "b.csv"), std::string::npos) << seen[r].error;
    EXPECT_NE(seen[r].error.find("line 3"), std::string::npos) << seen[r].error;
  }
  EXPECT_EQ(seen[0].error, seen[1].error);
  for (size_t i = 0; i < 3; ++i) expect_same(seen[0].records[i], seen[1].records[i]);
}

// A record's fingerprint (its input_sha256, what --resume compares) must stay what earlier
// versions computed, or every output and journal they made stops matching: a time series'
// description (the columns that went in, since session 22) is left out of it; a FASTA
// description is in it, as it always was.
TEST(RecordFingerprint, StaysThatOfEarlierVersions) {
  // The values of d9bd132's formula (the same but for hashing every description, which a time
  // series did not have then), pinned when session 22 changed it.
  sparsa::Record ts;
  ts.name = "prices";
  ts.description = "columns close; time date";
  ts.tokens = {3, 7, 9};
  ts.timestamps = sparsa::StringColumn{"d1", "d2", "d3"};
  EXPECT_EQ(sparsa::record_fingerprint(ts),
            "6e929cdf379a88bab0bcf1ff2a9f67048ccddf64dace4c4a8cb99079646f3db9");
  sparsa::Record dna;
  dna.name = "chr1";
  dna.description = "first chromosome";
  dna.tokens = {3, 4, 5, 6};
  EXPECT_EQ(sparsa::record_fingerprint(dna),
            "a088b2e49377c830e8b0c703b65358512eb6849bcc5d7f69e51bd8851e123dcc");
  dna.description.clear();  // a FASTA description is part of it
  EXPECT_EQ(sparsa::record_fingerprint(dna),
            "f5ac150e409e814854d92052f71054f46ebe2eeb030a99a8e3d477115e055ad2");
}

// Short records side by side on the CPU: a record a thread while enough are left, then the rest
// (fewer than the threads) at once over the idle threads, a lone record over all of them (a
// 12,000-token record ran on 1 of 2 threads before: 11.6 s against 6.2 s), the longest first.
TEST(SidePlan, TheLastRecordsShareTheIdleThreadsLongestFirst) {
  using sparsa::cpu_side_plan;
  auto waves = [](const sparsa::SidePlan& p) {
    std::string s;
    for (const auto& w : p.waves)
      s += std::to_string(w.outer) + "x" + std::to_string(w.inner) + "[" + std::to_string(w.begin) +
           "," + std::to_string(w.end) + ") ";
    return s;
  };
  auto p = cpu_side_plan(2, {12000});
  EXPECT_EQ(waves(p), "1x2[0,1) ");
  p = cpu_side_plan(16, {100, 900, 300});
  EXPECT_EQ(waves(p), "3x5[0,3) ");
  EXPECT_EQ(p.order, (std::vector<int64_t>{1, 2, 0}));
  p = cpu_side_plan(4, {5, 7, 5, 7, 1, 9});
  EXPECT_EQ(waves(p), "4x1[0,4) 2x2[4,6) ");
  EXPECT_EQ(p.order, (std::vector<int64_t>{5, 1, 3, 0, 2, 4}));  // ties in input order
  p = cpu_side_plan(2, {10, 10, 10});
  EXPECT_EQ(waves(p), "2x1[0,2) 1x2[2,3) ");
  p = cpu_side_plan(4, {1, 2, 3, 4, 5, 6, 7, 8});
  EXPECT_EQ(waves(p), "4x1[0,8) ");
  p = cpu_side_plan(1, {3, 4});
  EXPECT_EQ(waves(p), "1x1[0,2) ");
  p = cpu_side_plan(8, {});
  EXPECT_EQ(waves(p), "");
}
