// sparsa: the edit distance of two short words, for "did you mean ...?" hints (command-line
// options, config keys).
#pragma once
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace sparsa {

// Insertions, deletions and substitutions that turn `a` into `b`.
inline size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The word of `words` nearest `w` within `max_distance` edits (the first of equals), or "".
template <class Words>
std::string nearest_word(std::string_view w, const Words& words, size_t max_distance = 2) {
  std::string best;
  size_t best_d = max_distance + 1;
  for (const auto& cand : words)
    if (const size_t d = edit_distance(w, cand); d < best_d) best_d = d, best = std::string(cand);
  return best;
}

}  // namespace sparsa
