#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "kernels/common/common.cuh"
#include "kernels/rope/rope.hpp"

namespace sparsa::kern {

namespace {
struct RopeArgs {
  RopeParams p;
  double theta[128];  // base^(-2k/dh), k < head_dim / 2
};
__device__ __forceinline__ int64_t row_pos(const RopeParams& p, int64_t r) {
  return p.positions ? p.positions[r] : p.first_pos + r;
}
// The rotated pair (x0, x1) by the angle of cos c, sin s: in double for a float32 output (as the
// CPU); for a bf16 output in float, cos and sin rounded to float (a float error of a few ulp is
// far below bf16 rounding, and the double math cost as much as the memory traffic). Every kernel
// uses this, so a row's bits do not depend on the kernel that rotated it.
template <class Out>
__device__ __forceinline__ void rotate(float x0, float x1, double c, double s, float* lo,
                                       float* hi) {
  if constexpr (sizeof(Out) == 2) {
    const float cf = (float)c, sf = (float)s;
    *lo = __fmaf_rn(x0, cf, __fmul_rn(-x1, sf));
    *hi = __fmaf_rn(x0, sf, __fmul_rn(x1, cf));
  } else {
    *lo = (float)((double)x0 * c - (double)x1 * s);
    *hi = (float)((double)x0 * s + (double)x1 * c);
  }
}
}  // namespace

// One thread per (row, k < half): the angle and its cos/sin once (double), then the pair (k,
// k + half) of every head of q and k rotated, v's pairs copied.
template <class In, class Out>
__global__ void rope_kernel(const __grid_constant__ RopeArgs a) {
  const RopeParams& p = a.p;
  const int64_t half = p.head_dim / 2;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.n_tokens * half) return;
  const int64_t k = idx % half, r = idx / half;
  const double ang = (double)row_pos(p, r) * a.theta[k];
  double s, c;
  sincos(ang, &s, &c);
  for (int64_t h = 0; h < p.n_heads; ++h) {
    const int64_t in0 = r * p.in_stride + h * p.head_dim + k;
    const int64_t out0 = r * p.n_heads * p.head_dim + h * p.head_dim + k;
    const In* qi = static_cast<const In*>(p.q_in);
    const In* ki = static_cast<const In*>(p.k_in);
    const In* vi = static_cast<const In*>(p.v_in);
    float lo, hi;
    if (p.q_out) {
      rotate<Out>(to_f(qi[in0]), to_f(qi[in0 + half]), c, s, &lo, &hi);
      static_cast<Out*>(p.q_out)[out0] = from_f<Out>(lo);
      static_cast<Out*>(p.q_out)[out0 + half] = from_f<Out>(hi);
    }
    if (p.k_out) {
      rotate<Out>(to_f(ki[in0]), to_f(ki[in0 + half]), c, s, &lo, &hi);
      static_cast<Out*>(p.k_out)[out0] = from_f<Out>(lo);
      static_cast<Out*>(p.k_out)[out0 + half] = from_f<Out>(hi);
    }
    if (p.v_in) {
      static_cast<Out*>(p.v_out)[out0] = from_f<Out>(to_f(vi[in0]));
      static_cast<Out*>(p.v_out)[out0 + half] = from_f<Out>(to_f(vi[in0 + half]));
    }
  }
}

