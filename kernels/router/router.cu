#include <algorithm>
#include <cmath>

#include "kernels/common/common.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/router/router.hpp"

namespace sparsa::kern {

// One warp per row; lanes take hidden units j = lane, lane + 32, ...; the double partial sums are
// combined by a fixed butterfly, so a row's score depends only on the row.
__global__ void router_kernel(RouterParams p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.n_tokens) return;
  const float* hid = p.hid + row * p.hidden * (p.split ? 2 : 1);
  double s = 0.0;
  for (int64_t j = lane; j < p.hidden; j += 32) {
    const float z = p.split ? hid[j] + hid[p.hidden + j] : hid[j];
    s += (double)gelu_exact((float)((double)z + (double)p.b1[j])) * (double)p.w2[j];
  }
  s = warp_sum(s);
  if (lane == 0) p.scores[row] = (float)(s + (double)p.b2);
}

void launch_router(const RouterParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  router_kernel<<<grid_for(p.n_tokens, 8), 256, 0, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
}

// ---- The fused router (router.hpp: RouterFusedParams) ----
// A block: 8 warps, persistent, one chunk of HC = 8 NT hidden units. Warp w owns the k columns
// [16 KS w, 16 KS (w + 1)) of W1's chunk in registers (hi and lo: 4 KS NT words) and, for each
// tile of 32 rows, multiplies its slice of the rows' y = x g (split hi | lo) by it (2 m tiles
// of 16 rows), adding up the slice's squares of x on the way. RMSNorm's 1 / sqrt(mean(x^2) +
// eps) is a factor of the row, so it is applied after the sum: z = inv (y W1). The eight
// partial z of a (row, unit) and the eight partial sums of squares meet in shared memory and
// are added in warp order; then 8 threads a row add GELU(z + b1) w2 over the chunk's units in a
// fixed order. Tiles come in by cp.async, two buffers: tile i + 2 is loaded while tile i + 1
// waits. Two block barriers a tile.
namespace {
constexpr int kRfRows = 32, kRfThreads = 256;
// Squares are taken of x 2^-32 (exact), so float holds them for |x| up to 2^96; then
// inv = 2^-32 / sqrt(sum / d + eps 2^-64). A larger x makes the sum infinite: inv is then NaN, so
// the score is, and the job stops on a non-finite router score (RMSNorm in double would not
// overflow there, but such a residual stream is broken anyway).
constexpr float kRfScale = 0x1p-32f;
__device__ __forceinline__ float rf_inv(float ss, float eps_scaled, int d) {
  return isinf(ss) ? __int_as_float(0x7fc00000) : kRfScale / sqrtf(ss / (float)d + eps_scaled);
}

template <int KS, int NT, int NB = 2>  // NB x buffers: 2, or 1 where 2 do not fit (an A100)
struct RfShape {
  static constexpr int D = 128 * KS, XS = D + 8, HC = 8 * NT, RS = HC + 8;
  // floats: x tiles [2][32][XS] (8 floats of padding a row: the fragment reads are conflict
  // free), partial z [8][32][RS], partial sums of squares [8][32], gain [D], b1 and w2 of the
  // chunk [HC] each
  static constexpr int kFloats = NB * kRfRows * XS + 8 * kRfRows * RS + 8 * kRfRows + D + 2 * HC;
  static constexpr int kBytes = kFloats * 4;
};

__device__ __forceinline__ void split_pair(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  const float2 f = __bfloat1622float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = pack_bf16(a - f.x, b - f.y);  // a - hi is exact in float
}

template <int KS, int NT, int NB>
__global__ void __launch_bounds__(kRfThreads, 1) router_fused_kernel(RouterFusedParams p) {
  using S = RfShape<KS, NT, NB>;
  constexpr int D = S::D, XS = S::XS, HC = S::HC, RS = S::RS;
  extern __shared__ __align__(16) float rf_smem[];
  float* xs = rf_smem;
  float* red = xs + NB * kRfRows * XS;
  float* ssr = red + 8 * kRfRows * RS;
  float* gs = ssr + 8 * kRfRows;
  float* b1s = gs + D;
  float* w2s = b1s + HC;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int nch = (int)(p.r / HC), chunk = (int)(blockIdx.x % nch);
  const int64_t first = blockIdx.x / nch, stride = gridDim.x / nch, n = p.n_tokens;
  const int64_t ntiles = (n + kRfRows - 1) / kRfRows;

  uint32_t bw[KS][NT][2][2];
  {
    const uint2* f =
        reinterpret_cast<const uint2*>(p.frags) + (int64_t)(chunk * 8 + warp) * KS * NT * 64 + lane;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int hl = 0; hl < 2; ++hl) {
          const uint2 v = f[((ks * NT + nt) * 2 + hl) * 32];
          bw[ks][nt][hl][0] = v.x;
          bw[ks][nt][hl][1] = v.y;
        }
  }
  for (int i = threadIdx.x; i < D; i += kRfThreads) gs[i] = p.gain[i];
  for (int i = threadIdx.x; i < HC; i += kRfThreads) {
    b1s[i] = p.b1[chunk * HC + i];
    w2s[i] = p.w2[chunk * HC + i];
  }
  auto load = [&](int64_t tile, int buf) {
    if (tile < ntiles) {
      const int64_t r0 = tile * kRfRows;
      const int rows = n - r0 < kRfRows ? (int)(n - r0) : kRfRows;
#pragma unroll 1
      for (int i = threadIdx.x; i < kRfRows * D / 4; i += kRfThreads) {
        const int row = i / (D / 4), c = i % (D / 4);
        const bool valid = row < rows;
        cp_async16(smem_u32(xs + (buf * kRfRows + row) * XS + 4 * c),
                   p.x + (valid ? (r0 + row) * D + 4 * c : 0), valid);
      }
    }
    cp_async_commit();  // empty groups too: the wait below counts groups
  };
#pragma unroll
  for (int b = 0; b < NB; ++b) load(first + b * stride, b);

