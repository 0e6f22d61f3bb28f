// Helpers for tests that run the sparsa binary and look at files.
#pragma once
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace sparsa::testing {

// The checkout and the sparsa binary: the build's, or SPARSA_TEST_SOURCE_DIR / SPARSA_TEST_BINARY
// (a test binary carried to another machine, e.g. a GPU host).
inline std::string source_dir() {
  const char* e = std::getenv("SPARSA_TEST_SOURCE_DIR");
  return e && e[0] ? e : SPARSA_SOURCE_DIR;
}
inline std::string binary() {
  const char* e = std::getenv("SPARSA_TEST_BINARY");
  return e && e[0] ? e : SPARSA_BINARY;
}
// The shared data folder beside the checkout (CI lays a copy of shared/ there).
inline std::string shared_data() {
  if (const char* d = std::getenv("SPARSA_DATA_DIR")) return d;
  return source_dir() + "/../shared/data";
}
// A file of the shared data set by its path there ("dna/ecoli_k12_mg1655.fasta.gz"), else the
// same file where a plain clone on Debian has it: the repository's examples/, or the Debian
// package it came from (scripts/setup-debian.sh installs ragout-examples for the E. coli genome;
// the files are identical). "" when none holds it.
inline std::string data_file(const std::string& rel) {
  namespace fs = std::filesystem;
  const std::string base = fs::path(rel).filename().string();
  for (const std::string& p :
       {shared_data() + "/" + rel, source_dir() + "/examples/" + base,
        std::string(base == "ecoli_k12_mg1655.fasta.gz"
                        ? "/usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz"
                        : "")})
    if (!p.empty() && fs::exists(p)) return p;
  return "";
}

// Sets an environment variable (inherited by the runs a test starts) until the end of a scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) had_ = true, old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_.c_str(), old_.c_str(), 1);
    else
      unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_ = false;
};

struct RunResult {
  int code;
  std::string output;  // stdout and stderr together
};

inline RunResult run(const std::string& cmd) {
  RunResult r{-1, ""};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t got;
  while ((got = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), got);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// `sparsa init` of configs/dna-tiny.toml at `path` (seed 1); false (with the output) on failure.
inline ::testing::AssertionResult init_tiny_model(const std::string& path) {
  const RunResult r =
      run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " + path);
  if (r.code == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << r.output;
}

// A fresh temporary folder per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("sparsa-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

inline bool exists(const std::string& p) { return std::filesystem::exists(p); }

// How many times `needle` occurs in `text` (a message said once, three warnings, ...).
inline size_t count_in(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// Whether OPENBLAS_CORETYPE=Prescott gives sparsa other OpenBLAS kernels than this CPU's own
// (--version's BLAS line): the tests of runs on two kinds of CPU force them so, and skip where
// the CPU's own are Prescott's.
inline bool prescott_kernels_differ() {
  const auto mine = run(binary() + " --version"),
             old = run("OPENBLAS_CORETYPE=Prescott " + binary() + " --version");
  EXPECT_EQ(mine.code, 0) << mine.output;
  EXPECT_EQ(old.code, 0) << old.output;
  auto blas_line = [](const std::string& v) {
    const size_t at = v.find("BLAS:");
    return at == std::string::npos ? v : v.substr(at, v.find('\n', at) - at);
  };
  return blas_line(mine.output) != blas_line(old.output);
}

// Starts `args` as a child process (stdout and stderr to `log`); returns its pid.
inline pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);  // its own process group: a test can signal it and everything it started
    if (!freopen(log.c_str(), "w", stderr) || !freopen(log.c_str(), "a", stdout)) _exit(126);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Its exit status (128 + the signal when a signal ended it). A child that has not ended after
// `seconds` (a stop or watchdog that regressed) fails the test and is killed with everything it
// started, instead of hanging until CTest's timeout and leaving its processes behind.
inline int wait_exit(pid_t pid, int seconds = 300) {
  int st = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "process " << pid << " still running after " << seconds << " s: killed";
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Finished parts in a journal folder.
inline int count_parts(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.path().extension() == ".h5") ++n;
  return n;
}

// Polls `cond` every `ms` milliseconds for at most `seconds`; false when process `pid` ended
// first (it is reaped) or time ran out.
template <class F>
bool wait_until(pid_t pid, F&& cond, int ms, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    if (cond()) return true;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  }
  return false;
}

// Waits until at least `n` parts exist; false when the process ended first or after 30 s.
inline bool wait_for_parts(const std::string& dir, int n, pid_t pid) {
  return wait_until(
      pid, [&] { return count_parts(dir) >= n; }, 50, 30);
}

// A FASTA of `records` pseudo-random records of `len` bases (fixed seed), named `name`0, `name`1...
inline std::string random_fasta(int records, int len, uint64_t seed = 42,
                                const std::string& name = "rec") {
  std::string fa;
  for (int rec = 0; rec < records; ++rec) {
    fa += ">" + name + std::to_string(rec) + "\n";
    for (int i = 0; i < len; ++i) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      fa += "ACGT"[(seed >> 33) & 3];
      if (i % 60 == 59) fa += '\n';
    }
    fa += "\n";
  }
  return fa;
}

// Reads the whole file.
inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// `cmd` (an embed into `out` of about 6.6 MB, on a disk of 10 MB) run, then again with --force:
// two outputs do not fit, so the run is refused before any work and the old file is back at its
// path, unchanged (sparsa never removes it to make room: a bad record later would leave neither).
inline void expect_force_keeps_the_old_file(const std::string& cmd, const std::string& out) {
  auto r = run(cmd);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string before = read_file(out);
  r = run(cmd + " --force");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("not enough free space for " + out + " beside the previous one"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("(rm " + out + ")"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(out), before);  // at its path, unchanged
  EXPECT_FALSE(std::filesystem::exists(out + ".parts"));
  // The user removes it: the same run then fits.
  std::filesystem::remove(out);
  r = run(cmd);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(out + ".parts"));
}

}  // namespace sparsa::testing
