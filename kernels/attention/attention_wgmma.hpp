// sparsa kernels: the global part of attention on Hopper warpgroup MMAs (internal to
// kernels/attention; launched by launch_attention when the device supports it).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "kernels/attention/attention.hpp"

namespace sparsa::kern {

// beta * Global in fp32 into p.global_scratch (bf16, head_dim 64, n_global > 0): 2 warpgroups =
// 128 queries a block, 128 keys a tile, 2 stages, 2 blocks an SM, lazy rescale, row sums from a
// ones column of V; each stage one bulk copy (TMA) of a pre-packed image of the tile, waited on
// a "full" mbarrier, the warpgroups releasing buffers on "empty" mbarriers (no block barrier in
// the loop). `variant` (A/B runs) "wgbar": a block barrier per tile instead of the "empty"
// barriers; "wgcp": every thread loads the tiles with cp.async; "wg0": that, without the lazy
// rescale and the ones column. "wgstat": softmax offsets fixed after the first key tile.
// "wgpipe" (the default on sm_90a): that, pipelined within each warpgroup (S of tile t + 1 and P V
// of tile t in flight together, the softmax of t + 1 while P V runs; row sums by FADD), 3
// warpgroups, 4 stages, 1 block an SM; "wgpipe3": 3 stages; "wgpipe2": 2 warpgroups.
// "wgfused" / "wgfused-wg": wgpipe with the band fused after it, each warpgroup running the band
// kernel's "wgstat" / "wg" loop for its rows: alpha * Local + beta * Global straight into p.out
// (the bits of wgpipe then launch_band_wgmma with that variant); p.global_scratch is not used.
void launch_global_wgmma(const AttentionParams& p, const std::string& variant, cudaStream_t stream);
// Whether `variant` is one of the kernels that run the band too ("wgfused", "wgfused-wg"): they
// write p.out and need no p.global_scratch.
inline bool fused_variant(const std::string& variant) { return variant.rfind("wgfused", 0) == 0; }

// The band alone (bf16, head_dim 64; the global part, if any, already in p.global_in): alpha *
// Local (+ global_in) into p.out; 1 warpgroup = 64 queries a block, 2 stages, 4 blocks an SM.
// `variant` "wgstat" (the default): a row's softmax offset frozen after the first key tile where
// it sees a key, the running max kept only for a row whose result would leave the float range
// (a second pass); "wg": the running max throughout; "wgs3": that with 3 stages (A/B runs).
void launch_band_wgmma(const AttentionParams& p, const std::string& variant, cudaStream_t stream);

}  // namespace sparsa::kern
