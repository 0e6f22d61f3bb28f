// Helpers for tests that run the sparsa binary and look at files.
#pragma once
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace sparsa::testing {

inline std::string source_dir() { return SPARSA_SOURCE_DIR; }
inline std::string binary() { return SPARSA_BINARY; }
// The shared data folder beside the checkout (CI lays a copy of shared/ there).
inline std::string shared_data() {
  if (const char* d = std::getenv("SPARSA_DATA_DIR")) return d;
  return source_dir() + "/../shared/data";
}

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

}  // namespace sparsa::testing
