#pragma once
#include <string>

namespace sparsa {
// Prints a readable summary of a checkpoint or an embeddings file to stdout.
void inspect_file(const std::string& path, bool verbose);
}  // namespace sparsa
