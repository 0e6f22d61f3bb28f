// sparsa --version: the version and the libraries this binary runs with (as samtools --version).
#include "cli/version.hpp"

#include <hdf5.h>
#include <htslib/hts.h>
#include <mpi.h>
#include <omp.h>
#include <zlib.h>

#include <algorithm>
#include <string>

#include "core/build.hpp"

#ifdef SPARSA_HAVE_CUDA
#include "backends/cuda/device.hpp"
#endif

namespace sparsa {

std::string version_text(const char* version) {
  std::string out = std::string("sparsa ") + version + "\n";
  // MPI_Get_library_version may be called before MPI_Init; its first line names the library.
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  std::string m = "?";
  if (MPI_Get_library_version(mpi, &len) == MPI_SUCCESS) {
    m.assign(mpi, (size_t)std::max(len, 0));
    if (const size_t cut = m.find_first_of(",\n"); cut != std::string::npos) m.resize(cut);
  }
  out += "MPI:    " + m + "\n";
  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  out += "HDF5:   " + std::to_string(maj) + "." + std::to_string(min) + "." + std::to_string(rel);
#ifdef H5_HAVE_PARALLEL
  out += " (parallel)";
#else
  out += " (serial: one rank writes the output)";
#endif
  out += "\nhtslib: " + std::string(hts_version()) + "\nzlib:   " + zlibVersion() + "\n";
  // The CPU backend's BLAS (OpenBLAS's build line: version, threading, architecture) and OpenMP
  out += "BLAS:   " + blas_build_line() + "; OpenMP " + std::to_string(_OPENMP) + "\n";
  // How this binary was built: for a bug report
  out += "build:  " +
#if defined(__clang__)
         std::string("clang ") + __clang_version__ +
#elif defined(__GNUC__)
         std::string("gcc ") + __VERSION__ +
#else
         std::string("unknown compiler") +
#endif
#ifdef NDEBUG
         ", optimised" +
#else
         ", debug (assertions on)" +
#endif
         std::string("\n");
#ifdef SPARSA_HAVE_CUDA
  out += "CUDA:   " + cuda::version_info();
#else
  out += "CUDA:   not built (CPU backend only)";
#endif
  return out;
}

}  // namespace sparsa
