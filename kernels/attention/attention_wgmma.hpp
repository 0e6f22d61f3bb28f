// sparsa kernels: the global part of attention on Hopper warpgroup MMAs (internal to
// kernels/attention; launched by launch_attention when the device supports it).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "kernels/attention/attention.hpp"

namespace sparsa::kern {

// True on a compute capability 9.0 device when the sm_90a kernels were compiled in.
bool wgmma_available();

// beta * Global in fp32 into p.global_scratch (bf16, head_dim 64, n_global > 0). `variant` picks
// the block shape: "wg" (2 warpgroups, 128 keys a tile, 2 stages, 2 blocks an SM; the default),
// "wg2m1" (1 block an SM), "wg64" (64 keys a tile, 3 stages), "wgp*" (FA3 order: the softmax of
// tile t overlaps P V of tile t - 1; wgp64, wgp, wgp3).
void launch_global_wgmma(const AttentionParams& p, const std::string& variant, cudaStream_t stream);

// The band alone (bf16, head_dim 64; the global part, if any, already in p.global_in): alpha *
// Local (+ global_in) into p.out. `variant`: "wg" (2 warpgroups = 128 queries, 3 stages, 2 blocks
// an SM; the default), "wgs4" (4 stages), "wg4" (4 warpgroups), "wg1" (1 warpgroup, 4 blocks).
void launch_band_wgmma(const AttentionParams& p, const std::string& variant, cudaStream_t stream);

}  // namespace sparsa::kern
