#include "core/error.hpp"

namespace sparsa {

std::string where(const std::string& file, const std::string& record, long long position_1based,
                  const std::string& what) {
  std::string s;
  if (!file.empty()) s += file + ": ";
  if (!record.empty()) s += "record '" + record + "': ";
  if (position_1based > 0) s += "position " + std::to_string(position_1based) + ": ";
  return s + what;
}

}  // namespace sparsa
