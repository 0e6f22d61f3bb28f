// Which build this binary is: the version and the commit it was built from.
#pragma once
#include <string>

namespace sparsa {

// The git commit of the sources ("39c419d2a1b3"; "39c419d2a1b3.dirty" with uncommitted changes;
// "" when built outside a git checkout): generated at every build by cmake/build_id.cmake.
const char* build_commit();

// The version with the commit as semver build metadata: "0.1.0+39c419d2a1b3" (or "0.1.0"): what
// sparsa --version prints and the embeddings file's sparsa_version holds, so a file names the
// build that made it.
std::string sparsa_version();

// The CPU backend's OpenBLAS as its build line says it (version, threading, the kernels it chose
// for this CPU: another CPU model may round the last bits otherwise), on one line: --version and
// the embeddings file's `compute`.
std::string blas_build_line();

}  // namespace sparsa