  int it = 0;
  for (int64_t tile = first; tile < ntiles; tile += stride, ++it) {
    const int buf = it % NB;
    const float* xb = xs + buf * kRfRows * XS;
    cp_async_wait<NB - 1>();
    __syncthreads();  // the tile is in; the previous tile's partials are read

    float acc[2][NT][4], sq[2][2];
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      sq[m][0] = sq[m][1] = 0.0f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][nt][e] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int col = warp * 16 * KS + 16 * ks + 2 * t;
      const float2 ga = *reinterpret_cast<const float2*>(gs + col);
      const float2 gb = *reinterpret_cast<const float2*>(gs + col + 8);
      uint32_t ah[2][4], al[2][4];
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int row = 16 * m + g + 8 * hf;
          const float2 xa = *reinterpret_cast<const float2*>(xb + row * XS + col);
          const float2 xc = *reinterpret_cast<const float2*>(xb + row * XS + col + 8);
          float q = sq[m][hf];
          q = fmaf(xa.x * kRfScale, xa.x * kRfScale, q);
          q = fmaf(xa.y * kRfScale, xa.y * kRfScale, q);
          q = fmaf(xc.x * kRfScale, xc.x * kRfScale, q);
          sq[m][hf] = fmaf(xc.y * kRfScale, xc.y * kRfScale, q);
          split_pair(xa.x * ga.x, xa.y * ga.y, ah[m][hf], al[m][hf]);
          split_pair(xc.x * gb.x, xc.y * gb.y, ah[m][2 + hf], al[m][2 + hf]);
        }
        // hi Whi, then hi Wlo, then lo Whi: 2 NT independent accumulators between two MMAs on
        // the same one (the asm statements keep their order; back to back they would wait on
        // each other's latency)
