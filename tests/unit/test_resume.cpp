// Reliability with real processes: a stopped or killed run keeps its finished records, leaves
// nothing at the output path, and --resume finishes with the same contents as a clean run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "io/h5.hpp"
#include "test_util.hpp"

using namespace sparsa::testing;
namespace h5 = sparsa::h5;
namespace fs = std::filesystem;

namespace {

// Starts `argv` as a child process (stdout/stderr to `log`); returns its pid.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = freopen(log.c_str(), "w", stderr);
    (void)f;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int count_parts(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".h5") ++n;
  return n;
}

// Waits until at least `n` parts exist (or the process ended); false on timeout.
bool wait_for_parts(const std::string& dir, int n, pid_t pid) {
  for (int i = 0; i < 600; ++i) {
    if (count_parts(dir) >= n) return true;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void expect_same_records(const std::string& a, const std::string& b) {
  auto fa = h5::File::open_read(a), fb = h5::File::open_read(b);
  ASSERT_EQ(fa.attr_int("/", "complete"), 1);
  ASSERT_EQ(fb.attr_int("/", "complete"), 1);
  const auto keys = fa.list("/records");
  ASSERT_EQ(keys, fb.list("/records"));
  for (const auto& k : keys) {
    const std::string g = "/records/" + k;
    EXPECT_EQ(fa.read_f32(g + "/embedding"), fb.read_f32(g + "/embedding")) << k;
    EXPECT_EQ(fa.read_i64(g + "/global_positions"), fb.read_i64(g + "/global_positions")) << k;
    EXPECT_EQ(fa.read_i64(g + "/bin_start"), fb.read_i64(g + "/bin_start")) << k;
    EXPECT_EQ(fa.attr_string(g, "name"), fb.attr_string(g, "name")) << k;
  }
}

struct Fixture {
  TempDir t;
  std::string model = t / "m.h5", input = t / "many.fa";
  Fixture() {
    auto r = run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                 model);
    EXPECT_EQ(r.code, 0) << r.output;
    // Eight records of 40 kb, each a different slice of a pseudo-random sequence.
    std::string fa;
    uint64_t s = 42;
    for (int rec = 0; rec < 8; ++rec) {
      fa += ">rec" + std::to_string(rec) + "\n";
      for (int i = 0; i < 40000; ++i) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        fa += "ACGT"[(s >> 33) & 3];
        if (i % 60 == 59) fa += '\n';
      }
      fa += "\n";
    }
    write_file(input, fa);
  }
  std::vector<std::string> args(const std::string& out, bool resume) {
    std::vector<std::string> a{binary(), "embed", "-q", "--threads", "1", "--dtype", "f32",
                               "--pool", "bin:10", "--model", model, "--input", input,
                               "--output", out};
    if (resume) a.push_back("--resume");
    return a;
  }
};

}  // namespace

TEST(Resume, SigtermStopsAtSafePointAndResumeFinishes) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(out, false), fx.t / "log1");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 2, pid)) << "run ended before 2 parts";
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 75);  // documented: interrupted, resumable
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".tmp"));
  const int kept = count_parts(out + ".parts");
  EXPECT_GE(kept, 2);
  EXPECT_LT(kept, 8);
  // Without --resume (or --force) the journal is not thrown away.
  auto r = run(binary() + " embed -q --model " + fx.model + " --input " + fx.input + " --output " +
               out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  pid = spawn(fx.args(out, true), fx.t / "log2");
  EXPECT_EQ(wait_exit(pid), 0);
  EXPECT_FALSE(exists(out + ".parts"));
  pid = spawn(fx.args(fx.t / "clean.h5", false), fx.t / "log3");
  ASSERT_EQ(wait_exit(pid), 0);
  expect_same_records(out, fx.t / "clean.h5");
  // A finished output with --resume is left alone and reported complete.
  r = run(binary() + " embed --resume --model " + fx.model + " --input " + fx.input + " --output " + out);
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("already complete"), std::string::npos) << r.output;
}

TEST(Resume, SigkillLosesOnlyTheRecordInFlight) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(out, false), fx.t / "log1");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 3, pid));
  kill(pid, SIGKILL);
  EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
  EXPECT_FALSE(exists(out));
  pid = spawn(fx.args(out, true), fx.t / "log2");
  EXPECT_EQ(wait_exit(pid), 0);
  pid = spawn(fx.args(fx.t / "clean.h5", false), fx.t / "log3");
  ASSERT_EQ(wait_exit(pid), 0);
  expect_same_records(out, fx.t / "clean.h5");
}

TEST(Resume, ManifestMismatchIsRefused) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(out, false), fx.t / "log1");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 1, pid));
  kill(pid, SIGKILL);
  wait_exit(pid);
  // Another pool size is another run: --resume refuses to mix them.
  auto r = run(binary() + " embed -q --resume --pool bin:20 --model " + fx.model + " --input " +
               fx.input + " --output " + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("different run"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  // --force starts over.
  r = run(binary() + " embed -q --force --pool bin:20 --model " + fx.model + " --input " +
          fx.input + " --output " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(exists(out + ".parts"));
}
