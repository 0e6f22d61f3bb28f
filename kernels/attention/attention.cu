// The launcher and the CUDA-core (simple) attention kernel; the tensor-core kernel lives in
// attention_tc.cu.
#include <cmath>

#include "kernels/attention/attention.hpp"
#include "kernels/common/common.cuh"

namespace sparsa::kern {

void launch_attention_tc(const AttentionParams& p, cudaStream_t stream);  // attention_tc.cu
bool global_scratch_needed_tc(const AttentionParams& p);                  // attention_tc.cu

namespace {

constexpr int kSimpleWarps = 4;
constexpr int kMaxDimPerLane = 8;  // head_dim <= 256

// Softmax-weighted sum over `count` keys for one (row, head), by one warp, exact two-pass softmax
// (max first, then exp-sum and value sum), as cpu::attend_head. keys(t) gives the row index
// of key t in kbase/vbase; visible(t) says whether it counts. Accumulates weight/denom * acc into
// o (this lane's dims lane, lane + 32, ...).
template <class T, class KeyRow, class Extra>
__device__ void attend_warp(const float* qs, const T* kbase, const T* vbase, int64_t d,
                            int64_t count, KeyRow key_row, Extra extra, float weight,
                            int64_t head_dim, float scale, float (&o)[kMaxDimPerLane]) {
  const int lane = threadIdx.x % 32;
  if (count <= 0) return;
  auto score = [&](int64_t t) {
    const T* kr = kbase + key_row(t) * d;
    float s = 0.0f;
    for (int64_t e = 0; e < head_dim; ++e) s += qs[e] * to_f<T>(kr[e]);
    return s * scale;
  };
  float m = -INFINITY;
  for (int64_t t = lane; t < count; t += 32) m = fmaxf(m, score(t));
#pragma unroll
  for (int o2 = 16; o2 > 0; o2 >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o2));
  float denom = 0.0f, acc[kMaxDimPerLane] = {};
  for (int64_t t0 = 0; t0 < count; t0 += 32) {
    const int64_t t = t0 + lane;
    float p = 0.0f, pe = 0.0f;
    if (t < count) {
      p = expf(score(t) - m);
      pe = p * extra(t);
    }
    denom += p;
    const int64_t nt = min((int64_t)32, count - t0);
    for (int u = 0; u < nt; ++u) {
      const float pu = __shfl_sync(0xffffffffu, pe, u);
      const T* vr = vbase + key_row(t0 + u) * d;
#pragma unroll
      for (int c = 0; c < kMaxDimPerLane; ++c) {
        const int64_t e = lane + 32 * c;
        if (e < head_dim) acc[c] += pu * to_f<T>(vr[e]);
      }
    }
  }
#pragma unroll
  for (int o2 = 16; o2 > 0; o2 >>= 1) denom += __shfl_xor_sync(0xffffffffu, denom, o2);
  const float f = weight / denom;
#pragma unroll
  for (int c = 0; c < kMaxDimPerLane; ++c) o[c] += f * acc[c];
}

template <class T>
__global__ void attention_simple_kernel(AttentionParams p, float scale) {
  __shared__ float q_s[kSimpleWarps][256];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t item = (int64_t)blockIdx.x * kSimpleWarps + warp;
  const int64_t rows = p.row_end - p.row_begin;
  if (item >= rows * p.n_heads) return;
  const int64_t r = p.row_begin + item / p.n_heads, h = item % p.n_heads;
  const int64_t d = p.n_heads * p.head_dim, i = p.first_pos + r;
  const T* q = static_cast<const T*>(p.q) + r * d + h * p.head_dim;
  for (int64_t e = lane; e < p.head_dim; e += 32) q_s[warp][e] = to_f<T>(q[e]);
  __syncwarp();
  float o[kMaxDimPerLane] = {};
  if (!p.skip_local) {
    const int64_t lo = max((int64_t)0, i - p.window);
    const int64_t hi = p.causal ? i : min(p.n_record - 1, i + p.window);
    const T* kb = static_cast<const T*>(p.k) + (lo - p.kv_begin) * d + h * p.head_dim;
    const T* vb = static_cast<const T*>(p.v) + (lo - p.kv_begin) * d + h * p.head_dim;
    attend_warp<T>(
        q_s[warp], kb, vb, d, hi - lo + 1, [](int64_t t) { return t; },
        [](int64_t) { return 1.0f; }, p.alpha[h], p.head_dim, scale, o);
  }
  int64_t ng = p.n_global;
  if (p.causal) {  // visible prefix: positions <= i (ascending)
    int64_t a = 0, b = p.n_global;
    while (a < b) {
      const int64_t mid = (a + b) / 2;
      if (p.pos_global[mid] <= i)
        a = mid + 1;
      else
        b = mid;
    }
    ng = a;
  }
  const T* kg = static_cast<const T*>(p.k_global) + h * p.head_dim;
  const T* vg = static_cast<const T*>(p.v_global) + h * p.head_dim;
  const float* gamma = p.gamma;
  attend_warp<T>(
      q_s[warp], kg, vg, d, ng, [](int64_t t) { return t; },
      [gamma](int64_t t) { return gamma[t]; }, p.beta[h], p.head_dim, scale, o);
  // All lanes read q_s above (and q before it) before anyone writes out (which may alias q).
  __syncwarp();
  T* out = static_cast<T*>(p.out) + r * d + h * p.head_dim;
#pragma unroll
  for (int c = 0; c < kMaxDimPerLane; ++c) {
    const int64_t e = lane + 32 * c;
    if (e < p.head_dim) out[e] = from_f<T>(o[c]);
  }
}

}  // namespace

bool attention_uses_tensor_cores(const AttentionParams& p) {
  return !p.force_simple && p.type == DType::kBF16 && (p.head_dim == 64 || p.head_dim == 128);
}

bool attention_needs_global_scratch(const AttentionParams& p) {
  return attention_uses_tensor_cores(p) && global_scratch_needed_tc(p);
}

void launch_attention(const AttentionParams& p_in, cudaStream_t stream) {
  AttentionParams p = p_in;
  if (p.row_end <= p.row_begin || p.n_tokens <= 0) return;
  if (p.head_dim <= 0 || p.head_dim > 256) throw SystemError("attention: head_dim > 256");
  if (p.window < 0) throw SystemError("attention: negative window");
  p.window = std::min(p.window, p.n_record);  // a window beyond the record is full attention
  if (attention_uses_tensor_cores(p)) return launch_attention_tc(p, stream);
  const float scale = 1.0f / std::sqrt((float)p.head_dim);
  const unsigned grid = grid_for((p.row_end - p.row_begin) * p.n_heads, kSimpleWarps);
  if (p.type == DType::kBF16)
    attention_simple_kernel<__nv_bfloat16><<<grid, 32 * kSimpleWarps, 0, stream>>>(p, scale);
  else
    attention_simple_kernel<float><<<grid, 32 * kSimpleWarps, 0, stream>>>(p, scale);
  SPARSA_LAUNCH_CHECK();
}

}  // namespace sparsa::kern