#pragma unroll
      for (int pr = 0; pr < 3; ++pr)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int m = 0; m < 2; ++m)
            mma_bf16(acc[m][nt], pr == 2 ? al[m] : ah[m], bw[ks][nt][pr == 1][0],
                     bw[ks][nt][pr == 1][1]);
    }
    float* rw = red + warp * kRfRows * RS;
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {  // the quad's four partial sums of squares, fixed order
        float q = sq[m][hf];
        q += __shfl_xor_sync(0xffffffffu, q, 1);
        q += __shfl_xor_sync(0xffffffffu, q, 2);
        if (t == 0) ssr[warp * kRfRows + 16 * m + g + 8 * hf] = q;
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int row = 16 * m + g, col = 8 * nt + 2 * t;
        *reinterpret_cast<float2*>(rw + row * RS + col) = make_float2(acc[m][nt][0], acc[m][nt][1]);
        *reinterpret_cast<float2*>(rw + (row + 8) * RS + col) =
            make_float2(acc[m][nt][2], acc[m][nt][3]);
      }
    }
    __syncthreads();  // partials complete; this buffer's rows are no longer read
    load(tile + NB * stride, buf);

    // 8 threads a row, each NT units in groups of 4: h = 4 l8 + 32 j + e. All in float (the
    // scaled sum of squares, inv, the terms and the thread's sum of its terms); the 8 threads'
    // sums added in double.
    const int row = threadIdx.x / 8, l8 = threadIdx.x % 8;
    float ss = ssr[row];
#pragma unroll
    for (int w = 1; w < 8; ++w) ss += ssr[w * kRfRows + row];
    const float inv = rf_inv(ss, p.eps_scaled, D);
    float sf = 0.0f;
#pragma unroll
    for (int j = 0; j < NT / 4; ++j) {
      const int h = 4 * l8 + 32 * j;
      float4 z = *reinterpret_cast<const float4*>(red + row * RS + h);
#pragma unroll
      for (int w = 1; w < 8; ++w) {
        const float4 v = *reinterpret_cast<const float4*>(red + (w * kRfRows + row) * RS + h);
        z.x += v.x;
        z.y += v.y;
        z.z += v.z;
        z.w += v.w;
      }
      sf += gelu_f(z.x * inv + b1s[h]) * w2s[h];
      sf += gelu_f(z.y * inv + b1s[h + 1]) * w2s[h + 1];
      sf += gelu_f(z.z * inv + b1s[h + 2]) * w2s[h + 2];
      sf += gelu_f(z.w * inv + b1s[h + 3]) * w2s[h + 3];
    }
    double s = sf;
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int64_t i = tile * kRfRows + row;
    if (l8 == 0 && i < n) {
      if (nch == 1)
        p.scores[i] = (float)(s + (double)p.b2);
      else
        p.partial[chunk * n + i] = s;
    }
  }
  cp_async_wait<0>();
}

__global__ void router_combine_kernel(RouterFusedParams p, int nch) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n_tokens) return;
  double s = p.partial[i];
  for (int c = 1; c < nch; ++c) s += p.partial[c * p.n_tokens + i];
  p.scores[i] = (float)(s + (double)p.b2);
}
// Both kernels: with several chunks of hidden units, their partial sums into the scores.
void combine_chunks(const RouterFusedParams& p, int64_t nch, cudaStream_t stream) {
  if (nch <= 1) return;  // the kernel wrote the scores itself
  router_combine_kernel<<<grid_for(p.n_tokens, 256), 256, 0, stream>>>(p, (int)nch);
  SPARSA_LAUNCH_CHECK();
}

// ---- The fused router on wgmma (sm_90a) ----
// The same arithmetic per row (y = x g split, hi Whi + hi Wlo + lo Whi, inv after the sum), with
// W1's chunk as K-major B images in shared memory (pack_router_images) and asynchronous warpgroup
// MMAs: a block is 3 warpgroups sharing the chunk; each takes its own tiles of 64 rows, loads its
// A fragments of x from global memory one k block (64 columns) ahead, and builds a k step's
// hi | lo fragments while the previous step's three MMAs run. The score is summed per row
// within the quad that holds it; no block barrier after the start.
constexpr int kRwWgs = 3, kRwThreads = 128 * kRwWgs;

template <int KB, int HC>
struct RwShape {
  static constexpr int D = 64 * KB;
  static constexpr int kImage = HC * 64 * 2;  // bytes of one (hi or lo, k block) image
  static constexpr int kBytes = 1024 + 2 * KB * kImage + (D + 2 * HC) * 4;
};

