#pragma once
#include <string>

namespace sparsa {
// Hex SHA-256 of a file's bytes (OpenSSL). Throws SystemError when the file cannot be read.
std::string sha256_file(const std::string& path);
}  // namespace sparsa
