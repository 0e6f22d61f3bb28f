// The output projection with the residual add and the next RMSNorm fused (gemm.hpp:
// launch_gemm_residual_norm). Roles (320 threads, one block an SM, persistent over 128-row
// blocks): warpgroups 0 and 1 consume (rows 64 w .. 64 w + 63 of the block each); warp 8 loads
// the block's rows of a into the A images by cp.async (every lane a share; "a_full" completes when
// all 32 lanes have seen their copies land, "a_empty" when both warpgroups have issued their last
// MMA of the block); lane 0 of warp 9 keeps the ring of B images full ("b_full" / "b_empty", both
// warpgroups releasing each stage). Both warpgroups take the same B tile at a time (column tile
// nt, k tile kt), so W crosses L2 once per 128 rows.
#include "kernels/common/common.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/gemm/gemm.hpp"

namespace sparsa::kern {

namespace {

constexpr int kRnStages = 6;
constexpr int kRnMaxK = 512;
constexpr int kRnATile = 64 * 128;   // bytes: 64 rows x 64 k
constexpr int kRnBTile = 128 * 128;  // bytes: 128 columns x 64 k
constexpr int kRnSmem = 2 * (kRnMaxK / 64) * kRnATile + kRnStages * kRnBTile + 1024 + 256;
constexpr int kRnThreads = 320;

__global__ void __launch_bounds__(kRnThreads, 1)
    gemm_residual_norm_kernel(const __grid_constant__ GemmResidualNormParams p) {
#ifdef SPARSA_WGMMA
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const int KT = (int)(p.k / 64), NT = (int)(p.n / 128);
  const int64_t MT = (p.m + 127) / 128;
  const uint32_t a_base = base, b_base = base + (uint32_t)(2 * KT * kRnATile);
  auto b_stage = [&](int64_t s) { return b_base + (uint32_t)s * kRnBTile; };
  const uint32_t bars = b_base + kRnStages * kRnBTile;
  const uint32_t a_full = bars, a_empty = bars + 8;
  auto b_full = [&](int64_t s) { return bars + 16u + 8u * (uint32_t)s; };
  auto b_empty = [&](int64_t s) { return bars + 16u + 8u * (uint32_t)(kRnStages + s); };
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t my_blocks = (int64_t)blockIdx.x < MT ? (MT - 1 - blockIdx.x) / gridDim.x + 1 : 0;

  if (tid == 0) {
    mbar_init(a_full, 32);
    mbar_init(a_empty, 2);
    for (int s = 0; s < kRnStages; ++s) {
      mbar_init(b_full(s), 1);
      mbar_init(b_empty(s), 2);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 2) {
    if (warp == 0) {  // warp 8: a's rows into the A images, 16 bytes a copy
      const auto* a = static_cast<const __nv_bfloat16*>(p.a);
      const int chunks = 8 * KT;  // 16-byte chunks of a row
      for (int64_t mi = 0; mi < my_blocks; ++mi) {
        const int64_t mb = blockIdx.x + mi * gridDim.x;
        if (mi > 0) mbar_wait(a_empty, (uint32_t)((mi - 1) & 1));
        for (int idx = lane; idx < 128 * chunks; idx += 32) {
          const int r = idx / chunks, c = idx % chunks;
          const int64_t row = mb * 128 + r;
          const bool ok = row < p.m;
          const uint32_t dst = a_base + (uint32_t)(((r >> 6) * KT + (c >> 3)) * kRnATile) +
                               (uint32_t)((r & 63) * 128) + (uint32_t)(((c & 7) ^ (r & 7)) << 4);
          cp_async16(dst, ok ? a + row * p.k + c * 8 : a, ok);
        }
        cp_async_commit();
        cp_async_wait<0>();
        proxy_fence();  // generic-proxy writes, read by the wgmmas (async proxy)
        mbar_arrive(a_full);
      }
    } else if (lane == 0) {  // warp 9: the B ring, tiles in the consumers' order (nt, kt)
      const auto* b_img = static_cast<const unsigned char*>(p.b);
      int64_t it = 0;
      for (int64_t mi = 0; mi < my_blocks; ++mi)
        for (int nt = 0; nt < NT; ++nt)
          for (int kt = 0; kt < KT; ++kt, ++it) {
            const int64_t s = it % kRnStages;
            if (it >= kRnStages) mbar_wait(b_empty(s), (uint32_t)((it / kRnStages - 1) & 1));
            bulk_load(b_stage(s), b_img + (int64_t)(nt * KT + kt) * kRnBTile, kRnBTile, b_full(s));
          }
    }
    return;
  }

  // Consumers. Thread (warp, lane) holds rows ra = 16 warp + lane / 4 and rb = ra + 8 of its
  // warpgroup's 64, columns 128 nt + 8 j + 2 t + {0, 1} (j < 16, t = lane % 4) of tile nt.
  const int t = lane % 4;
  int64_t it = 0;
  float acc[64];
  float2 xa[16], xb[16];
  for (int64_t mi = 0; mi < my_blocks; ++mi) {
    const int64_t mb = blockIdx.x + mi * gridDim.x;
    const int64_t ra = mb * 128 + wg * 64 + warp * 16 + lane / 4, rb = ra + 8;
    const bool va = ra < p.m, vb = rb < p.m;
    float* xra = p.x + (va ? ra : 0) * p.n + 2 * t;
    float* xrb = p.x + (vb ? rb : 0) * p.n + 2 * t;
    auto load_x = [&](int nt) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        xa[j] = va ? *reinterpret_cast<const float2*>(xra + nt * 128 + 8 * j) : make_float2(0, 0);
        xb[j] = vb ? *reinterpret_cast<const float2*>(xrb + nt * 128 + 8 * j) : make_float2(0, 0);
      }
    };
    load_x(0);
    mbar_wait(a_full, (uint32_t)(mi & 1));
    proxy_fence();
    double ssa = 0.0, ssb = 0.0;
    for (int nt = 0; nt < NT; ++nt) {
      if (nt > 0) load_x(nt);  // in flight while the MMAs run
      for (int kt = 0; kt < KT; ++kt, ++it) {
        const int64_t s = it % kRnStages;
        mbar_wait(b_full(s), (uint32_t)((it / kRnStages) & 1));
        const uint64_t da = desc128(a_base + (uint32_t)((wg * KT + kt) * kRnATile));
        const uint64_t db = desc128(b_stage(s));
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmma_ss_n128(acc, da + 2 * kk, db + 2 * kk, kt > 0 || kk > 0);
        wg_commit();
        if (kt > 0) {
          wg_wait<1>();
          if (tid % 128 == 0) mbar_arrive(b_empty((it - 1) % kRnStages));
        }
      }
      wg_wait<0>();
      reg_fence(acc);
      if (tid % 128 == 0) {
        mbar_arrive(b_empty((it - 1) % kRnStages));
        if (nt == NT - 1) mbar_arrive(a_empty);  // this warpgroup's last read of the A images
      }
      // v = x + a W (one float add, as cuBLASLt's beta = 1), back to x; the sums of squares in
      // double, this thread's columns in order
      // (v kept in xa / xb: only the wgmmas write acc, or ptxas serializes them)
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        xa[j] = make_float2(__fadd_rn(acc[4 * j], xa[j].x), __fadd_rn(acc[4 * j + 1], xa[j].y));
        xb[j] = make_float2(__fadd_rn(acc[4 * j + 2], xb[j].x), __fadd_rn(acc[4 * j + 3], xb[j].y));
        ssa += (double)xa[j].x * (double)xa[j].x;
        ssa += (double)xa[j].y * (double)xa[j].y;
        ssb += (double)xb[j].x * (double)xb[j].x;
        ssb += (double)xb[j].y * (double)xb[j].y;
        if (va) *reinterpret_cast<float2*>(xra + nt * 128 + 8 * j) = xa[j];
        if (vb) *reinterpret_cast<float2*>(xrb + nt * 128 + 8 * j) = xb[j];
      }
    }
    // the row's sum from the quad's four parts (a fixed butterfly), then h tile by tile: the last
    // tile from registers, the others read back (this thread wrote them; L2 still holds them)
    ssa += __shfl_xor_sync(0xffffffffu, ssa, 1);
    ssa += __shfl_xor_sync(0xffffffffu, ssa, 2);
    ssb += __shfl_xor_sync(0xffffffffu, ssb, 1);
    ssb += __shfl_xor_sync(0xffffffffu, ssb, 2);
    const double inva = 1.0 / sqrt(ssa / (double)p.n + p.eps);
    const double invb = 1.0 / sqrt(ssb / (double)p.n + p.eps);
    auto* h = static_cast<__nv_bfloat16*>(p.h);
    __nv_bfloat16* hra = h + (va ? ra : 0) * p.n + 2 * t;
    __nv_bfloat16* hrb = h + (vb ? rb : 0) * p.n + 2 * t;
    for (int nt = NT - 1; nt >= 0; --nt) {
      if (nt < NT - 1) load_x(nt);  // the last tile's v is still in xa / xb
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = nt * 128 + 8 * j + 2 * t;
        const double g0 = (double)p.gain[col], g1 = (double)p.gain[col + 1];
        if (va)
          *reinterpret_cast<__nv_bfloat162*>(hra + nt * 128 + 8 * j) = __floats2bfloat162_rn(
              (float)((double)xa[j].x * inva * g0), (float)((double)xa[j].y * inva * g1));
        if (vb)
          *reinterpret_cast<__nv_bfloat162*>(hrb + nt * 128 + 8 * j) = __floats2bfloat162_rn(
              (float)((double)xb[j].x * invb * g0), (float)((double)xb[j].y * invb * g1));
      }
    }
  }
