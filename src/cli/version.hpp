// sparsa --version text.
#pragma once
#include <string>

namespace sparsa {

// "sparsa VERSION" and a line for each library this binary runs with: MPI, HDF5, htslib, zlib and
// (when built with it) CUDA, cuBLASLt and NCCL.
std::string version_text(const char* version);

}  // namespace sparsa
