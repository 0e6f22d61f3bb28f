// The output projection with the residual add and the next RMSNorm fused (gemm.hpp:
// launch_gemm_residual_norm), on Hopper: clusters of CL = n / 128 blocks, one block an SM.
//
// Block c of a cluster owns output columns 128 c .. 128 c + 127. Its shared memory holds W's
// column slab (k / 64 B images of 16 KB, loaded once) and a ring of S stages of a's tiles, each
// stage two 64-row x 64-k tiles (16 KB, the 128-byte swizzle of the wgmma descriptors) that the
// cluster's blocks load in turn by TMA multicast (stage j issued by block j % CL into all).
// Roles (288 threads): warpgroups 0 and 1 consume alternate 64-row blocks (ping-pong: one's
// epilogue under the other's MMAs); lane 0 of warp 8 produces. Barriers: "full" (one arrival, the
// local producer's expect-tx, plus the multicast bytes), "empty" (one arrival per block of the
// cluster: a stage may be overwritten in all of them only when all released it), "sum" (one local
// arrival with the bytes of the cluster's partial sums of squares, which every block sends by
// st.async: no memory barrier), per warpgroup, two slots.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdio>
#include <cstdlib>

#include "kernels/common/common.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/gemm/gemm.hpp"

namespace sparsa::kern {

namespace {

constexpr int kRnS = 5;              // ring stages of a's tiles
constexpr int kRnStage = 2 * 8192;   // bytes: 2 tiles of 64 rows x 64 k
constexpr int kRnWTile = 128 * 128;  // bytes: 128 columns x 64 k
constexpr int kRnMaxK = 512;
constexpr int kRnThreads = 288;
constexpr int kRnAhead = 3;  // blocks of a and x prefetched into L2 ahead of the ring
// W slab, ring, then barriers (full S, empty S, sum 2 x 2) and the sums [2 wg][2 slot][4][64]
constexpr int kRnBars = 8 * (2 * kRnS + 4);
constexpr int kRnSums = 2 * 2 * 4 * 64 * 4;
constexpr int kRnSmem =
    1024 + (kRnMaxK / 64) * kRnWTile + kRnS * kRnStage + kRnBars + kRnSums + 64;  // + w_full

struct RnArgs {
  GemmResidualNormParams p;
  CUtensorMap amap;  // a as [m rows, k] bf16, boxes of 64 x 64, 128-byte swizzle
};

#ifdef SPARSA_WGMMA
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_id() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_count() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                   : "memory");
}
// The address of `addr` (this block's shared memory) in block `rank` of the cluster.
__device__ __forceinline__ uint32_t map_to(uint32_t addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
// An arrival on a barrier of another block (release at block scope: it orders this thread's
// finished reads of the stage, not its global stores, so no memory barrier waits for those).
__device__ __forceinline__ void arrive_remote(uint32_t cluster_addr) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_addr) : "memory");
}
// v into another block's shared memory, counted (4 bytes) on its barrier `bar` when it lands.
__device__ __forceinline__ void store_remote_tx(uint32_t cluster_addr, float v, uint32_t bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];\n" ::"r"(
                   cluster_addr),
               "f"(v), "r"(bar)
               : "memory");
}
// Tile (row0, k0) of a into L2.
__device__ __forceinline__ void tma_prefetch(const CUtensorMap* map, int k0, int row0) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global.tile [%0, {%1, %2}];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(k0), "r"(row0)
               : "memory");
}
// `bytes` (a multiple of 16, 16-byte aligned) from `src` into L2.
__device__ __forceinline__ void bulk_prefetch(const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}
// Tile (row0, k0) of a (64 x 64) into `dst` of every block in `mask`, counted on `bar` there.
__device__ __forceinline__ void tma_multicast(uint32_t dst, const CUtensorMap* map, int k0,
                                              int row0, uint32_t bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::"
      "cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k0), "r"(row0), "r"(bar), "h"(mask)
      : "memory");
}
#endif