#else
  __trap();  // compiled only for sm_90a; the launcher checks wgmma_available() first
#endif
}

}  // namespace

bool gemm_residual_norm_supported(int64_t n, int64_t k) {
  return k > 0 && k <= kRnMaxK && k % 64 == 0 && n > 0 && n <= 512 && n % 128 == 0 &&
         wgmma_available();
}

void launch_gemm_residual_norm(const GemmResidualNormParams& p, cudaStream_t stream) {
  if (p.m <= 0) return;
  if (!gemm_residual_norm_supported(p.n, p.k))
    throw SystemError(
        "gemm_residual_norm: needs an sm_90a device, K % 64 == 0, K <= 512, N % 128 == 0, N <= "
        "512");
  if ((uintptr_t)p.a % 16 || (uintptr_t)p.b % 16 || (uintptr_t)p.x % 8 || (uintptr_t)p.h % 4)
    throw SystemError("gemm_residual_norm: a and the images must be 16-byte aligned, x 8, h 4");
  // NOTE: the SM count and the shared-memory attribute are taken once, for the device of the
  // first call: one device a process (one rank a GPU), as the other launchers assume.
  static const int sms = [] {
    int dev = 0, v = 0;
    SPARSA_CUDA_CHECK(cudaGetDevice(&dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(gemm_residual_norm_kernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, kRnSmem));
    return v;
  }();
  const int64_t blocks = (p.m + 127) / 128;
  const unsigned grid = (unsigned)std::min<int64_t>(blocks, sms);
  gemm_residual_norm_kernel<<<grid, kRnThreads, kRnSmem, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
