// Helpers shared by the libFuzzer targets: a private temporary folder and the error policy.
//
// Policy: a parser may refuse any input by throwing a sparsa::Error (InputError, ConfigError...).
// Anything else is a bug the fuzzer must report: a crash, a sanitizer report, a hang, an
// allocation over -malloc_limit_mb, or any other exception (std::out_of_range, std::bad_alloc,
// std::length_error...), which escapes LLVMFuzzerTestOneInput and aborts with its type printed.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace sparsa::fuzz {

// One folder per process (mkdtemp under $TMPDIR): runs in parallel (-jobs, -fork, two CI jobs
// on one machine) never share or clobber each other's files. It is removed by exit(), which
// libFuzzer skips when it stops on -max_total_time or a finding; scripts/fuzz.sh therefore sets
// TMPDIR to a folder of its own and removes that.
inline const std::string& temp_dir() {
  // Never destroyed: the atexit cleanup below must still be able to read it.
  static const std::string* dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/sparsa-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("sparsa fuzz: mkdtemp");
      std::abort();
    }
    auto* d = new std::string(tmpl);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(temp_dir(), ec);
    });
    return d;
  }();
  return *dir;
}

inline std::string temp_path(const std::string& name) { return temp_dir() + "/" + name; }

// Writes the fuzz input to a file in the private folder and returns its path.
inline std::string write_temp(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = temp_path(name);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror(("sparsa fuzz: cannot write " + path).c_str());
    std::abort();  // the harness failed, not the parser: stop loudly
  }
  return path;
}

// Reports a broken invariant (not a refused input) and aborts, so libFuzzer saves the input.
[[noreturn]] inline void invariant_failed(const std::string& what) {
  std::fprintf(stderr, "sparsa fuzz: invariant failed: %s\n", what.c_str());
  std::abort();
}

}  // namespace sparsa::fuzz
