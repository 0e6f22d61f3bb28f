#include "core/build.hpp"

#include <cblas.h>

#include <algorithm>

namespace sparsa {

std::string sparsa_version() {
  const std::string commit = build_commit();
  return commit.empty() ? std::string(SPARSA_VERSION) : SPARSA_VERSION + ("+" + commit);
}

std::string blas_build_line() {
  std::string blas = openblas_get_config();
  while (!blas.empty() && blas.back() == ' ') blas.pop_back();
  std::replace(blas.begin(), blas.end(), '\n', ' ');
  return blas;
}

}  // namespace sparsa
