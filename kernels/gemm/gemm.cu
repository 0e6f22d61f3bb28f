// The image GEMM (gemm.hpp) on Hopper warpgroup MMAs, shaped by L2 bandwidth. With K <= 512 a
// block keeps a whole 128-row block of x in shared memory (A images, 128 KB at K = 512) and
// streams W through a ring of 16 KB B images (128 columns x 64 k): the bytes moved from L2 are
// x once plus W once per 128 rows, ~18 GB for the MLP up projection of 1M tokens, against ~34 GB
// for 128 x 128 tiles streaming both operands (which ran at the L2's ~5.5 TB/s: 6.1 ms, 361
// TFLOP/s, against cuBLASLt's 3.2 ms).
//
// Roles (288 threads, one block an SM, persistent over row blocks): warp 8 is the producer; one
// of its threads loads each row block's A images once both consumers have released the last one
// ("a_full"/"a_empty" mbarriers) and keeps the B ring full ("b_full"/"b_empty", one a stage).
// Warpgroups 0 and 1 are the consumers: they take the block's 128 x 128 output tiles in turn
// (tile q, counted over row blocks and column tiles, is warpgroup q % 2's) (two m64n128
// accumulators, 128 registers), k tiles of 64 as four k steps of 16 (descriptors advanced 32 bytes
// a step). Because the ring is filled in tile order and a warpgroup starts a tile's MMAs only after
// the other has issued the previous tile's, one warpgroup's MMAs run while the other does its
// epilogue (rounding, GELU, stores): the ping-pong of CUTLASS's Hopper kernels.
#include "kernels/common/common.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/gemm/gemm.hpp"

namespace sparsa::kern {

namespace {

constexpr int kStages = 5;
constexpr int kMaxK = 512;
constexpr int kATile = 64 * 128;                                // bytes: 64 rows x 64 k
constexpr int kBTile = 128 * 128;                               // bytes: 128 columns x 64 k
constexpr int kABytes = 2 * (kMaxK / 64) * kATile;              // 128 rows x K (K = 512: 128 KB)
constexpr int kSmem = kABytes + kStages * kBTile + 1024 + 128;  // + alignment, barriers
constexpr int kThreads = 288;

#ifdef SPARSA_WGMMA
// y row `row`, columns col .. col + 1 from two accumulators: rounded to bf16, then GELU'd (by
// the table of every bf16 input when given, else gelu_f: the same bits).
__device__ __forceinline__ void store_pair(const GemmImagesParams& p, __nv_bfloat16* yr, float a,
                                           float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  if (p.gelu) {
    if (p.gelu_table) {
      const uint32_t bits = *reinterpret_cast<const uint32_t*>(&v);
      const uint32_t lo = __ldg(p.gelu_table + (bits & 0xffffu));
      const uint32_t hi = __ldg(p.gelu_table + (bits >> 16));
      const uint32_t o = lo | (hi << 16);
      v = *reinterpret_cast<const __nv_bfloat162*>(&o);
    } else {
      const float2 f = __bfloat1622float2(v);
      v = __floats2bfloat162_rn(gelu_f(f.x), gelu_f(f.y));
    }
  }
  *reinterpret_cast<__nv_bfloat162*>(yr) = v;
}
#endif

__global__ void __launch_bounds__(kThreads, 1)
    gemm_images_kernel(const __grid_constant__ GemmImagesParams p) {
#ifdef SPARSA_WGMMA
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const int64_t KT = p.k / 64, NT = p.n / 128, MT = (p.m + 127) / 128;
  const uint32_t a_bytes = (uint32_t)(2 * KT * kATile);
  const uint32_t a_base = base, b_base = base + a_bytes;
  auto b_stage = [&](int64_t s) { return b_base + (uint32_t)s * kBTile; };
  const uint32_t bars = b_base + kStages * kBTile;
  const uint32_t a_full = bars, a_empty = bars + 8;
  auto turn = [&](int w) { return bars + 16u + 8u * (uint32_t)w; };
  auto b_full = [&](int64_t s) { return bars + 32u + 8u * (uint32_t)s; };
  auto b_empty = [&](int64_t s) { return bars + 32u + 8u * (uint32_t)(kStages + s); };
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t my_blocks = (int64_t)blockIdx.x < MT ? (MT - 1 - blockIdx.x) / gridDim.x + 1 : 0;

  if (tid == 0) {
    mbar_init(a_full, 1);
    mbar_init(a_empty, 2);
    mbar_init(turn(0), 1);
    mbar_init(turn(1), 1);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(b_full(s), 1);
      mbar_init(b_empty(s), 1);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 2) {  // the producer warp
    if (lane != 0) return;
    const auto* a_img = static_cast<const unsigned char*>(p.a);
    const auto* b_img = static_cast<const unsigned char*>(p.b);
    int64_t it = 0;  // B ring iterations
    for (int64_t mi = 0; mi < my_blocks; ++mi) {
      const int64_t mb = blockIdx.x + mi * gridDim.x;
      if (mi > 0) mbar_wait(a_empty, (uint32_t)((mi - 1) & 1));
      mbar_expect_tx(a_full, a_bytes);
      for (uint32_t off = 0; off < a_bytes; off += 4 * kATile)  // 32 KB a copy
        bulk_copy(a_base + off, a_img + 2 * mb * KT * kATile + off, min(4u * kATile, a_bytes - off),
                  a_full);
      for (int64_t nt = 0; nt < NT; ++nt)
        for (int64_t kt = 0; kt < KT; ++kt, ++it) {
          const int64_t s = it % kStages;
          if (it >= kStages) mbar_wait(b_empty(s), (uint32_t)((it / kStages - 1) & 1));
          mbar_expect_tx(b_full(s), kBTile);
          bulk_copy(b_stage(s), b_img + (nt * KT + kt) * kBTile, kBTile, b_full(s));
        }
    }
    return;
  }

  // Tile q of this block (q = mi NT + nt) is warpgroup q % 2's. Before its k loop, a warpgroup
  // waits until the other has issued the MMAs of tile q - 1 ("turn"): so the two take the tensor
  // cores in turn, and no warpgroup waits on a ring stage two phases ahead (mbarrier parity
  // tells only one phase from the next).
  auto* y = static_cast<__nv_bfloat16*>(p.y);
  float acc0[64], acc1[64];  // rows 0..63 and 64..127 of the tile
  for (int64_t mi = 0; mi < my_blocks; ++mi) {
    const int64_t mb = blockIdx.x + mi * gridDim.x;
    mbar_wait(a_full, (uint32_t)(mi & 1));
    bool released = false;  // this warpgroup's arrival on a_empty for this row block
    for (int64_t nt = 0; nt < NT; ++nt) {
      const int64_t q = mi * NT + nt;
      if (q % 2 != wg) continue;
      if (q > 0) mbar_wait(turn(1 - wg), (uint32_t)(((q - 1) / 2) & 1));
      int64_t it = q * KT;
      for (int64_t kt = 0; kt < KT; ++kt, ++it) {
        const int64_t s = it % kStages;
        mbar_wait(b_full(s), (uint32_t)((it / kStages) & 1));
        const uint64_t da0 = desc128(a_base + (uint32_t)(kt * kATile));
        const uint64_t da1 = desc128(a_base + (uint32_t)((KT + kt) * kATile));
        const uint64_t db = desc128(b_stage(s));
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          wgmma_ss_n128(acc0, da0 + 2 * kk, db + 2 * kk, kt > 0 || kk > 0);
          wgmma_ss_n128(acc1, da1 + 2 * kk, db + 2 * kk, kt > 0 || kk > 0);
        }
        wg_commit();
        if (kt == KT - 1 && tid % 128 == 0) mbar_arrive(turn(wg));
        if (kt > 0) {
          wg_wait<1>();
          if (tid % 128 == 0) mbar_arrive(b_empty((it - 1) % kStages));
        }
      }
      wg_wait<0>();
      reg_fence(acc0);
      reg_fence(acc1);
      if (tid % 128 == 0) mbar_arrive(b_empty((it - 1) % kStages));
      if (nt + 2 >= NT) {  // this warpgroup's last tile of the row block: its A is free
        if (tid % 128 == 0) mbar_arrive(a_empty);
        released = true;
      }

      // Epilogue: thread (warp, lane) holds rows r and r + 8 (r = 16 warp + lane / 4) of each
      // 64-row half, columns 8 j + 2 (lane % 4) + {0, 1}, j < 16.
      const int64_t r0 = mb * 128 + warp * 16 + lane / 4;
      __nv_bfloat16* yc = y + nt * 128 + 2 * (lane % 4);
#pragma unroll
      for (int h = 0; h < 4; ++h) {  // (half, +8)
        const int64_t row = r0 + 64 * (h / 2) + 8 * (h % 2);
        if (row >= p.m) continue;
        __nv_bfloat16* yr = yc + row * p.n;
        const float* acc = h / 2 ? acc1 : acc0;
#pragma unroll
        for (int j = 0; j < 16; ++j)
          store_pair(p, yr + 8 * j, acc[4 * j + 2 * (h % 2)], acc[4 * j + 2 * (h % 2) + 1]);
      }
    }
    if (!released && tid % 128 == 0) mbar_arrive(a_empty);  // no tile in this row block
  }
#else
  __trap();  // compiled only for sm_90a; the launcher checks wgmma_available() first
#endif
}

}  // namespace

