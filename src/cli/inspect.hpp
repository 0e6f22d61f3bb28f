#pragma once
#include <string>
#include <vector>

namespace sparsa {
// Prints a readable summary of a checkpoint or an embeddings file to stdout. Returns false for
// an embeddings file without complete = 1 (not a result).
bool inspect_file(const std::string& path, bool verbose);
// What `inspect` reports BAD or INCOMPLETE in an embeddings file, a line each ("record KEY:
// why"); empty for a complete file that keeps spec 4's layout. Throws where the file cannot be
// opened. (For tests and tools that check outputs without the listing.)
std::vector<std::string> embeddings_problems(const std::string& path);
}  // namespace sparsa
