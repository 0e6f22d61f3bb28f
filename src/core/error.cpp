#include "core/error.hpp"

namespace sparsa {

std::string printable(const std::string& text) {
  std::string s;
  for (const char c : text)
    if ((unsigned char)c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789ABCDEF";
      s += "\\x";
      s += hex[(unsigned char)c >> 4];
      s += hex[c & 15];
    } else {
      s += c;
    }
  return s;
}

std::string where(const std::string& file, const std::string& record, long long position_1based,
                  const std::string& what) {
  std::string s;
  if (!file.empty()) s += file + ": ";
  if (!record.empty()) s += "record '" + printable(record) + "': ";
  if (position_1based > 0) s += "position " + std::to_string(position_1based) + ": ";
  return s + what;
}

}  // namespace sparsa
