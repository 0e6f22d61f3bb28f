#include "core/build.hpp"

namespace sparsa {

std::string sparsa_version() {
  const std::string commit = build_commit();
  return commit.empty() ? std::string(SPARSA_VERSION) : SPARSA_VERSION + ("+" + commit);
}

}  // namespace sparsa
