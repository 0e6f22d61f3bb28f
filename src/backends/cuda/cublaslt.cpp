#include "backends/cuda/cublaslt.hpp"

#include <dlfcn.h>

#include <string>
#include <type_traits>

#include "core/error.hpp"

namespace sparsa::cuda {

namespace {

// The soname of the major version sparsa was built against; where the dynamic loader's search
// (LD_LIBRARY_PATH, the binary's RUNPATH, ld.so.cache) does not find it, the folder the build
// linked against.
void* open_library(const std::string& name) {
  if (void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
  std::string said = dlerror();
#ifdef SPARSA_CUBLASLT_DIR
  if (void* h =
          dlopen((std::string(SPARSA_CUBLASLT_DIR) + "/" + name).c_str(), RTLD_NOW | RTLD_LOCAL))
    return h;
  said += "; " + std::string(dlerror());
#endif
  throw SystemError("cannot load " + name + " (" + said + "): the CUDA backend needs cuBLASLt " +
                    std::to_string(CUBLAS_VER_MAJOR) +
                    " (NVIDIA's libcublaslt package, or the CUDA toolkit's lib64 folder in "
                    "LD_LIBRARY_PATH); --device cpu runs without it");
}

CublasLt load() {
  const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* h = open_library(name);
  auto get = [&](auto& fn, const char* symbol) {
    void* p = dlsym(h, symbol);
    if (!p) {
      dlclose(h);
      throw SystemError(name + " has no " + symbol + ": not cuBLASLt " +
                        std::to_string(CUBLAS_VER_MAJOR) + "?");
    }
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
  };
  CublasLt f{};
  get(f.Create, "cublasLtCreate");
  get(f.Destroy, "cublasLtDestroy");
  get(f.GetStatusName, "cublasLtGetStatusName");
  get(f.GetStatusString, "cublasLtGetStatusString");
  get(f.GetVersion, "cublasLtGetVersion");
  get(f.Matmul, "cublasLtMatmul");
  get(f.MatmulAlgoCheck, "cublasLtMatmulAlgoCheck");
  get(f.MatmulAlgoConfigSetAttribute, "cublasLtMatmulAlgoConfigSetAttribute");
  get(f.MatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic");
  get(f.MatmulDescCreate, "cublasLtMatmulDescCreate");
  get(f.MatmulDescDestroy, "cublasLtMatmulDescDestroy");
  get(f.MatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate");
  get(f.MatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy");
  get(f.MatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
  get(f.MatrixLayoutCreate, "cublasLtMatrixLayoutCreate");
  get(f.MatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy");
  return f;
}
}  // namespace

const CublasLt& cublaslt() {
  static const CublasLt f = load();  // (a throw leaves it to be tried again by the next call)
  return f;
}

}  // namespace sparsa::cuda
