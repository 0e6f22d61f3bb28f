#pragma once
#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace sparsa {
// Hex SHA-256 of a file's bytes (OpenSSL). Throws SystemError when the file cannot be read; stops
// early and returns "" once *cancel is true (a run that failed before it needed the hash).
std::string sha256_file(const std::string& path, const std::atomic<bool>* cancel = nullptr);

// SHA-256 of bytes given in pieces (OpenSSL): update() any number of times, then hex() once.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t bytes);
  // A string as its length (8 bytes) and its bytes, so that fields cannot run into each other.
  void update_field(std::string_view s);
  std::string hex();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
}  // namespace sparsa
