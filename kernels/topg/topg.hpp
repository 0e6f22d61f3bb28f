// sparsa kernels: top-G selection of router scores (spec 2: the G largest; on equal scores the
// smaller position wins). Each score becomes a unique 64-bit key, larger = better:
//   key = orderable_bits(score) << 32 | (0xffffffff - record position)
// and the keys are sorted descending on their score bits (CUB's radix sort, O(n) passes over the
// top 32 bits; it is stable and the keys come in position order, so ties keep ascending
// position, as the low 32 bits would sort them); the first G are the best G in the CPU's order
// (cpu::better), exactly, ties included. Positions must be < 2^32.
#pragma once
#include <cstddef>

#include "kernels/common/types.hpp"

namespace sparsa::kern {

struct TopgParams {
  const float* scores;  // [n_tokens]
  int64_t n_tokens, first_pos;
  uint64_t* keys;    // [n_tokens] scratch
  uint64_t* sorted;  // [n_tokens] out: keys, best first
  void* temp;        // CUB scratch of topg_temp_bytes(n_tokens)
  size_t temp_bytes;
  unsigned long long* bad;  // [1] out: smallest record position of a NaN/Inf score, or ~0ull
};
size_t topg_temp_bytes(int64_t n_tokens);
void launch_topg(const TopgParams& p, cudaStream_t stream);

// The global set on the device, for a shard that holds the whole record: S = the first g of the
// shard's ranked keys, ordered by position (as cpu::select_global); its positions, scores and
// shard rows (position - first_pos) in that order. scratch: 2 g keys; temp: CUB scratch of
// topg_select_temp_bytes(g).
struct TopgSelectParams {
  const uint64_t* sorted;  // [>= g], best first
  int64_t g, first_pos;
  uint64_t* scratch;
  void* temp;
  size_t temp_bytes;
  int64_t* positions;  // [g] out
  float* scores;       // [g] out
  int64_t* rows;       // [g] out
};
size_t topg_select_temp_bytes(int64_t g);
void launch_topg_select(const TopgSelectParams& p, cudaStream_t stream);

// The gate gamma_j = sigmoid(s_j) of the global set, float(1 / (1 + exp(-s))) in double: every
// path (one rank, NCCL, host staging) computes it here, so every rank has the same bits.
void launch_topg_gate(const float* scores, int64_t g, float* gamma, cudaStream_t stream);

// The global sets of many whole records packed one after another (CudaModel::forward_packed):
// record r holds packed rows [seg[r], seg[r + 1]) at positions 0 .., and its set the entries
// [gseg[r], gseg[r + 1]) of the outputs (G_r = gseg[r + 1] - gseg[r] <= its length). One block a
// record ranks its keys (made as launch_topg makes them) in shared memory and writes what
// launch_topg, launch_topg_select and launch_topg_gate write for it alone: the set in position
// order, its scores, gamma, and the packed rows of its members; bad[r] the smallest position of
// a non-finite score (~0ull: none). The set is the same (it is unique: ties go to the smaller
// position), so are the scores' and gamma's bits. Records of up to topg_segment_max_len() tokens
// (each block sorts its record's keys, 8 bytes a token rounded up to a power of two, in shared
// memory: kTopgSegmentMax where a block may have 128 KB, 8192 on GPUs with 99 KB).
constexpr int64_t kTopgSegmentMax = 16384;
int64_t topg_segment_max_len();  // on the current device
struct TopgSegmentsParams {
  const float* scores;         // [seg[R]]
  const int64_t* seg;          // [R + 1] device
  const int64_t* gseg;         // [R + 1] device
  int64_t n_records, max_len;  // max_len: the longest record (the launch's shared memory)
  int64_t* positions;          // [gseg[R]] out
  float* set_scores;           // [gseg[R]] out
  float* gamma;                // [gseg[R]] out
  int64_t* rows;               // [gseg[R]] out: seg[r] + position
  unsigned long long* bad;     // [R] out
};
void launch_topg_segments(const TopgSegmentsParams& p, cudaStream_t stream);

// Decoding of one key (host and device).
SPARSA_HOST_DEVICE inline float topg_key_score(uint64_t key) {
  uint32_t u = (uint32_t)(key >> 32);
  u = (u & 0x80000000u) ? (u ^ 0x80000000u) : ~u;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
SPARSA_HOST_DEVICE inline int64_t topg_key_pos(uint64_t key) {
  return (int64_t)(0xffffffffu - (uint32_t)key);
}

}  // namespace sparsa::kern