// head_dim % 8 == 0: one thread per (row, 4 consecutive k): 4 angles, then every head's pairs of
// q and k rotated with 16-byte loads (and v's copied). Same arithmetic per element as above.
template <class Out>
__device__ __forceinline__ void store4(void* base, int64_t off, float a, float b, float c,
                                       float d) {
  if constexpr (sizeof(Out) == 2) {
    auto* o = reinterpret_cast<__nv_bfloat162*>(static_cast<Out*>(base) + off);
    o[0] = __floats2bfloat162_rn(a, b);
    o[1] = __floats2bfloat162_rn(c, d);
  } else {
    *reinterpret_cast<float4*>(static_cast<Out*>(base) + off) = make_float4(a, b, c, d);
  }
}
// 4 consecutive elements at element offset off: 16 bytes of float32 or 8 of bf16.
template <class In>
__device__ __forceinline__ float4 load4(const void* base, int64_t off) {
  if constexpr (sizeof(In) == 2) {
    const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const In*>(base) + off);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
  } else {
    return *reinterpret_cast<const float4*>(static_cast<const In*>(base) + off);
  }
}
template <class In, class Out>
__global__ void rope4_kernel(const __grid_constant__ RopeArgs a) {
  const RopeParams& p = a.p;
  const int64_t half = p.head_dim / 2, quads = half / 4;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.n_tokens * quads) return;
  const int64_t k = 4 * (idx % quads), r = idx / quads, pos = row_pos(p, r);
  double s[4], c[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) sincos((double)pos * a.theta[k + e], &s[e], &c[e]);
  auto rot = [&](float4 x0, float4 x1, void* out, int64_t out0) {
    const float a0[4] = {x0.x, x0.y, x0.z, x0.w}, a1[4] = {x1.x, x1.y, x1.z, x1.w};
    float lo[4], hi[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) rotate<Out>(a0[e], a1[e], c[e], s[e], &lo[e], &hi[e]);
    store4<Out>(out, out0, lo[0], lo[1], lo[2], lo[3]);
    store4<Out>(out, out0 + half, hi[0], hi[1], hi[2], hi[3]);
  };
  // kHeads heads at a time, their loads issued before any store (in and out may alias as far as
  // the compiler knows): enough bytes in flight to keep HBM busy.
  constexpr int kHeads = 4;
  for (int64_t h0 = 0; h0 < p.n_heads; h0 += kHeads) {
    float4 q0[kHeads], q1[kHeads], k0[kHeads], k1[kHeads];
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      const int64_t in0 = r * p.in_stride + (h0 + j) * p.head_dim + k;
      if (h0 + j >= p.n_heads) break;
      if (p.q_out) q0[j] = load4<In>(p.q_in, in0), q1[j] = load4<In>(p.q_in, in0 + half);
      if (p.k_out) k0[j] = load4<In>(p.k_in, in0), k1[j] = load4<In>(p.k_in, in0 + half);
    }
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      const int64_t out0 = r * p.n_heads * p.head_dim + (h0 + j) * p.head_dim + k;
      if (h0 + j >= p.n_heads) break;
      if (p.q_out) rot(q0[j], q1[j], p.q_out, out0);
      if (p.k_out) rot(k0[j], k1[j], p.k_out, out0);
    }
  }
  if (p.v_in)
    for (int64_t h = 0; h < p.n_heads; ++h) {
      const int64_t in0 = r * p.in_stride + h * p.head_dim + k;
      const int64_t out0 = r * p.n_heads * p.head_dim + h * p.head_dim + k;
      const float4 v0 = load4<In>(p.v_in, in0), v1 = load4<In>(p.v_in, in0 + half);
      store4<Out>(p.v_out, out0, v0.x, v0.y, v0.z, v0.w);
      store4<Out>(p.v_out, out0 + half, v1.x, v1.y, v1.z, v1.w);
    }
}

// bf16 in and out, head_dim 64, no v, 16-byte aligned rows: one warp a row. The row's q and k
// are read as 16-byte chunks of 8 elements, lane l taking chunks l, l + 32, ... of each (fully
// coalesced 512-byte accesses, the loads of the whole row issued before any arithmetic); a chunk
// pairs with chunk ^ 4 of the same head (elements k and k + 32), which lane ^ 4 holds. Lane l
// computes angle l (one double sincos a lane a row, rounded to float) and the lanes fetch the 8
// they need by shuffles. The same arithmetic per element as rotate<bf16>, so the same bits as
// rope4_kernel; rope4_kernel moved its 4 GB a layer at ~2.8 TB/s (8-byte accesses).
constexpr int kRopeWarpChunks = 4;  // up to 4 chunks of q and 4 of k a lane: d <= 1024
__device__ __forceinline__ void bf16x8_to_f(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 t = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[e]));
    f[2 * e] = t.x;
    f[2 * e + 1] = t.y;
  }
}
__global__ void rope_warp_kernel(const __grid_constant__ RopeArgs a) {
  const RopeParams& p = a.p;
  const int lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= p.n_tokens) return;              // whole warps leave together
  const int chunks = (int)(p.n_heads * 8);  // 16-byte chunks of a row's q (or k)
  const uint4* qi =
      reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.q_in) + r * p.in_stride);
  const uint4* ki =
      reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.k_in) + r * p.in_stride);
  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 uq[kRopeWarpChunks], uk[kRopeWarpChunks];