template <int CL>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(kRnThreads, 1)
    gemm_residual_norm_kernel(const __grid_constant__ RnArgs args) {
#ifdef SPARSA_WGMMA
  const GemmResidualNormParams& p = args.p;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  unsigned char* gbase = smem_raw + (base - smem_u32(smem_raw));
  const int KT = (int)(p.k / 64), SB = KT / 2;  // k tiles; stages a block
  const uint32_t w_base = base, a_base = base + (uint32_t)(KT * kRnWTile);
  const uint32_t bars = a_base + kRnS * kRnStage;
  auto full = [&](int s) { return bars + 8u * (uint32_t)s; };
  auto empty = [&](int s) { return bars + 8u * (uint32_t)(kRnS + s); };
  auto sum_bar = [&](int w, int slot) { return bars + 8u * (uint32_t)(2 * kRnS + 2 * w + slot); };
  const uint32_t sums = bars + kRnBars;  // float [wg][slot][block c][64 rows]
  auto sum_at = [&](int w, int slot, int c, int row) {
    return sums + 4u * (uint32_t)(((w * 2 + slot) * 4 + c) * 64 + row);
  };
  const uint32_t w_full = sums + kRnSums;  // one more barrier: the W slab landed
  const uint32_t me = cluster_rank();
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t MB = (p.m + 63) / 64;  // 64-row blocks
  const uint32_t cid = cluster_id(), ncl = cluster_count();
  const int64_t my_blocks = (int64_t)cid < MB ? (MB - 1 - cid) / ncl + 1 : 0;

  if (tid == 0) {
    for (int s = 0; s < kRnS; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), CL);
    }
    for (int w = 0; w < 2; ++w)  // the local arrival (with the bytes of CL x 64 sums) + the bytes
      for (int slot = 0; slot < 2; ++slot) mbar_init(sum_bar(w, slot), 1);
    mbar_init(w_full, 1);
    mbar_init_fence();
  }
  cluster_sync();  // every block's barriers exist before anyone arrives on them remotely

  if (wg == 2) {
    if (tid == 256) {  // the producer
      // this block's W slab: tiles (me, kt) of the B images, contiguous
      mbar_expect_tx(w_full, (uint32_t)(KT * kRnWTile));
      const auto* wimg = static_cast<const unsigned char*>(p.b) + (int64_t)me * KT * kRnWTile;
      for (int kt = 0; kt < KT; ++kt)
        bulk_copy(w_base + (uint32_t)(kt * kRnWTile), wimg + (int64_t)kt * kRnWTile, kRnWTile,
                  w_full);
      const int64_t stages = my_blocks * SB;
      // Block i's rows into L2 ahead of use (kRnAhead blocks): the a tiles this block will issue
      // and its slab of x, so that the ring's loads and the consumers' x reads hit L2.
      auto prefetch = [&](int64_t i) {
        if (i >= my_blocks) return;
        const int64_t blk = cid + i * ncl;
        for (int q = 0; q < SB; ++q)
          if ((uint32_t)((i * SB + q) % CL) == me) {
            tma_prefetch(&args.amap, 128 * q, (int)(blk * 64));
            tma_prefetch(&args.amap, 128 * q + 64, (int)(blk * 64));
          }
        const int64_t r1 = std::min<int64_t>(p.m, blk * 64 + 64);
        for (int64_t r = blk * 64; r < r1; ++r) bulk_prefetch(p.x + r * p.n + 128 * me, 512);
      };
      for (int64_t i = 0; i < kRnAhead; ++i) prefetch(i);
      for (int64_t j = 0; j < stages; ++j) {
        const int s = (int)(j % kRnS);
        if (j % SB == 0) prefetch(j / SB + kRnAhead);
        if (j >= kRnS) mbar_wait(empty(s), (uint32_t)((j / kRnS - 1) & 1));
        mbar_expect_tx(full(s), kRnStage);
        if ((uint32_t)(j % CL) == me) {
          const int64_t blk = cid + (j / SB) * ncl;
          const int q = (int)(j % SB);
          const uint32_t dst = a_base + (uint32_t)(s * kRnStage);
          const uint16_t mask = (uint16_t)((1u << CL) - 1);
          tma_multicast(dst, &args.amap, 128 * q, (int)(blk * 64), full(s), mask);
          tma_multicast(dst + 8192, &args.amap, 128 * q + 64, (int)(blk * 64), full(s), mask);
        }
      }
    }
  } else {
    // Consumer warpgroup wg: the cluster's blocks i = wg, wg + 2, ... Thread (warp, lane) holds
    // rows ra = 16 warp + lane / 4 and rb = ra + 8 of the block, columns 128 me + 8 j + 2 t.
    const int t = lane % 4, rl = warp * 16 + lane / 4;
    mbar_wait(w_full, 0);
    // stage s read: released in every block of the cluster (one arrival each)
    auto release = [&](int s) {
      if (tid % 128 == 0)
        for (uint32_t c = 0; c < (uint32_t)CL; ++c) arrive_remote(map_to(empty(s), c));
    };
    float acc[64];
    float2 xa[16], xb[16];
    for (int64_t i = wg; i < my_blocks; i += 2) {
      const int64_t blk = cid + i * ncl;
      const int64_t ra = blk * 64 + rl, rb = ra + 8;
      const bool va = ra < p.m, vb = rb < p.m;
      float* xra = p.x + (va ? ra : 0) * p.n + 128 * me + 2 * t;
      float* xrb = p.x + (vb ? rb : 0) * p.n + 128 * me + 2 * t;
#pragma unroll
      for (int j = 0; j < 16; ++j) {  // in flight while the MMAs run
        xa[j] = va ? *reinterpret_cast<const float2*>(xra + 8 * j) : make_float2(0, 0);
        xb[j] = vb ? *reinterpret_cast<const float2*>(xrb + 8 * j) : make_float2(0, 0);
      }
      for (int q = 0; q < SB; ++q) {
        const int64_t j = i * SB + q;
        const int s = (int)(j % kRnS);
        mbar_wait(full(s), (uint32_t)((j / kRnS) & 1));
        wg_fence();
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const uint64_t da = desc128(a_base + (uint32_t)(s * kRnStage + u * 8192));
          const uint64_t db = desc128(w_base + (uint32_t)((2 * q + u) * kRnWTile));
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
            wgmma_ss_n128(acc, da + 2 * kk, db + 2 * kk, q > 0 || u > 0 || kk > 0);
        }
        wg_commit();
        if (q > 0) {  // the previous stage's MMAs done (this one's still running): release it
          wg_wait<1>();
          release((int)((j - 1) % kRnS));
        }
      }
      wg_wait<0>();
      reg_fence(acc);
      release((int)((i * SB + SB - 1) % kRnS));
      // v = x + a W (one float add, as cuBLASLt's beta = 1); this thread's part of the sums
      float sa = 0.0f, sb = 0.0f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        xa[j] = make_float2(__fadd_rn(acc[4 * j], xa[j].x), __fadd_rn(acc[4 * j + 1], xa[j].y));
        xb[j] = make_float2(__fadd_rn(acc[4 * j + 2], xb[j].x), __fadd_rn(acc[4 * j + 3], xb[j].y));
        sa = __fmaf_rn(xa[j].x, xa[j].x, sa);
        sa = __fmaf_rn(xa[j].y, xa[j].y, sa);
        sb = __fmaf_rn(xb[j].x, xb[j].x, sb);
        sb = __fmaf_rn(xb[j].y, xb[j].y, sb);
      }
      sa = __fadd_rn(sa, __shfl_xor_sync(0xffffffffu, sa, 1));
      sa = __fadd_rn(sa, __shfl_xor_sync(0xffffffffu, sa, 2));
      sb = __fadd_rn(sb, __shfl_xor_sync(0xffffffffu, sb, 1));
      sb = __fadd_rn(sb, __shfl_xor_sync(0xffffffffu, sb, 2));
      // the block's part of each row's sum to every block of the cluster, then the whole sums
      const int slot = (int)((i / 2) & 1);
      if (tid % 128 == 0) mbar_expect_tx(sum_bar(wg, slot), (uint32_t)(CL * 64 * 4));
      if (t == 0) {
        for (uint32_t c = 0; c < (uint32_t)CL; ++c) {
          const uint32_t bar = map_to(sum_bar(wg, slot), c);
          store_remote_tx(map_to(sum_at(wg, slot, (int)me, rl), c), sa, bar);
          store_remote_tx(map_to(sum_at(wg, slot, (int)me, rl + 8), c), sb, bar);
        }
      }
