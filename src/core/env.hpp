// sparsa: switches read from the environment (SPARSA_PROFILE=1 and the like).
#pragma once
#include <cstdlib>

namespace sparsa {

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

}  // namespace sparsa
