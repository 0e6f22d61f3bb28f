#pragma once
#include <string>

namespace sparsa {
// Prints a readable summary of a checkpoint or an embeddings file to stdout. Returns false for
// an embeddings file without complete = 1 (not a result).
bool inspect_file(const std::string& path, bool verbose);
}  // namespace sparsa