#pragma unroll
      for (int j = 0; j < 16; ++j) {  // x's new values while the sums travel
        if (va) *reinterpret_cast<float2*>(xra + 8 * j) = xa[j];
        if (vb) *reinterpret_cast<float2*>(xrb + 8 * j) = xb[j];
      }
      mbar_wait(sum_bar(wg, slot), (uint32_t)((i / 4) & 1));
      const float* sp = reinterpret_cast<const float*>(gbase + (sum_at(wg, slot, 0, 0) - base));
      float ta = sp[rl], tb = sp[rl + 8];
#pragma unroll
      for (int c = 1; c < CL; ++c) {
        ta = __fadd_rn(ta, sp[c * 64 + rl]);
        tb = __fadd_rn(tb, sp[c * 64 + rl + 8]);
      }
      const float inva = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(ta, (float)p.n), p.eps)));
      const float invb = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(tb, (float)p.n), p.eps)));
      auto* h = static_cast<__nv_bfloat16*>(p.h);
      __nv_bfloat16* hra = h + (va ? ra : 0) * p.n + 128 * me + 2 * t;
      __nv_bfloat16* hrb = h + (vb ? rb : 0) * p.n + 128 * me + 2 * t;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float2 g = *reinterpret_cast<const float2*>(p.gain + 128 * me + 8 * j + 2 * t);
        if (va)
          *reinterpret_cast<__nv_bfloat162*>(hra + 8 * j) = __floats2bfloat162_rn(
              __fmul_rn(__fmul_rn(xa[j].x, inva), g.x), __fmul_rn(__fmul_rn(xa[j].y, inva), g.y));
        if (vb)
          *reinterpret_cast<__nv_bfloat162*>(hrb + 8 * j) = __floats2bfloat162_rn(
              __fmul_rn(__fmul_rn(xb[j].x, invb), g.x), __fmul_rn(__fmul_rn(xb[j].y, invb), g.y));
      }
    }
  }
  __syncwarp();
  cluster_sync();  // no block leaves while another may still write into its shared memory
