// Faults under MPI with real processes: a rank killed or hung ends every rank within 30 s with
// nothing at the output path; signals stop all ranks at a safe point; --resume finishes the job.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>

#include "../unit/compare_h5.hpp"
#include "../unit/test_util.hpp"
#include "io/h5.hpp"
#include "mpi_test_util.hpp"

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

// The MPI rank of a process that mpirun started (OMPI_COMM_WORLD_RANK in its environment), -1 if
// that cannot be read.
int rank_of(pid_t pid) {
  const std::string env = read_file("/proc/" + std::to_string(pid) + "/environ");
  const std::string key = "OMPI_COMM_WORLD_RANK=";
  for (size_t i = 0; i < env.size();) {
    const size_t end = std::min(env.find('\0', i), env.size());
    if (env.compare(i, key.size(), key) == 0) return std::atoi(env.c_str() + i + key.size());
    i = end + 1;
  }
  return -1;
}

// wait_exit for at most `seconds`; then the process group is killed and -1 returned.
int wait_exit_within(pid_t pid, double seconds) {
  const auto t0 = Clock::now();
  for (;;) {
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid)
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (std::chrono::duration<double>(Clock::now() - t0).count() > seconds) {
      kill(-pid, SIGKILL);
      wait_exit(pid);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Kills a launcher still running when a test ends early (a failed ASSERT), its process group
// and the ranks writing `out` (mpirun may start them in groups of their own; a stopped one would
// not notice its launcher's end): nothing is left running into a removed temporary folder.
struct KillOnExit {
  pid_t pid;
  std::string out;  // the run's output path ("" for none)
  ~KillOnExit() {
    int st;
    if (pid > 0 && waitpid(pid, &st, WNOHANG) == 0) {
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
    }
    if (!out.empty())
      for (pid_t r : ranks_of(out)) kill(r, SIGKILL);
  }
};

// How a run ended after one of its ranks was stopped.
struct AfterStop {
  int code = -1;       // the launcher's exit status; -1: still running 60 s later (then killed)
  double secs = 0;     // from the stop to the end
  bool found = false;  // a process of that rank was there to stop
};

// SIGSTOPs MPI rank `rank` of the 2-rank run writing `out` (launcher `pid`), waits at most 60 s
// for the run to end, then kills whatever is left (a test of something that must not hang fails
// instead of hanging). With no such rank it returns at once, found false.
AfterStop stop_rank(const std::string& out, pid_t pid, int rank) {
  AfterStop r;
  const std::vector<pid_t> ranks = ranks_of(out);
  for (pid_t p : ranks)
    if (rank_of(p) == rank) {
      r.found = true;
      kill(p, SIGSTOP);
    }
  if (!r.found) return r;  // the caller's KillOnExit ends the run
  const auto t0 = Clock::now();
  r.code = wait_exit_within(pid, 60);
  r.secs = std::chrono::duration<double>(Clock::now() - t0).count();
  for (pid_t p : ranks) kill(p, SIGKILL);  // in case the launcher left the stopped one
  return r;
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

TEST(MpiFaultsSlow, HungRankIsAbortedByTheWatchdog) {
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
  // One rank's signal is enough: the stop is reduced over ranks. Sent to rank 2 alone, rank 0
  // (which says the run's last word) still names it: it said "interrupted (signal 0)".
  const auto rank2 =
      std::find_if(ranks.begin(), ranks.end(), [](pid_t p) { return rank_of(p) == 2; });
  ASSERT_NE(rank2, ranks.end());
  kill(*rank2, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 75) << read_file(fx.t / "run.log");
  EXPECT_FALSE(exists(out));
  EXPECT_NE(read_file(fx.t / "run.log").find("--resume"), std::string::npos);
  EXPECT_NE(read_file(fx.t / "run.log").find("sparsa: interrupted (SIGTERM)"), std::string::npos)
      << read_file(fx.t / "run.log");
  fx.finish_and_compare(out);
}

// Short records go whole to one rank each, side by side over its 2 threads, and into that rank's
// group parts. A stop with groups open keeps them (every rank flushes its group before the ranks
// agree to stop); a resumed run on another number of ranks, with parts of both runs in the journal,
// equals a clean run.
TEST(MpiFaultsSlow, GroupPartsOfSeveralRanksResume) {
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

// A batch of short records that ends well leaves each rank's group part open (10^8 reads over 64
// ranks would otherwise make a part per rank and batch: ~1.5 M files). 400 records in 20 batches
// over 2 ranks make at most a part a rank here (the groups' time is never up), where a part a
// batch made 40; an input error after them keeps them (every rank moves its group into the
// journal), and --resume after the fix finishes with a clean run's output.
TEST(MpiFaults, BatchesOfShortRecordsShareARanksGroupPart) {
  TempDir t;
  const std::string model = t / "m.h5", input = t / "reads.fa", out = t / "out.h5";
  ASSERT_TRUE(init_tiny_model(model));
  const std::string good = random_fasta(400, 50, 3);
  write_file(input, good + ">bad\nACGTXACGT\n");
  auto cmd = [&](int np, const std::string& o, const std::string& more) {
    return std::string(SPARSA_MPIEXEC) + " -np " + std::to_string(np) + " " + binary() +
           " embed --threads 1 --pool mean --split-min 500 --model " + model + " --input " + input +
           " --output " + o + more;
  };
  ScopedEnv one_group("SPARSA_GROUP_SECONDS", "1000");
  auto r = run(cmd(2, out, ""));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("record 'bad'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("400 finished records are kept"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_EQ(count_parts(out + ".parts"), 2) << "a part a rank, not a part a batch";
  write_file(input, good);
  r = run(cmd(2, out, " --resume"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming: 400 records"), std::string::npos) << r.output;
  r = run(cmd(1, t / "clean.h5", ""));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_contents(out, t / "clean.h5");
}

// Rank 0 alone assembles the output while the others wait. If it hangs (or dies, under an srun
// that does not end the other tasks: --kill-on-bad-exit=0, as slurm/embed.sbatch runs), the
// others must not wait for ever: they wait from one heartbeat of rank 0 to the next, under the
// watchdog. The journal keeps every record, and --resume finishes the output.
TEST(MpiFaultsSlow, RootHungWhileAssemblingIsAbortedByTheWatchdog) {
  TempDir t;
  const std::string model = t / "m.h5", input = t / "reads.fa", out = t / "out.h5";
  ASSERT_TRUE(init_tiny_model(model));
  write_file(input, random_fasta(10000, 30, 7));  // ~1.5 s of assembly on a 2-core VM
  auto args = [&](int np, const std::string& o, bool resume) {
    std::vector<std::string> a{
        SPARSA_MPIEXEC, "-np", std::to_string(np), binary(), "embed",    "--pool", "mean",
        "--model",      model, "--input",          input,    "--output", o};
    if (resume) a.push_back("--resume");
    return a;
  };
  pid_t pid;
  {
    ScopedEnv timeout("SPARSA_COMM_TIMEOUT", "5");
    pid = spawn(args(2, out, false), t / "run.log");
  }
  KillOnExit guard{pid, out};
  // Rank 0 logs "writing OUT" before it assembles.
  ASSERT_TRUE(wait_until(
      pid, [&] { return read_file(t / "run.log").find("writing " + out) != std::string::npos; }, 10,
      60))
      << read_file(t / "run.log");
  const AfterStop r = stop_rank(out, pid, 0);
  ASSERT_TRUE(r.found) << "no process with OMPI_COMM_WORLD_RANK=0";
  ASSERT_NE(r.code, -1) << "still waiting 60 s after rank 0 stopped:\n" << read_file(t / "run.log");
  EXPECT_NE(r.code, 0);
  EXPECT_LT(r.secs, 30.0);
  EXPECT_NE(read_file(t / "run.log").find("no sign of life"), std::string::npos)
      << read_file(t / "run.log");
  EXPECT_FALSE(exists(out));
  // (rank 0, killed, left its unfinished OUT.tmp: the resume makes it anew)
  pid = spawn(args(1, out, true), t / "resume.log");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "resume.log");
  EXPECT_NE(read_file(t / "resume.log").find("resuming: 10000 records"), std::string::npos)
      << read_file(t / "resume.log");
  pid = spawn(args(1, t / "clean.h5", false), t / "clean.log");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "clean.log");
  expect_same_contents(out, t / "clean.h5");
}

// A split record's part is written by every rank through parallel HDF5, whose MPI-IO collectives
// would wait for ever for a rank that stopped inside them: the write is watched like any other
// collective. Rank 1 is stopped as soon as the part's file appears, so inside the write (about
// 0.15 s for these 256 MB of rows on a 2-core VM): every local run named the write. Should the
// stop land after it, the barrier that follows is watched too; either message is the watchdog's
// abort, which without the watch (as measured) never comes.
TEST(MpiFaultsSlow, RankHungInParallelWriteIsAbortedByTheWatchdog) {
#ifndef SPARSA_HDF5_PARALLEL
  GTEST_SKIP() << "this build's HDF5 is serial: no parallel writes";
#endif
  TempDir t;
  const std::string model = t / "m.h5", input = t / "long.fa", out = t / "out.h5";
  ASSERT_TRUE(init_tiny_model(model));
  write_file(input, random_fasta(1, 1000000, 5));
  pid_t pid;
  {
    ScopedEnv timeout("SPARSA_COMM_TIMEOUT", "5");
    pid = spawn({SPARSA_MPIEXEC, "-np", "2", binary(), "embed", "-q", "--pool", "none", "--dtype",
                 "f32", "--split-min", "1000", "--model", model, "--input", input, "--output", out},
                t / "run.log");
  }
  KillOnExit guard{pid, out};
  auto part_open = [&] {  // the record's part (NNNNNN.h5.tmp), not the journal's MANIFEST.tmp
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator(out + ".parts", ec))
      if (e.path().filename().string().ends_with(".h5.tmp")) return true;
    return false;
  };
  ASSERT_TRUE(wait_until(pid, part_open, 1, 60)) << read_file(t / "run.log");
  const AfterStop r = stop_rank(out, pid, 1);
  ASSERT_TRUE(r.found) << "no process with OMPI_COMM_WORLD_RANK=1";
  ASSERT_NE(r.code, -1) << "still waiting 60 s after rank 1 stopped:\n" << read_file(t / "run.log");
  EXPECT_NE(r.code, 0);
  EXPECT_LT(r.secs, 30.0);
  const std::string log = read_file(t / "run.log");
  EXPECT_TRUE(log.find("a parallel HDF5 write of a record's part did not complete") !=
                  std::string::npos ||
              log.find("a barrier did not complete") != std::string::npos)
      << log;
  EXPECT_FALSE(exists(out));
}

// The heartbeat itself (tests/mpi/probe/comm_probe.cpp), with a 2 s timeout: rank 0 works 5 s
// while rank 1 waits in wait_for_root. Signs of life keep it waiting; silence ends the job; an
// announced piece of 128 MiB allows 4 s more (at 32 MiB/s).
namespace {
struct Probe {
  int code;
  std::string log;
};
Probe run_probe(const std::vector<std::string>& args) {
  TempDir t;
  std::vector<std::string> a{SPARSA_MPIEXEC, "-np", "2", SPARSA_COMM_PROBE};
  a.insert(a.end(), args.begin(), args.end());
  pid_t pid;
  {
    ScopedEnv timeout("SPARSA_COMM_TIMEOUT", "2");
    pid = spawn(a, t / "probe.log");
  }
  const int code = wait_exit_within(pid, 60);
  return {code, read_file(t / "probe.log")};
}
}  // namespace

TEST(MpiHeartbeat, SignsOfLifeKeepTheOthersWaiting) {
  const Probe p = run_probe({"beat", "5"});
  EXPECT_EQ(p.code, 0) << p.log;
  EXPECT_NE(p.log.find("rank 1 of 2: through wait_for_root"), std::string::npos) << p.log;
}

// Open MPI's MPI_Finalize waits for every rank: a rank hung in its teardown held the job until
// its time limit. Finalizing is watched: rank 1 30 s late ends the job after the 2 s timeout; a
// teardown within the timeout is fine.
TEST(MpiHeartbeat, RankHungAtFinalizeIsAbortedByTheWatchdog) {
  const auto t0 = std::chrono::steady_clock::now();
  const Probe p = run_probe({"finalize", "30"});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(p.code, 0) << p.log;
  EXPECT_LT(s, 20.0) << p.log;
  EXPECT_NE(p.log.find("MPI_Finalize at the end of the job did not complete within 2 s"),
            std::string::npos)
      << p.log;
  const Probe q = run_probe({"finalize", "0.5"});
  EXPECT_EQ(q.code, 0) << q.log;
}

TEST(MpiHeartbeat, SilenceEndsTheWait) {
  const Probe p = run_probe({"quiet", "5"});
  EXPECT_NE(p.code, 0) << p.log;
  EXPECT_NE(p.log.find("no sign of life from it) did not complete within 2 s"), std::string::npos)
      << p.log;
}

TEST(MpiHeartbeat, AnnouncedBytesExtendTheWait) {
  const Probe p = run_probe({"announce", "4", std::to_string(128 << 20)});
  EXPECT_EQ(p.code, 0) << p.log;
}

// A barrier inside a Comm::watch scope (the others' wait for rank 0's serial write of a record's
// part) gets the scope's deadline: 2 s + 128 MiB at 32 MiB/s = 6 s, against rank 0's 4 s; with
// its own 2 s it would abort. A scope allowing nothing extra does abort.
TEST(MpiHeartbeat, CallsInsideAWatchScopeGetItsDeadline) {
  const Probe p = run_probe({"scoped", "4", std::to_string(128 << 20)});
  EXPECT_EQ(p.code, 0) << p.log;
  EXPECT_NE(p.log.find("rank 1 of 2: through the scoped barrier"), std::string::npos) << p.log;
  const Probe q = run_probe({"scoped", "4", "0"});
  EXPECT_NE(q.code, 0) << q.log;
  EXPECT_NE(q.log.find("the probe's scope did not complete within 2 s"), std::string::npos)
      << q.log;
}

// --force under MPI on a disk with no room for the old output and the new one: rank 0, which set
// the old output aside, judges the room, puts the old output back and refuses the run, every
// rank exits 1 with its message; with the old file removed the run goes on.
TEST(MpiFaults, ForceWithoutRoomForBothIsRefusedOnEveryRank) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  TempDir t;
  std::filesystem::create_directories(t / "disk");
  if (run("mount -t tmpfs -o size=10m tmpfs " + t / "disk").code != 0)
    GTEST_SKIP() << "mount(2) refused: no CAP_SYS_ADMIN here";
  struct Unmount {
    std::string dir;
    ~Unmount() { run("umount -l " + dir); }
  } unmount{t / "disk"};
  ASSERT_EQ(run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                t / "m.h5")
                .code,
            0);
  const std::string out = t / "disk/out.h5";
  const std::string cmd = mpirun(2) + binary() + " embed --pool none --model " + t / "m.h5" +
                          " --input " + source_dir() + "/examples/lambda_virus.fa.gz --output " +
                          out;
  expect_force_keeps_the_old_file(cmd, out);
}

// Every rank reads the DNA inputs itself. A rank that read other bytes for a split record (here
// two MPMD commands with inputs that differ in one base of the second rank's shard, as a stale
// node-local copy would) embedded its shard of the other record: exit 0 and a chimera under one
// rank's input_sha256. Now refused on every rank: exit 1, the record and the ranks named once,
// no file at the output path.
TEST(MpiFaults, RanksThatReadOtherDataForASplitRecordAreRefused) {
  TempDir t;
  ASSERT_EQ(run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                t / "m.h5")
                .code,
            0);
  const std::string fa = random_fasta(1, 4000, 9);
  std::string other = fa;
  size_t late = other.size() - 100;  // in the second rank's half
  while (other[late] == '\n') --late;
  other[late] = other[late] == 'A' ? 'C' : 'A';
  write_file(t / "a.fa", fa);
  write_file(t / "b.fa", other);
  const std::string out = t / "out.h5";
  auto cmd = [&](const std::string& in) {
    return binary() + " embed -q --threads 1 --split-min 100 --model " + t / "m.h5" + " --input " +
           in + " --output " + out;
  };
  const auto r = run(mpirun(1) + cmd(t / "a.fa") + " : -np 1 " + cmd(t / "b.fa"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("record 'rec0' (record 1): rank 1 read other data for it than rank 0"),
            std::string::npos)
      << r.output;
  // Said once by rank 0 (rank 1, whose copy names another path, may add its own line before
  // the abort reaches it: "sparsa: error (rank 1): ...").
  EXPECT_EQ(count_in(r.output, "sparsa: error: " + t / "a.fa" + ": record 'rec0'"), 1u) << r.output;
  EXPECT_FALSE(exists(out));
  // Short records, spread whole over the ranks by their lengths: a rank whose copy has a record
  // of another length (or one more or fewer) would embed or skip the wrong ones. Refused too.
  write_file(t / "c.fa", random_fasta(3, 50, 4));
  write_file(t / "d.fa", random_fasta(2, 50, 4) + ">rec2\nACGT\n");
  const auto s = run(mpirun(1) + cmd(t / "c.fa") + " : -np 1 " + cmd(t / "d.fa"));
  EXPECT_EQ(s.code, 1) << s.output;
  EXPECT_NE(s.output.find("records 1 to 3 (from 'rec0' of " + t / "c.fa" +
                          "): rank 1 read other records from the inputs than rank 0"),
            std::string::npos)
      << s.output;
  EXPECT_FALSE(exists(out));
  // Copies that send the ranks down different paths: one rank's record is split (long enough)
  // where the other's is batched, or one copy has a record more at its end. Each path's first
  // collective is the same check, so they meet there and stop instead of waiting in different
  // collectives (the CPU's memory check came first on the split path).
  write_file(t / "long.fa", random_fasta(1, 150, 4));
  write_file(t / "short.fa", random_fasta(1, 50, 4));
  write_file(t / "more.fa", random_fasta(3, 50, 4) + random_fasta(1, 200, 5, "extra"));
  for (const auto& [x, y] :
       {std::pair{t / "long.fa", t / "short.fa"}, std::pair{t / "short.fa", t / "long.fa"},
        std::pair{t / "c.fa", t / "more.fa"}, std::pair{t / "more.fa", t / "c.fa"}}) {
    const auto u = run("timeout 120 " + mpirun(1) + cmd(x) + " : -np 1 " + cmd(y));
    EXPECT_EQ(u.code, 1) << x << " against " << y << ": " << u.output;
    EXPECT_NE(u.output.find("read other"), std::string::npos) << u.output;
    EXPECT_FALSE(exists(out));
  }
  // The same bytes on both: the run goes through.
  EXPECT_EQ(run(mpirun(1) + cmd(t / "a.fa") + " : -np 1 " + cmd(t / "a.fa")).code, 0);
  EXPECT_TRUE(exists(out));
}

// Ranks on nodes of different CPU types (OpenBLAS kernels chosen per CPU; here forced by
// OPENBLAS_CORETYPE) may round the last bits otherwise, which the bit-for-bit guarantee does not
// cover: the run goes on, warned, and the file's `compute` names rank 0's kernels.
TEST(MpiFaults, RanksOnOtherCpuKernelsAreWarned) {
  TempDir t;
  if (!prescott_kernels_differ()) GTEST_SKIP() << "this CPU's OpenBLAS kernels are Prescott's";
  ASSERT_EQ(run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                t / "m.h5")
                .code,
            0);
  write_file(t / "a.fa", random_fasta(1, 3000, 9));
  const std::string out = t / "out.h5";
  const std::string cmd = binary() + " embed -q --threads 1 --split-min 100 --model " + t / "m.h5" +
                          " --input " + t / "a.fa" + " --output " + out;
  const auto r = run(mpirun(1) + cmd + " : -np 1 env OPENBLAS_CORETYPE=Prescott " + cmd);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: ranks compute with different kernels (rank 0: 'cpu fp32, "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("Prescott"), std::string::npos) << r.output;
  EXPECT_EQ(count_in(r.output, "different kernels"), 1u) << r.output;
  auto f = h5::File::open_read(out);
  // Both kinds, rank 0's first.
  const std::string compute = f.attr_string("/", "compute");
  EXPECT_EQ(compute.rfind("cpu fp32, OpenBLAS ", 0), 0u) << compute;
  EXPECT_NE(compute.find("; cpu fp32, OpenBLAS "), std::string::npos) << compute;
  EXPECT_GT(compute.find("Prescott"), compute.find("; ")) << compute;
  // Ranks alike: no warning.
  const auto same = run(mpirun(2) + cmd + " --force");
  EXPECT_EQ(same.code, 0) << same.output;
  EXPECT_EQ(same.output.find("different kernels"), std::string::npos) << same.output;
  EXPECT_EQ(h5::File::open_read(out).attr_string("/", "compute").find("; "), std::string::npos);
}
