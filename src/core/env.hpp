// sparsa: switches read from the environment (SPARSA_PROFILE=1 and the like).
#pragma once
#include <cstdlib>

namespace sparsa {

// True when variable `name` is set, not empty, and does not start with '0' ("0" switches off).
inline bool env_on(const char* name) {
  const char* e = std::getenv(name);
  return e && e[0] && e[0] != '0';
}

}  // namespace sparsa
