#include <algorithm>
#include <cmath>

#include "kernels/common/common.cuh"
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
// Squares are taken of x 2^-32 (exact), so float holds them for |x| up to 2^96 (a larger x
// makes the sum infinite and the score NaN: reported as a non-finite router score); then
// inv = 2^-32 / sqrt(sum / d + eps 2^-64).
constexpr float kRfScale = 0x1p-32f;

template <int KS, int NT>
struct RfShape {
  static constexpr int D = 128 * KS, XS = D + 8, HC = 8 * NT, RS = HC + 8;
  // floats: x tiles [2][32][XS] (8 floats of padding a row: the fragment reads are conflict
  // free), partial z [8][32][RS], partial sums of squares [8][32], gain [D], b1 and w2 of the
  // chunk [HC] each
  static constexpr int kFloats = 2 * kRfRows * XS + 8 * kRfRows * RS + 8 * kRfRows + D + 2 * HC;
  static constexpr int kBytes = kFloats * 4;
};

__device__ __forceinline__ void split_pair(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  const float2 f = __bfloat1622float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = pack_bf16(a - f.x, b - f.y);  // a - hi is exact in float
}

template <int KS, int NT>
__global__ void __launch_bounds__(kRfThreads, 1) router_fused_kernel(RouterFusedParams p) {
  using S = RfShape<KS, NT>;
  constexpr int D = S::D, XS = S::XS, HC = S::HC, RS = S::RS;
  extern __shared__ __align__(16) float rf_smem[];
  float* xs = rf_smem;
  float* red = xs + 2 * kRfRows * XS;
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
  load(first, 0);
  load(first + stride, 1);

  int it = 0;
  for (int64_t tile = first; tile < ntiles; tile += stride, ++it) {
    const int buf = it & 1;
    const float* xb = xs + buf * kRfRows * XS;
    cp_async_wait<1>();
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
    load(tile + 2 * stride, buf);

    // 8 threads a row, each NT units in groups of 4: h = 4 l8 + 32 j + e. All in float (the
    // scaled sum of squares, inv, the terms and the thread's sum of its terms); the 8 threads'
    // sums added in double.
    const int row = threadIdx.x / 8, l8 = threadIdx.x % 8;
    float ss = ssr[row];
#pragma unroll
    for (int w = 1; w < 8; ++w) ss += ssr[w * kRfRows + row];
    const float inv = kRfScale / sqrtf(ss / (float)D + p.eps_scaled);
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

struct RfLaunch {
  int blocks_per_sm = 0, sms = 0;
};

// NOTE: taken once per shape, for the device of the first call (one device a process).
template <int KS, int NT>
const RfLaunch& rf_setup() {
  static const RfLaunch v = [] {
    RfLaunch r;
    int dev = 0;
    SPARSA_CUDA_CHECK(cudaGetDevice(&dev));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&r.sms, cudaDevAttrMultiProcessorCount, dev));
    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(router_fused_kernel<KS, NT>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           RfShape<KS, NT>::kBytes));
    SPARSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &r.blocks_per_sm, router_fused_kernel<KS, NT>, kRfThreads, RfShape<KS, NT>::kBytes));
    if (r.blocks_per_sm < 1) throw SystemError("router_fused: the kernel does not fit an SM");
    return r;
  }();
  return v;
}

template <int KS, int NT>
void run_router_fused(const RouterFusedParams& p, cudaStream_t stream) {
  const RfLaunch& l = rf_setup<KS, NT>();
  const int64_t nch = p.r / (8 * NT), ntiles = (p.n_tokens + kRfRows - 1) / kRfRows;
  const int64_t per_chunk =
      std::max<int64_t>(1, std::min<int64_t>(ntiles, (int64_t)l.sms * l.blocks_per_sm / nch));
  router_fused_kernel<KS, NT>
      <<<(unsigned)(per_chunk * nch), kRfThreads, RfShape<KS, NT>::kBytes, stream>>>(p);
  SPARSA_LAUNCH_CHECK();
  if (nch > 1) {
    router_combine_kernel<<<grid_for(p.n_tokens, 256), 256, 0, stream>>>(p, (int)nch);
    SPARSA_LAUNCH_CHECK();
  }
}
}  // namespace

bool router_fused_supported(int64_t d, int64_t r) {
  return (d == 128 || d == 256 || d == 512) && r > 0 && r % 32 == 0;
}
int64_t router_fused_width(int64_t r) { return r % 64 == 0 ? 64 : 32; }
float router_fused_eps(double eps) { return (float)std::ldexp(eps, -64); }

std::vector<uint32_t> pack_router_frags(const uint16_t* hi, const uint16_t* lo, int64_t d,
                                        int64_t r) {
  if (!router_fused_supported(d, r))
    throw SystemError("router_fused: needs d_model 128, 256 or 512 and router_hidden % 32 == 0");
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

void launch_router_fused(const RouterFusedParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  if (!router_fused_supported(p.d, p.r))
    throw SystemError("router_fused: needs d_model 128, 256 or 512 and router_hidden % 32 == 0");
  if ((uintptr_t)p.x % 16 || (uintptr_t)p.frags % 8)
    throw SystemError("router_fused: x must be 16-byte aligned");
  const bool wide = router_fused_width(p.r) == 64;
  switch (p.d) {
    case 128:
      return wide ? run_router_fused<1, 8>(p, stream) : run_router_fused<1, 4>(p, stream);
    case 256:
      return wide ? run_router_fused<2, 8>(p, stream) : run_router_fused<2, 4>(p, stream);
    default:
      return wide ? run_router_fused<4, 8>(p, stream) : run_router_fused<4, 4>(p, stream);
  }
}

}  // namespace sparsa::kern
