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

}  // namespace sparsa::kern