bool gemm_images_supported(int64_t n, int64_t k) {
  return k > 0 && k <= kMaxK && n > 0 && k % 64 == 0 && n % 128 == 0 && wgmma_available();
}

std::vector<uint16_t> pack_gemm_b(const uint16_t* w, int64_t k, int64_t n) {
  if (k % 64 != 0 || n % 128 != 0)
    throw SystemError("pack_gemm_b: K must be a multiple of 64 and N of 128");
  std::vector<uint16_t> img((size_t)(k * n));
  for (int64_t e = 0; e < k; ++e)
    for (int64_t c = 0; c < n; ++c) img[(size_t)(gemm_b_offset(e, c, k) / 2)] = w[e * n + c];
  return img;
}

void launch_gemm_images(const GemmImagesParams& p, cudaStream_t stream) {
  if (p.m <= 0) return;
  if (!gemm_images_supported(p.n, p.k))
    throw SystemError(
        "gemm_images: needs an sm_90a device, K % 64 == 0, K <= 512 and N % 128 == 0");
  if ((uintptr_t)p.a % 16 || (uintptr_t)p.b % 16 || (uintptr_t)p.y % 4)
    throw SystemError("gemm_images: the images must be 16-byte aligned and y 4-byte aligned");
  // NOTE: the SM count and the shared-memory attribute are taken once, for the device of the
  // first call: one device a process (one rank a GPU), as the attention launchers assume.
  static const int sms = [] {
    int dev = 0, v = 0;
    SPARSA_CUDA_CHECK(cudaGetDevice(&dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(gemm_images_kernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    return v;
  }();
  const int64_t blocks = (p.m + 127) / 128;
  const unsigned grid = (unsigned)std::min<int64_t>(blocks, sms);
  gemm_images_kernel<<<grid, kThreads, kSmem, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