#else
  __trap();  // compiled only for sm_90a; the launcher checks wgmma_available() first
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    SPARSA_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                       cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || !f)
      throw SystemError("gemm_residual_norm: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

template <int CL>
void run_rn(const RnArgs& a, int64_t blocks, cudaStream_t stream) {
  // NOTE: taken once per CL, for the device of the first call (one device a process).
  // The clusters that fit the GPU at once (a GPC holds whole clusters only, so fewer than
  // SMs / CL): the kernel is persistent, and a cluster beyond them would run after the others.
  static const int clusters = [] {
    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(gemm_residual_norm_kernel<CL>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, kRnSmem));
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(CL, 1, 1);
    cfg.blockDim = dim3(kRnThreads, 1, 1);
    cfg.dynamicSmemBytes = kRnSmem;
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = CL;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int n = 0;
    SPARSA_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, gemm_residual_norm_kernel<CL>, &cfg));
    if (n < 1) throw SystemError("gemm_residual_norm: no cluster of the kernel fits the GPU");
    if (const char* e = std::getenv("SPARSA_PROFILE"); e && *e == '1')
      std::fprintf(stderr, "# gemm_residual_norm: %d clusters of %d blocks at once\n", n, CL);
    return n;
  }();
  const int64_t grid = std::min<int64_t>(blocks, clusters) * CL;
  gemm_residual_norm_kernel<CL><<<(unsigned)grid, kRnThreads, kRnSmem, stream>>>(a);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace

bool gemm_residual_norm_supported(int64_t n, int64_t k) {
  return k > 0 && k <= kRnMaxK && k % 128 == 0 && (n == 128 || n == 256 || n == 512) &&
         wgmma_available();
}

void launch_gemm_residual_norm(const GemmResidualNormParams& p, cudaStream_t stream) {
  if (p.m <= 0) return;
  if (!gemm_residual_norm_supported(p.n, p.k))
    throw SystemError(
        "gemm_residual_norm: needs an sm_90a device, K % 128 == 0, K <= 512 and N = 128, 256 "
        "or 512");
  if ((uintptr_t)p.a % 16 || (uintptr_t)p.b % 16 || (uintptr_t)p.x % 8 || (uintptr_t)p.h % 4 ||
      (uintptr_t)p.gain % 8)
    throw SystemError(
        "gemm_residual_norm: a and the images must be 16-byte aligned, x and g 8, h 4");
  if (p.m > 0x7fffffffLL - 64) throw SystemError("gemm_residual_norm: too many rows");
  RnArgs a{};
  a.p = p;
  const cuuint64_t dims[2] = {(cuuint64_t)p.k, (cuuint64_t)p.m};
  const cuuint64_t strides[1] = {(cuuint64_t)(p.k * 2)};
  const cuuint32_t box[2] = {64, 64}, estr[2] = {1, 1};
  const CUresult r =
      encode_fn()(&a.amap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(p.a), dims,
                  strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw SystemError("gemm_residual_norm: cuTensorMapEncodeTiled failed (" + std::to_string(r) +
                      ")");
  const int64_t blocks = (p.m + 63) / 64;
  switch (p.n / 128) {
    case 1:
      return run_rn<1>(a, blocks, stream);
    case 2:
      return run_rn<2>(a, blocks, stream);
    default:
      return run_rn<4>(a, blocks, stream);
  }
}

}  // namespace sparsa::kern
