// sparsa CUDA backend (internal): cuBLASLt, loaded on first use (dlopen) instead of linked.
// NOTE: a process linked with libcublasLt holds ~210 MB more resident memory from its first
// instruction (the library's own start-up, measured with a program that only prints), so a CPU
// run of a CUDA build paid it for nothing. Only the functions sparsa calls are looked up.
#pragma once
#include <cublasLt.h>

namespace sparsa::cuda {

struct CublasLt {
  decltype(&::cublasLtCreate) Create;
  decltype(&::cublasLtDestroy) Destroy;
  decltype(&::cublasLtGetStatusName) GetStatusName;
  decltype(&::cublasLtGetStatusString) GetStatusString;
  decltype(&::cublasLtGetVersion) GetVersion;
  decltype(&::cublasLtMatmul) Matmul;
  decltype(&::cublasLtMatmulAlgoCheck) MatmulAlgoCheck;
  decltype(&::cublasLtMatmulAlgoConfigSetAttribute) MatmulAlgoConfigSetAttribute;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) MatmulAlgoGetHeuristic;
  decltype(&::cublasLtMatmulDescCreate) MatmulDescCreate;
  decltype(&::cublasLtMatmulDescDestroy) MatmulDescDestroy;
  decltype(&::cublasLtMatmulPreferenceCreate) MatmulPreferenceCreate;
  decltype(&::cublasLtMatmulPreferenceDestroy) MatmulPreferenceDestroy;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) MatmulPreferenceSetAttribute;
  decltype(&::cublasLtMatrixLayoutCreate) MatrixLayoutCreate;
  decltype(&::cublasLtMatrixLayoutDestroy) MatrixLayoutDestroy;
};

// The library's functions, loaded by the first call (thread-safe). Throws SystemError naming the
// library and what the loader said where it cannot be loaded or lacks a function.
const CublasLt& cublaslt();

}  // namespace sparsa::cuda
