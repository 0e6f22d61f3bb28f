#include "backends/cuda/gemm.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backends/cuda/check.hpp"
#include "backends/cuda/cublaslt.hpp"
#include "backends/cuda/device.hpp"

namespace sparsa::cuda {

namespace {
constexpr int64_t kReferenceM = 65536;
constexpr size_t kWorkspace = 32u << 20;

struct Layouts {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~Layouts() {
    if (op) cublaslt().MatmulDescDestroy(op);
    if (a) cublaslt().MatrixLayoutDestroy(a);
    if (b) cublaslt().MatrixLayoutDestroy(b);
    if (c) cublaslt().MatrixLayoutDestroy(c);
  }
};

// Row-major y[M,N] = x[M,K] W[K,N] is column-major y^T[N,M] = W^T[N,K] x^T[K,M]: cuBLASLt's
// A = W (N x K, ld N), B = x (K x M, ld K), C = D = y (N x M, ld N), no transposes.
void make_layouts(Layouts& l, int64_t m, int64_t n, int64_t k, kern::DType t, kern::DType o) {
  const cudaDataType_t in = t == kern::DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t out = o == kern::DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  CUBLAS_OK(cublaslt().MatmulDescCreate(&l.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  CUBLAS_OK(cublaslt().MatrixLayoutCreate(&l.a, in, (uint64_t)n, (uint64_t)k, n));
  CUBLAS_OK(cublaslt().MatrixLayoutCreate(&l.b, in, (uint64_t)k, (uint64_t)m, k));
  CUBLAS_OK(cublaslt().MatrixLayoutCreate(&l.c, out, (uint64_t)n, (uint64_t)m, n));
}
}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace{kWorkspace};
  std::map<std::tuple<int64_t, int64_t, int, bool, int>, cublasLtMatmulAlgo_t> algos;
  // Per full shape (m included): the layouts and the checked algorithm, built once, so that a
  // call is one cublasLtMatmul (no descriptor creation, no AlgoCheck, no heuristic per chunk).
  struct Plan {
    Layouts l;
    cublasLtMatmulAlgo_t algo;
  };
  std::map<std::tuple<int64_t, int64_t, int64_t, int, bool, int>, std::unique_ptr<Plan>> plans;

  cublasLtMatmulAlgo_t heuristic(int64_t m, int64_t n, int64_t k, kern::DType t, kern::DType o) {
    Layouts l;
    make_layouts(l, m, n, k, t, o);
    cublasLtMatmulPreference_t pref;
    CUBLAS_OK(cublaslt().MatmulPreferenceCreate(&pref));
    size_t ws = kWorkspace;
    CUBLAS_OK(cublaslt().MatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t res[8];
    int found = 0;
    const cublasStatus_t st =
        cublaslt().MatmulAlgoGetHeuristic(handle, l.op, l.a, l.b, l.c, l.c, pref, 8, res, &found);
    cublaslt().MatmulPreferenceDestroy(pref);
    CUBLAS_OK(st);
    if (found == 0) throw SystemError("cuBLASLt found no algorithm for a GEMM");
    // Prefer the first result that runs without split-K (a row's sums in one fixed order).
    // SPARSA_GEMM_ALGO=i (experiment): the i-th such result instead, or the last one there is.
    const char* pick = std::getenv("SPARSA_GEMM_ALGO");
    int skip = pick ? std::max(0, std::atoi(pick)) : 0;
    bool any = false;
    cublasLtMatmulAlgo_t last{};
    for (int i = 0; i < found; ++i) {
      cublasLtMatmulAlgo_t algo = res[i].algo;
      int32_t one = 1;
      if (cublaslt().MatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one,
                                                  sizeof one) != CUBLAS_STATUS_SUCCESS)
        continue;
      cublasLtMatmulHeuristicResult_t chk;
      if (cublaslt().MatmulAlgoCheck(handle, l.op, l.a, l.b, l.c, l.c, &algo, &chk) ==
              CUBLAS_STATUS_SUCCESS &&
          chk.workspaceSize <= kWorkspace) {
        if (skip-- == 0) return algo;
        any = true;
        last = algo;
      }
    }
    return any ? last : res[0].algo;
  }
};

Gemm::Gemm() : impl_(std::make_unique<Impl>()) { CUBLAS_OK(cublaslt().Create(&impl_->handle)); }
Gemm::~Gemm() {
  if (impl_ && impl_->handle) cublaslt().Destroy(impl_->handle);
}

void Gemm::run(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
               kern::DType t, bool accumulate, cudaStream_t stream, kern::DType o) {
  if (m <= 0 || n <= 0) return;
  if (accumulate && o != kern::DType::kF32)
    throw SystemError("GEMM: accumulating into a bf16 output is not supported");
  const auto pkey = std::make_tuple(m, n, k, (int)t, accumulate, (int)o);
  auto pit = impl_->plans.find(pkey);
  if (pit == impl_->plans.end()) {
    // Plans are cheap to make again; a run of packed batches (a new M each) must not grow the
    // map without bound.
    if (impl_->plans.size() >= 256) impl_->plans.clear();
    const auto key = std::make_tuple(n, k, (int)t, accumulate, (int)o);
    auto it = impl_->algos.find(key);
    if (it == impl_->algos.end())
      it = impl_->algos.emplace(key, impl_->heuristic(kReferenceM, n, k, t, o)).first;
    auto plan = std::make_unique<Impl::Plan>();
    make_layouts(plan->l, m, n, k, t, o);
    plan->algo = it->second;
    cublasLtMatmulHeuristicResult_t chk;
    if (cublaslt().MatmulAlgoCheck(impl_->handle, plan->l.op, plan->l.a, plan->l.b, plan->l.c,
                                   plan->l.c, &plan->algo, &chk) != CUBLAS_STATUS_SUCCESS ||
        chk.workspaceSize > kWorkspace)  // NOTE: the reference algorithm cannot run this M
      plan->algo = impl_->heuristic(m, n, k, t, o);
    pit = impl_->plans.emplace(pkey, std::move(plan)).first;
  }
  const Layouts& l = pit->second->l;
  const cublasLtMatmulAlgo_t& algo = pit->second->algo;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  CUBLAS_OK(cublaslt().Matmul(impl_->handle, l.op, &alpha, w, l.a, x, l.b, &beta, y, l.c, y, l.c,
                              &algo, impl_->workspace.get(), kWorkspace, stream));
}

}  // namespace sparsa::cuda
