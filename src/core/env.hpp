// sparsa: switches read from the environment (SPARSA_PROFILE=1 and the like).
#pragma once
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.hpp"

namespace sparsa {

// Variable `name`'s text; "" when unset.
inline std::string env_text(const char* name) {
  const char* e = std::getenv(name);
  return e ? e : "";
}

// True when variable `name` is set, not empty, and does not start with '0' ("0" switches off).
inline bool env_on(const char* name) {
  const char* e = std::getenv(name);
  return e && e[0] && e[0] != '0';
}

// True when variable `name` is set and starts with '0' (an A/B switch that is on by default).
inline bool env_off(const char* name) {
  const char* e = std::getenv(name);
  return e && e[0] == '0';
}

// The whole of `text` as a number in [lo, hi] into *out (strtod: the C locale's decimal point
// for sparsa, which sets no locale); false for anything else ("30m", "abc", "nan", "").
inline bool whole_number(const char* text, double lo, double hi, double* out) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != 0 || !(v >= lo && v <= hi)) return false;
  *out = v;
  return true;
}

// Variable `name` as a number of bytes, N or N with K, M or G (binary units: 512M, 40G); 0 when
// unset or empty. Anything else is a ConfigError naming the variable.
inline int64_t env_bytes(const char* name) {
  const char* e = std::getenv(name);
  if (!e || !*e) return 0;
  std::string t = e;
  double unit = 1;
  if (const char u = (char)std::toupper((unsigned char)t.back()); u == 'K' || u == 'M' || u == 'G')
    unit = u == 'K' ? 1024.0 : u == 'M' ? 1024.0 * 1024 : 1024.0 * 1024 * 1024;
  if (unit > 1) t.pop_back();
  double v = 0;
  if (!whole_number(t.c_str(), 1, 1e15, &v))
    throw ConfigError(std::string(name) + "=" + e +
                      ": not a number of bytes (for example 4096, 512M or 2G)");
  return (int64_t)(v * unit);
}

}  // namespace sparsa