#ifdef SPARSA_WGMMA
template <int N>
__device__ __forceinline__ void reg_use(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
template <int HC>
__device__ __forceinline__ void wgmma_rs_hc(float (&d)[HC / 2], const uint32_t (&a)[4],
                                            uint64_t db) {
  if constexpr (HC == 64)
    wgmma_rs_n64(d, a, db);
  else
    wgmma_rs_n32(d, a, db);
}
#endif

template <int KB, int HC>
__global__ void __launch_bounds__(kRwThreads, 1) router_wgmma_kernel(RouterFusedParams p) {
#ifdef SPARSA_WGMMA
  using S = RwShape<KB, HC>;
  constexpr int D = S::D;
  extern __shared__ unsigned char rw_raw[];
  // the images 1024-byte aligned (the 128-byte swizzle's 8-row groups): kBytes has the slack
  unsigned char* rw_smem = rw_raw + ((1024u - (smem_u32(rw_raw) & 1023u)) & 1023u);
  float* gs = reinterpret_cast<float*>(rw_smem + 2 * KB * S::kImage);
  float* b1s = gs + D;
  float* w2s = b1s + HC;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int nch = (int)(p.r / HC), chunk = (int)(blockIdx.x % nch);
  const int64_t n = p.n_tokens, ntiles = (n + 63) / 64;
  const int64_t first = (int64_t)(blockIdx.x / nch) * kRwWgs + wg;
  const int64_t stride = (int64_t)(gridDim.x / nch) * kRwWgs;
  {
    const uint4* src =
        reinterpret_cast<const uint4*>(p.images) + (int64_t)chunk * 2 * KB * S::kImage / 16;
    uint4* dst = reinterpret_cast<uint4*>(rw_smem);
    for (int i = threadIdx.x; i < 2 * KB * S::kImage / 16; i += kRwThreads) dst[i] = src[i];
    for (int i = threadIdx.x; i < D; i += kRwThreads) gs[i] = p.gain[i];
    for (int i = threadIdx.x; i < HC; i += kRwThreads) {
      b1s[i] = p.b1[chunk * HC + i];
      w2s[i] = p.w2[chunk * HC + i];
    }
    proxy_fence();  // the images, written by this thread, are read by the wgmmas (async proxy)
    __syncthreads();
  }
  const uint32_t img = smem_u32(rw_smem);

  // This thread's x of a k block: [k step][row a k 2t, row b k 2t, row a k 2t + 8, row b ...]
  auto load_block = [&](int64_t tile, int kb, float2(&xv)[4][4]) {
    const int64_t ra = tile * 64 + warp * 16 + g, rb = ra + 8;
    const bool va = ra < n, vb = rb < n;
    const float2* pa = reinterpret_cast<const float2*>(p.x + (va ? ra : 0) * D + kb * 64 + 2 * t);
    const float2* pb = reinterpret_cast<const float2*>(p.x + (vb ? rb : 0) * D + kb * 64 + 2 * t);
    const float2 z = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      xv[s][0] = va ? __ldg(pa + 8 * s) : z;
      xv[s][1] = vb ? __ldg(pb + 8 * s) : z;
      xv[s][2] = va ? __ldg(pa + 8 * s + 4) : z;
      xv[s][3] = vb ? __ldg(pb + 8 * s + 4) : z;
    }
  };

  float2 xc[4][4], xn[4][4];
  if (first < ntiles) load_block(first, 0, xc);
  for (int64_t tile = first; tile < ntiles; tile += stride) {
    float acc[HC / 2];
#pragma unroll
    for (int i = 0; i < HC / 2; ++i) acc[i] = 0.0f;
    float sqa = 0.0f, sqb = 0.0f;
    uint32_t A[2][2][4];  // [buffer][hi, lo][fragment register]
#pragma unroll 1
    for (int kb = 0; kb < KB; ++kb) {
      if (kb + 1 < KB)
        load_block(tile, kb + 1, xn);
      else if (tile + stride < ntiles)
        load_block(tile + stride, 0, xn);
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const int buf = s & 1;  // 4 steps a block: the buffer alternates across blocks too
        const int col = kb * 64 + 16 * s + 2 * t;
        const float2 ga = *reinterpret_cast<const float2*>(gs + col);
        const float2 gb = *reinterpret_cast<const float2*>(gs + col + 8);
        const float2 a0 = xc[s][0], b0 = xc[s][1], a1 = xc[s][2], b1 = xc[s][3];
        sqa = fmaf(a0.x * kRfScale, a0.x * kRfScale, sqa);
        sqa = fmaf(a0.y * kRfScale, a0.y * kRfScale, sqa);
        sqa = fmaf(a1.x * kRfScale, a1.x * kRfScale, sqa);
        sqa = fmaf(a1.y * kRfScale, a1.y * kRfScale, sqa);
        sqb = fmaf(b0.x * kRfScale, b0.x * kRfScale, sqb);
        sqb = fmaf(b0.y * kRfScale, b0.y * kRfScale, sqb);
        sqb = fmaf(b1.x * kRfScale, b1.x * kRfScale, sqb);
        sqb = fmaf(b1.y * kRfScale, b1.y * kRfScale, sqb);
        wg_wait<1>();  // the MMAs of two steps ago, which read this buffer, are done
        reg_use(A[buf][0]);
        reg_use(A[buf][1]);
        split_pair(a0.x * ga.x, a0.y * ga.y, A[buf][0][0], A[buf][1][0]);
        split_pair(b0.x * ga.x, b0.y * ga.y, A[buf][0][1], A[buf][1][1]);
        split_pair(a1.x * gb.x, a1.y * gb.y, A[buf][0][2], A[buf][1][2]);
        split_pair(b1.x * gb.x, b1.y * gb.y, A[buf][0][3], A[buf][1][3]);
        wg_fence();
        const uint64_t dh = desc128(img + kb * S::kImage) + 2 * s;
        const uint64_t dl = desc128(img + (KB + kb) * S::kImage) + 2 * s;
        wgmma_rs_hc<HC>(acc, A[buf][0], dh);
        wgmma_rs_hc<HC>(acc, A[buf][0], dl);
        wgmma_rs_hc<HC>(acc, A[buf][1], dh);
        wg_commit();
      }
#pragma unroll
      for (int s = 0; s < 4; ++s)
#pragma unroll
        for (int e = 0; e < 4; ++e) xc[s][e] = xn[s][e];
    }
    wg_wait<0>();
    reg_fence(acc);
    reg_use(A[0][0]);
    reg_use(A[0][1]);
    reg_use(A[1][0]);
    reg_use(A[1][1]);

    // rows a (g) and b (g + 8) of this warp's 16: the quad's four parts of the sums of squares
    // and of the score, added by a fixed butterfly
    sqa += __shfl_xor_sync(0xffffffffu, sqa, 1);
    sqa += __shfl_xor_sync(0xffffffffu, sqa, 2);
    sqb += __shfl_xor_sync(0xffffffffu, sqb, 1);
    sqb += __shfl_xor_sync(0xffffffffu, sqb, 2);
    const float inv_a = rf_inv(sqa, p.eps_scaled, D), inv_b = rf_inv(sqb, p.eps_scaled, D);
    float fa = 0.0f, fb = 0.0f;
#pragma unroll
    for (int j = 0; j < HC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * t + e;
        fa += gelu_f(acc[4 * j + e] * inv_a + b1s[c]) * w2s[c];
        fb += gelu_f(acc[4 * j + 2 + e] * inv_b + b1s[c]) * w2s[c];
      }
    double sa = fa, sb = fb;
    sa += __shfl_xor_sync(0xffffffffu, sa, 1);
    sa += __shfl_xor_sync(0xffffffffu, sa, 2);
    sb += __shfl_xor_sync(0xffffffffu, sb, 1);
    sb += __shfl_xor_sync(0xffffffffu, sb, 2);
    const int64_t ra = tile * 64 + warp * 16 + g, rb = ra + 8;
    if (t == 0) {
      if (nch == 1) {
        if (ra < n) p.scores[ra] = (float)(sa + (double)p.b2);
        if (rb < n) p.scores[rb] = (float)(sb + (double)p.b2);
      } else {
        if (ra < n) p.partial[chunk * n + ra] = sa;
        if (rb < n) p.partial[chunk * n + rb] = sb;
      }
    }
  }