#pragma unroll
  for (int u = 0; u < kRopeWarpChunks; ++u) {
    const int ci = lane + 32 * u;
    uq[u] = p.q_out && ci < chunks ? qi[ci] : zero;
    uk[u] = p.k_out && ci < chunks ? ki[ci] : zero;
  }
  double sd, cd;
  sincos((double)row_pos(p, r) * a.theta[lane], &sd, &cd);
  const float cl = (float)cd, sl = (float)sd;
  // this lane's 8 angles: k = 8 (lane % 4) + e (the same for every chunk it holds)
  float cf[8], sf[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    cf[e] = __shfl_sync(0xffffffffu, cl, 8 * (lane % 4) + e);
    sf[e] = __shfl_sync(0xffffffffu, sl, 8 * (lane % 4) + e);
  }
  const bool lo = (lane % 8) < 4;  // the chunk holds elements k (lo) or k + 32 (hi) of its head
  auto rot = [&](const uint4& mine_u) -> uint4 {
    uint4 other_u;
    other_u.x = __shfl_xor_sync(0xffffffffu, mine_u.x, 4);
    other_u.y = __shfl_xor_sync(0xffffffffu, mine_u.y, 4);
    other_u.z = __shfl_xor_sync(0xffffffffu, mine_u.z, 4);
    other_u.w = __shfl_xor_sync(0xffffffffu, mine_u.w, 4);
    float m[8], o[8];
    bf16x8_to_f(mine_u, m);
    bf16x8_to_f(other_u, o);
    uint32_t w[4];
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      float v[2];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const float x0 = lo ? m[e + t] : o[e + t], x1 = lo ? o[e + t] : m[e + t];
        float l, h;
        rotate<__nv_bfloat16>(x0, x1, cf[e + t], sf[e + t], &l, &h);
        v[t] = lo ? l : h;
      }
      const __nv_bfloat162 b = __floats2bfloat162_rn(v[0], v[1]);
      w[e / 2] = *reinterpret_cast<const uint32_t*>(&b);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  };
  const int64_t ob = r * p.n_heads * 64;
#pragma unroll
  for (int u = 0; u < kRopeWarpChunks; ++u) {
    const int ci = lane + 32 * u;
    if (32 * u >= chunks) break;  // uniform across the warp: the shuffles stay full
    if (p.q_out) {
      const uint4 v = rot(uq[u]);
      if (ci < chunks) reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.q_out) + ob)[ci] = v;
    }
    if (p.k_out) {
      const uint4 v = rot(uk[u]);
      if (ci < chunks) reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.k_out) + ob)[ci] = v;
    }
  }
}

void launch_rope(const RopeParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  if (p.head_dim % 2 != 0 || p.head_dim > 256)
    throw SystemError("rope: head_dim must be even and <= 256");
  RopeArgs a{};
  a.p = p;
  for (int64_t k = 0; k < p.head_dim / 2; ++k)
    a.theta[k] = std::pow(p.base, -2.0 * (double)k / (double)p.head_dim);
  const bool in_bf = p.in_type == DType::kBF16, out_bf = p.out_type == DType::kBF16;
  if (in_bf && !out_bf) throw SystemError("rope: a bf16 input needs a bf16 output");
  // Vector loads need head_dim % 8 == 0, rows aligned to 4 elements (in_stride % 4 == 0) and base
  // pointers aligned to 4 elements (16 bytes for float32 in, 8 for bf16 in; outputs 8 or 16).
  const uintptr_t in_al = in_bf ? 8 : 16, out_al = out_bf ? 8 : 16;
  auto all_aligned = [](std::initializer_list<const void*> ptrs, uintptr_t al) {
    for (const void* q : ptrs)
      if ((uintptr_t)q % al != 0) return false;
    return true;
  };
  const bool aligned = all_aligned({p.q_in, p.k_in, p.v_in}, in_al) &&
                       all_aligned({p.q_out, p.k_out, p.v_out}, out_al);
  // SPARSA_ROPE=v1: rope4_kernel everywhere (for A/B timing; the same bits)
  static const bool warp_ok = [] {
    const char* e = std::getenv("SPARSA_ROPE");
    return !(e && std::strcmp(e, "v1") == 0);
  }();
  if (warp_ok && p.variant == 0 && in_bf && p.head_dim == 64 &&
      p.n_heads * 8 <= 32 * kRopeWarpChunks && !p.v_in && p.in_stride % 8 == 0) {
    if (all_aligned({p.q_in, p.k_in, p.q_out, p.k_out}, 16)) {
      rope_warp_kernel<<<grid_for(p.n_tokens, 8), 256, 0, stream>>>(a);
      SPARSA_LAUNCH_CHECK();
      return;
    }
  }
  if (p.head_dim % 8 == 0 && p.in_stride % 4 == 0 && aligned) {
    const unsigned grid = grid_for(p.n_tokens * (p.head_dim / 8), 256);
    if (in_bf)
      rope4_kernel<__nv_bfloat16, __nv_bfloat16><<<grid, 256, 0, stream>>>(a);
    else if (out_bf)
      rope4_kernel<float, __nv_bfloat16><<<grid, 256, 0, stream>>>(a);
    else
      rope4_kernel<float, float><<<grid, 256, 0, stream>>>(a);
  } else {
    const unsigned grid = grid_for(p.n_tokens * (p.head_dim / 2), 256);
    if (in_bf)
      rope_kernel<__nv_bfloat16, __nv_bfloat16><<<grid, 256, 0, stream>>>(a);
    else if (out_bf)
      rope_kernel<float, __nv_bfloat16><<<grid, 256, 0, stream>>>(a);
    else
      rope_kernel<float, float><<<grid, 256, 0, stream>>>(a);
  }
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
