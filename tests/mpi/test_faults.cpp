// Faults under MPI with real processes: a rank killed or hung ends every rank within 30 s with
// nothing at the output path; signals stop all ranks at a safe point; --resume finishes the job.
#include <gtest/gtest.h>

#include <chrono>

#include "../unit/compare_h5.hpp"
#include "../unit/test_util.hpp"
#include "io/h5.hpp"

using namespace sparsa::testing;
namespace h5 = sparsa::h5;
using Clock = std::chrono::steady_clock;

namespace {

// The sparsa processes of a run, found by their unique output path.
std::vector<pid_t> ranks_of(const std::string& out) {
  // Anchored at the binary: the launcher's own command line holds the same words.
  auto r = run("pgrep -f -- '^" + binary() + " embed.*" + out + "( |$)'");
  std::vector<pid_t> pids;
  std::istringstream in(r.output);
  for (pid_t p; in >> p;) pids.push_back(p);
  return pids;
}

struct MpiFixture {
  TempDir t;
  std::string model = t / "m.h5", input = t / "in.fa";
  MpiFixture() {
    EXPECT_EQ(run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                  model)
                  .code,
              0);
    write_file(input, random_fasta(10, 60000));
  }
  std::vector<std::string> args(int np, const std::string& out, bool resume) {
    std::vector<std::string> a{
        SPARSA_MPIEXEC, "-np", std::to_string(np), binary(), "embed",       "-q",
        "--dtype",      "f32", "--pool",           "bin:50", "--split-min", "1000",
        "--model",      model, "--input",          input,    "--output",    out};
    if (resume) a.push_back("--resume");
    return a;
  }
  void finish_and_compare(const std::string& out) {
    // Resume on one process; the result must equal a clean run on one process.
    pid_t pid = spawn(args(1, out, true), t / "resume.log");
    ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "resume.log");
    pid = spawn(args(1, t / "clean.h5", false), t / "clean.log");
    ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "clean.log");
    expect_same_contents(out, t / "clean.h5");
  }
};

}  // namespace

TEST(MpiFaults, KilledRankEndsAllRanksAndResumeFinishes) {
  MpiFixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(2, out, false), fx.t / "run.log");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 2, pid)) << read_file(fx.t / "run.log");
  auto ranks = ranks_of(out);
  ASSERT_EQ(ranks.size(), 2u);
  const auto t0 = Clock::now();
  kill(ranks[1], SIGKILL);
  EXPECT_NE(wait_exit(pid), 0);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 30.0);
  EXPECT_TRUE(ranks_of(out).empty()) << "a rank is still running";
  EXPECT_FALSE(exists(out));
  EXPECT_GE(count_parts(out + ".parts"), 2);
  fx.finish_and_compare(out);
}

TEST(MpiFaults, HungRankIsAbortedByTheWatchdog) {
  MpiFixture fx;
  const std::string out = fx.t / "out.h5";
  setenv("SPARSA_COMM_TIMEOUT", "5", 1);
  pid_t pid = spawn(fx.args(2, out, false), fx.t / "run.log");
  unsetenv("SPARSA_COMM_TIMEOUT");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 1, pid)) << read_file(fx.t / "run.log");
  auto ranks = ranks_of(out);
  ASSERT_EQ(ranks.size(), 2u);
  const auto t0 = Clock::now();
  kill(ranks[1], SIGSTOP);  // hangs: alive, but never reaches the next collective
  const int code = wait_exit(pid);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  for (pid_t r : ranks) kill(r, SIGKILL);  // in case the launcher left the stopped one
  EXPECT_NE(code, 0);
  EXPECT_LT(secs, 30.0);
  EXPECT_NE(read_file(fx.t / "run.log").find("did not complete within 5 s"), std::string::npos)
      << read_file(fx.t / "run.log");
  EXPECT_FALSE(exists(out));
  fx.finish_and_compare(out);
}

TEST(MpiFaults, SigtermStopsEveryRankAtASafePoint) {
  MpiFixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(3, out, false), fx.t / "run.log");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 1, pid)) << read_file(fx.t / "run.log");
  auto ranks = ranks_of(out);
  ASSERT_EQ(ranks.size(), 3u);
  kill(ranks[0], SIGTERM);  // one rank's signal is enough: the stop flag is reduced over ranks
  EXPECT_EQ(wait_exit(pid), 75) << read_file(fx.t / "run.log");
  EXPECT_FALSE(exists(out));
  EXPECT_NE(read_file(fx.t / "run.log").find("--resume"), std::string::npos);
  fx.finish_and_compare(out);
}

// Short records go whole to one rank each, side by side over its 2 threads, and into that rank's
// group parts. A stop with groups open keeps them (every rank flushes its group before the ranks
// agree to stop); a resumed run on another number of ranks, with parts of both runs in the journal,
// equals a clean run.
TEST(MpiFaults, GroupPartsOfSeveralRanksResume) {
  TempDir t;
  const std::string model = t / "m.h5", input = t / "reads.fa", out = t / "out.h5";
  ASSERT_TRUE(init_tiny_model(model));
  write_file(input, random_fasta(4000, 150, 11));
  auto args = [&](int np, const std::string& o, bool resume) {
    std::vector<std::string> a{SPARSA_MPIEXEC,
                               "-np",
                               std::to_string(np),
                               binary(),
                               "embed",
                               "--threads",
                               "2",
                               "--pool",
                               "mean",
                               "--model",
                               model,
                               "--input",
                               input,
                               "--output",
                               o};
    if (resume) a.push_back("--resume");
    return a;
  };
  {
    ScopedEnv groups("SPARSA_GROUP_SECONDS", "0.3");
    pid_t pid = spawn(args(2, out, false), t / "run.log");
    ASSERT_TRUE(wait_for_parts(out + ".parts", 2, pid)) << read_file(t / "run.log");
    auto ranks = ranks_of(out);
    ASSERT_EQ(ranks.size(), 2u);
    kill(ranks[1], SIGTERM);
    EXPECT_EQ(wait_exit(pid), 75) << read_file(t / "run.log");
  }
  EXPECT_FALSE(exists(out));
  EXPECT_GE(count_parts(out + ".parts"), 2);
  pid_t pid = spawn(args(3, out, true), t / "resume.log");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "resume.log");
  EXPECT_NE(read_file(t / "resume.log").find("resuming: "), std::string::npos);
  pid = spawn(args(1, t / "clean.h5", false), t / "clean.log");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "clean.log");
  expect_same_contents(out, t / "clean.h5");
}