#else
  __trap();  // compiled only for sm_90a; the launcher checks wgmma_available() first
#endif
}

struct RfLaunch {
  int blocks_per_sm = 0, sms = 0;
};

// NOTE: taken once per shape, for the device of the first call (one device a process).
template <int KS, int NT, int NB>
const RfLaunch& rf_setup() {
  static const RfLaunch v = [] {
    RfLaunch r;
    int dev = 0;
    SPARSA_CUDA_CHECK(cudaGetDevice(&dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&r.sms, cudaDevAttrMultiProcessorCount, dev));
    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(router_fused_kernel<KS, NT, NB>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           RfShape<KS, NT, NB>::kBytes));
    SPARSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &r.blocks_per_sm, router_fused_kernel<KS, NT, NB>, kRfThreads,
        RfShape<KS, NT, NB>::kBytes));
    if (r.blocks_per_sm < 1) throw SystemError("router_fused: the kernel does not fit an SM");
    return r;
  }();
  return v;
}

template <int KS, int NT, int NB>
void run_router_fused(const RouterFusedParams& p, cudaStream_t stream) {
  const RfLaunch& l = rf_setup<KS, NT, NB>();
  const int64_t nch = p.r / (8 * NT), ntiles = (p.n_tokens + kRfRows - 1) / kRfRows;
  const int64_t per_chunk =
      std::max<int64_t>(1, std::min<int64_t>(ntiles, (int64_t)l.sms * l.blocks_per_sm / nch));
  router_fused_kernel<KS, NT, NB>
      <<<(unsigned)(per_chunk * nch), kRfThreads, RfShape<KS, NT, NB>::kBytes, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
  combine_chunks(p, nch, stream);
}

