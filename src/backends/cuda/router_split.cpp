#include "backends/cuda/router_split.hpp"

#include <algorithm>
#include <cmath>

#include "backends/cuda/device.hpp"
#include "kernels/router/router.hpp"

namespace sparsa::cuda {

// The bound on |split score - float32 score|, term by term (u = 2^-8 the bf16 unit roundoff, v =
// 2^-24 float32's):
//   |h_j| <= |x_j| inv |g_j| (1 + v), sum_j (x_j inv)^2 <= d, so for every row and unit k
//   A_k = sum_j |h_j W1_jk| <= ||h||_2 ||W1_:k||_2 <= sqrt(d) max|g| (1 + v) ||W1_:k||_2 = B_k.
//   Pre-activation z_k, approximate vs float32: the split drops hi*ew + lo*Wlo + lo*ew + eh*W
//   (<= 3.1 u^2 A_k); the tensor cores add at most 3d exact products in float32 (<= 3d 2^-23
//   A_k, even truncating); a + b is one more rounding (v); the float32 GEMM's own error is
//   <= d v A_k; the fused kernels' inv (y W1) with y = x g is within (d / 8 + 10) v A_k of
//   h W1 (the float sum of squares, d / 4 terms a thread in the wgmma kernel, d / 32 in the
//   mma.sync one, then inv, y and the product by inv).
//   With a factor 2 for safety: |z~ - z| <= c B_k.
//   The router kernel rounds z + b1 and GELU to float (v each, on both sides; |GELU(a)| <= |a|),
//   GELU is 1.13-Lipschitz, the double sum adds nothing visible, the score is rounded once (v).
RouterSplit make_router_split(const float* w1, const float* b1, const float* w2, float b2,
                              const float* gain, int64_t d, int64_t r) {
  RouterSplit out;
  std::vector<float> wf(d * r);
  std::vector<uint16_t> hi(d * r), lo(d * r);
  to_bf16(w1, hi.data(), d * r);
  for (int64_t i = 0; i < d * r; ++i) wf[i] = w1[i] - from_bf16(hi[i]);  // exact in float
  to_bf16(wf.data(), lo.data(), d * r);
  out.w.assign(4 * d * r, 0);
  for (int64_t e = 0; e < d; ++e)
    for (int64_t k = 0; k < r; ++k) {
      out.w[e * 2 * r + k] = hi[e * r + k];
      out.w[e * 2 * r + r + k] = lo[e * r + k];
      out.w[(d + e) * 2 * r + k] = hi[e * r + k];
    }

  const double u = std::ldexp(1.0, -8), v = std::ldexp(1.0, -24), L = 1.13;
  double gmax = 0;
  for (int64_t j = 0; j < d; ++j) gmax = std::max(gmax, std::fabs((double)gain[j]));
  const double hnorm = std::sqrt((double)d) * gmax * (1 + v);
  const double c =
      2 * (3.1 * u * u + 3.0 * (double)d * 2 * v + v + (double)d * v + ((double)d / 8 + 10) * v);
  double e = 0, smax = std::fabs((double)b2);
  for (int64_t k = 0; k < r; ++k) {
    double wn = 0;
    for (int64_t j = 0; j < d; ++j) wn += (double)w1[j * r + k] * (double)w1[j * r + k];
    const double B = hnorm * std::sqrt(wn) * (1 + 1e-9) + 1e-30;  // + underflow of tiny terms
    const double M = B * (1 + c) + std::fabs((double)b1[k]);      // |z + b1| on either side
    const double aw = std::fabs((double)w2[k]);
    // 24 v M: the fused kernels' float GELU (erff) times w2, added in float 16 at a time
    e += aw * (L * c * B + (L + 1) * 2 * v * M + 24 * v * M);
    smax += aw * M;
  }
  out.bound = 1.25 * (e + 2 * v * smax * 1.01) + 1e-30;
  if (kern::router_fused_supported(d, r)) {
    out.frags = kern::pack_router_frags(hi.data(), lo.data(), d, r);
    out.images = kern::pack_router_images(hi.data(), lo.data(), d, r);
  }
  return out;
}

}  // namespace sparsa::cuda