template <int KB, int HC>
void run_router_wgmma(const RouterFusedParams& p, cudaStream_t stream) {
  using S = RwShape<KB, HC>;
  // NOTE: taken once per shape, for the device of the first call (one device a process).
  static const int sms = [] {
    int dev = 0, v = 0;
    SPARSA_CUDA_CHECK(cudaGetDevice(&dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(router_wgmma_kernel<KB, HC>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, S::kBytes));
    return v;
  }();
  const int64_t nch = p.r / HC, ntiles = (p.n_tokens + 63) / 64;
  const int64_t per_chunk =
      std::max<int64_t>(1, std::min<int64_t>((ntiles + kRwWgs - 1) / kRwWgs, (int64_t)sms / nch));
  router_wgmma_kernel<KB, HC><<<(unsigned)(per_chunk * nch), kRwThreads, S::kBytes, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
  combine_chunks(p, nch, stream);
}
}  // namespace

bool router_fused_supported(int64_t d, int64_t r) {
  return (d == 128 || d == 256 || d == 512) && r > 0 && r % 32 == 0;
}

namespace {
template <int NB>
int mma_bytes(int64_t d, bool wide) {
  return d == 128   ? (wide ? RfShape<1, 8, NB>::kBytes : RfShape<1, 4, NB>::kBytes)
         : d == 256 ? (wide ? RfShape<2, 8, NB>::kBytes : RfShape<2, 4, NB>::kBytes)
                    : (wide ? RfShape<4, 8, NB>::kBytes : RfShape<4, 4, NB>::kBytes);
}
// NOTE: taken once, for the device of the first call (one device a process).
int smem_optin() {
  static const int v = [] {
    int dev = 0, optin = 0;
    SPARSA_CUDA_CHECK(cudaGetDevice(&dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return optin;
  }();
  return v;
}
void require_supported(int64_t d, int64_t r) {
  if (!router_fused_supported(d, r))
    throw SystemError("router_fused: needs d_model 128, 256 or 512 and router_hidden % 32 == 0");
}
template <int NB>
void dispatch_mma(const RouterFusedParams& p, bool wide, cudaStream_t stream) {
  switch (p.d) {
    case 128:
      return wide ? run_router_fused<1, 8, NB>(p, stream) : run_router_fused<1, 4, NB>(p, stream);
    case 256:
      return wide ? run_router_fused<2, 8, NB>(p, stream) : run_router_fused<2, 4, NB>(p, stream);
    default:
      return wide ? run_router_fused<4, 8, NB>(p, stream) : run_router_fused<4, 4, NB>(p, stream);
  }
}
}  // namespace

bool router_fused_fits(int64_t d, int64_t r, bool mma_only) {
  if (!router_fused_supported(d, r)) return false;
  const bool wide = router_fused_width(r) == 64;
  if (!mma_only && wgmma_available()) {
    const int bytes = d == 128   ? (wide ? RwShape<2, 64>::kBytes : RwShape<2, 32>::kBytes)
                      : d == 256 ? (wide ? RwShape<4, 64>::kBytes : RwShape<4, 32>::kBytes)
                                 : (wide ? RwShape<8, 64>::kBytes : RwShape<8, 32>::kBytes);
    return bytes <= smem_optin();
  }
  return mma_bytes<1>(d, wide) <= smem_optin();  // one x buffer where two do not fit
}
int64_t router_fused_width(int64_t r) { return r % 64 == 0 ? 64 : 32; }
float router_fused_eps(double eps) { return (float)std::ldexp(eps, -64); }

std::vector<uint32_t> pack_router_frags(const uint16_t* hi, const uint16_t* lo, int64_t d,
                                        int64_t r) {
  require_supported(d, r);
  const int64_t ks_n = d / 128, hc = router_fused_width(r), nt_n = hc / 8;
  std::vector<uint32_t> out(d * r * 2 / 2);  // d r values, hi and lo, 2 a word
  size_t o = 0;
  for (int64_t c = 0; c < r / hc; ++c)
    for (int64_t w = 0; w < 8; ++w)
      for (int64_t ks = 0; ks < ks_n; ++ks)
        for (int64_t nt = 0; nt < nt_n; ++nt)
          for (int hl = 0; hl < 2; ++hl)
            for (int lane = 0; lane < 32; ++lane)
              for (int j = 0; j < 2; ++j) {
                const uint16_t* src = hl ? lo : hi;
                const int64_t n = c * hc + 8 * nt + lane / 4;
                const int64_t k = w * 16 * ks_n + 16 * ks + 2 * (lane % 4) + 8 * j;
                out[o++] = (uint32_t)src[k * r + n] | (uint32_t)src[(k + 1) * r + n] << 16;
              }
  return out;
}

std::vector<uint16_t> pack_router_images(const uint16_t* hi, const uint16_t* lo, int64_t d,
                                         int64_t r) {
  require_supported(d, r);
  const int64_t kb_n = d / 64, hc = router_fused_width(r);
  std::vector<uint16_t> out(2 * d * r);
  for (int64_t c = 0; c < r / hc; ++c)
    for (int hl = 0; hl < 2; ++hl)
      for (int64_t kb = 0; kb < kb_n; ++kb)
        for (int64_t nn = 0; nn < hc; ++nn)
          for (int64_t kc = 0; kc < 8; ++kc)  // 16-byte chunk kc of the row at kc ^ (nn % 8)
            for (int64_t e = 0; e < 8; ++e) {
              const int64_t k = kb * 64 + kc * 8 + e;
              out[(((c * 2 + hl) * kb_n + kb) * hc + nn) * 64 + ((kc ^ (nn & 7)) * 8) + e] =
                  (hl ? lo : hi)[k * r + c * hc + nn];
            }
  return out;
}

void launch_router_fused(const RouterFusedParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  require_supported(p.d, p.r);
  if ((uintptr_t)p.x % 16 || (uintptr_t)p.frags % 8 || (uintptr_t)p.images % 16)
    throw SystemError("router_fused: x, frags and images must be 16-byte aligned");
  const bool wide = router_fused_width(p.r) == 64;
  if (p.images && !p.mma_only && wgmma_available()) {
    switch (p.d) {
      case 128:
        return wide ? run_router_wgmma<2, 64>(p, stream) : run_router_wgmma<2, 32>(p, stream);
      case 256:
        return wide ? run_router_wgmma<4, 64>(p, stream) : run_router_wgmma<4, 32>(p, stream);
      default:
        return wide ? run_router_wgmma<8, 64>(p, stream) : run_router_wgmma<8, 32>(p, stream);
    }
  }
  if (!p.frags) throw SystemError("router_fused: no mma.sync fragments");
  const int nb = p.mma_buffers ? p.mma_buffers : mma_bytes<2>(p.d, wide) <= smem_optin() ? 2 : 1;
  if (nb == 2)
    dispatch_mma<2>(p, wide, stream);
  else
    dispatch_mma<1>(p, wide, stream);
}

}  // namespace sparsa::kern
