#include "model/forward.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>

#include "backends/cpu/ops.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/signals.hpp"

namespace sparsa {

Shard shard_of(int64_t n, int rank, int size, int64_t align, bool mirrored) {
  auto boundary = [&](int r) -> int64_t {
    if (r >= size) return n;
    // n / size * r + (n % size) * r / size == floor(n r / size), without overflowing n * r.
    const int64_t b = n / size * r + n % size * r / size;
    return b / align * align;
  };
  Shard s;
  s.n_record = n;
  s.align = align;
  s.mirrored = mirrored;
  s.begin = boundary(rank);
  s.end = boundary(rank + 1);
  if (mirrored) {
    const int64_t b = n - s.end, e = n - s.begin;
    s.begin = b;
    s.end = e;
  }
  return s;
}

KvRange kv_range(const Shard& s, int64_t window, bool causal) {
  if (s.size() == 0) return {s.begin, s.begin};
  return {std::max<int64_t>(0, s.begin - window),
          causal ? s.end : std::min<int64_t>(s.n_record, s.end + window)};
}

HaloPlan plan_halo(const Shard& me, int rank, int size, int64_t window, bool causal) {
  HaloPlan plan;
  const int64_t n = me.n_record;
  const KvRange need = kv_range(me, window, causal);
  for (int peer = 0; peer < size; ++peer) {
    if (peer == rank) continue;
    const Shard other = shard_of(n, peer, size, me.align, me.mirrored);
    const KvRange other_need = kv_range(other, window, causal);
    const int64_t rb = std::max(need.begin, other.begin), re = std::min(need.end, other.end);
    if (rb < re) plan.recvs.push_back({peer, {rb, re}});
    const int64_t sb = std::max(other_need.begin, me.begin), se = std::min(other_need.end, me.end);
    if (sb < se) plan.sends.push_back({peer, {sb, se}});
  }
  return plan;
}

ForwardOutput forward(const ModelWeights& w, const int32_t* tokens, const Shard& shard, Comm& comm,
                      const ForwardHooks& hooks) {
  const ModelConfig& c = w.config;
  const int64_t n = shard.n_record, m = shard.size(), d = c.d_model, b = shard.begin;
  const int64_t G = c.n_global(n);
  const KvRange kv = kv_range(shard, c.window, c.causal);
  const int64_t kv_count = kv.end - kv.begin, own = b - kv.begin;  // own rows start at `own`
  const HaloPlan plan = plan_halo(shard, comm.rank(), comm.size(), c.window, c.causal);

  ForwardOutput out;
  out.n_global = G;
  out.global_positions.resize(c.n_layers * G);
  out.global_scores.resize(c.n_layers * G);

  bool (*const cancel)() = comm.size() == 1 ? hooks.cancel : nullptr;
  auto stop_if_cancelled = [&] {  // after an op that may have skipped tiles
    if (cancel && cancel()) throw Interrupted(hooks.cancel_message);
  };
  // Activations: [m, d] residual stream; q is reused for the attention output. GBs for a long
  // record: fresh pages advised huge and touched by every thread, a stop polled (core/memory.hpp).
  std::vector<float> x, q, k, v, scores(m);
  for (auto [a, count] : {std::pair{&x, m}, {&q, m}, {&k, kv_count}, {&v, kv_count}})
    if (resize_huge(*a, count * d, cancel)) throw Interrupted(hooks.cancel_message);
  std::vector<float> kg(G * d), vg(G * d), gamma(G);
  std::vector<int64_t> gpos(G);

  std::vector<const float*> tables;
  for (auto& t : w.embed) tables.push_back(t.data());
  cpu::embed({tokens, tables.data(), x.data(), m, c.n_tables(), c.vocab(), d});

  // A layer's stages by their share of its FLOPs (progress inside long layers).
  const ModelConfig::LayerFlops lf = c.layer_flops(n);
  auto stage_done = [&](int64_t l, double flops) {
    if (hooks.in_layer) hooks.in_layer(l, flops / lf.all());
  };
  // And inside a stage (a minute of a long record on a CPU): the ops poll `poll` before each
  // tile of rows, from every thread; each call counts a tile begun, and the calling thread (the
  // one that runs forward: Progress is not for other threads) says the share of the stage's
  // tiles begun. Also the cancel check, where there is one.
  struct Stage {
    int64_t layer = 0, tiles = 1;
    double from = 0, flops = 0;  // the layer's FLOPs before the stage, and the stage's
  } stage;
  std::atomic<int64_t> tiles_begun{0};
  const std::thread::id caller = std::this_thread::get_id();
  const cpu::Cancel poll = [&]() -> bool {
    const int64_t t = tiles_begun.fetch_add(1, std::memory_order_relaxed) + 1;
    if (hooks.in_layer && std::this_thread::get_id() == caller)
      hooks.in_layer(
          stage.layer,
          (stage.from + stage.flops * std::min(1.0, (double)t / (double)stage.tiles)) / lf.all());
    return cancel && cancel();
  };
  auto begin_stage = [&](int64_t l, double from, double flops, int64_t tiles) {
    stage = {l, std::max<int64_t>(tiles, 1), from, flops};
    tiles_begun.store(0, std::memory_order_relaxed);
  };
  const int64_t row_tiles = cpu::tile_count(b, m);  // (begin_stage takes at least 1)
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    cpu::AttnInputParams ip{x.data(),
                            L.attn_norm.data(),
                            L.wq.data(),
                            L.wk.data(),
                            L.wv.data(),
                            L.router_w1.data(),
                            L.router_b1.data(),
                            L.router_w2.data(),
                            L.router_b2[0],
                            q.data(),
                            k.data() + own * d,
                            v.data() + own * d,
                            scores.data(),
                            m,
                            d,
                            c.router_hidden,
                            b,
                            c.norm_eps};
    ip.cancel = poll;
    begin_stage(l, 0, lf.in, row_tiles);
    cpu::attn_inputs(ip);
    stop_if_cancelled();
    cpu::rope({q.data(), m, c.n_heads, c.head_dim(), b, c.rope_base, k.data() + own * d});
    stage_done(l, lf.in);

    // Halo: K and V rows (after RoPE) beyond the shard edges, in flight during routing and the
    // attention of interior rows. MPI keeps the order of messages between two ranks.
    std::vector<Transfer> sends, recvs;
    for (auto& [peer, r] : plan.sends) {
      const int64_t off = (r.begin - kv.begin) * d, bytes = (r.end - r.begin) * d * 4;
      sends.push_back({peer, k.data() + off, bytes});
      sends.push_back({peer, v.data() + off, bytes});
    }
    for (auto& [peer, r] : plan.recvs) {
      const int64_t off = (r.begin - kv.begin) * d, bytes = (r.end - r.begin) * d * 4;
      recvs.push_back({peer, k.data() + off, bytes});
      recvs.push_back({peer, v.data() + off, bytes});
    }
    const int token = comm.start_exchange(sends, recvs);

    // Routing over the whole record: local top-G proposals, gathered, one deterministic choice.
    if (const int64_t bad = cpu::find_nonfinite(scores.data(), m); bad >= 0)
      throw router_not_finite(b + bad, l);
    std::vector<cpu::GlobalCandidate> mine = cpu::top_g(scores.data(), m, b, G);
    std::vector<uint8_t> gathered;
    comm.allgatherv(mine.data(), (int64_t)(mine.size() * sizeof(cpu::GlobalCandidate)), gathered);
    std::vector<cpu::GlobalCandidate> all(gathered.size() / sizeof(cpu::GlobalCandidate));
    if (!all.empty()) std::memcpy(all.data(), gathered.data(), gathered.size());
    const std::vector<cpu::GlobalCandidate> S = cpu::select_global(std::move(all), G);
    for (int64_t j = 0; j < G; ++j) {
      out.global_positions[l * G + j] = S[j].pos;
      out.global_scores[l * G + j] = S[j].score;
      gpos[j] = S[j].pos;
    }
    // K, V and gate of the chosen tokens: each owner packs (index in S, K row, V row, gate); the
    // receivers place rows by index, so rank order need not be position order (mirrored layout).
    const int64_t row_floats = 2 * d + 2;  // index (as float bits of an int32 pair), K, V, gate
    std::vector<float> pack;
    for (int64_t j = 0; j < G; ++j) {
      if (gpos[j] < b || gpos[j] >= shard.end) continue;
      const int64_t r = own + gpos[j] - b;
      const int32_t idx = (int32_t)j;
      float idx_bits;
      std::memcpy(&idx_bits, &idx, 4);
      pack.push_back(idx_bits);
      pack.insert(pack.end(), k.begin() + r * d, k.begin() + (r + 1) * d);
      pack.insert(pack.end(), v.begin() + r * d, v.begin() + (r + 1) * d);
      pack.push_back((float)(1.0 / (1.0 + std::exp(-(double)S[j].score))));
    }
    comm.allgatherv(pack.data(), (int64_t)(pack.size() * sizeof(float)), gathered);
    if ((int64_t)gathered.size() != G * row_floats * 4)
      throw SystemError("global gather returned " + std::to_string(gathered.size()) +
                        " bytes, expected " + std::to_string(G * row_floats * 4));
    const float* gp = reinterpret_cast<const float*>(gathered.data());
    for (int64_t row = 0; row < G; ++row, gp += row_floats) {
      int32_t j;
      std::memcpy(&j, gp, 4);
      std::memcpy(kg.data() + j * d, gp + 1, d * 4);
      std::memcpy(vg.data() + j * d, gp + 1 + d, d * 4);
      gamma[j] = gp[1 + 2 * d];
    }

    cpu::AttentionParams ap{q.data(),
                            k.data(),
                            v.data(),
                            kv.begin,
                            kv_count,
                            kg.data(),
                            vg.data(),
                            gamma.data(),
                            gpos.data(),
                            G,
                            L.alpha.data(),
                            L.beta.data(),
                            q.data(),
                            m,
                            b,
                            n,
                            c.n_heads,
                            c.head_dim(),
                            c.window,
                            c.causal,
                            0,
                            m};
    ap.cancel = poll;
    begin_stage(l, lf.in, lf.attn, row_tiles);
    // Interior rows read only this shard's K/V; edge rows wait for the halo.
    const int64_t lo = std::min(m, c.window), hi = c.causal ? m : std::max(lo, m - c.window);
    ap.row_begin = lo;
    ap.row_end = hi;
    cpu::dsa_attention(ap);
    comm.wait_exchange(token);  // (one rank, the only one that cancels: nothing in flight)
    stop_if_cancelled();
    ap.row_begin = 0;
    ap.row_end = lo;
    cpu::dsa_attention(ap);
    ap.row_begin = hi;
    ap.row_end = m;
    cpu::dsa_attention(ap);
    stop_if_cancelled();
    stage_done(l, lf.in + lf.attn);

    cpu::LinearParams wo{q.data(), L.wo.data(), x.data(), m, d, d, b, true};
    wo.cancel = poll;
    begin_stage(l, lf.in + lf.attn, lf.wo, row_tiles);
    cpu::linear(wo);
    stop_if_cancelled();
    stage_done(l, lf.in + lf.attn + lf.wo);
    cpu::MlpParams mp{x.data(), L.mlp_norm.data(), L.w_up.data(), L.w_down.data(), m, d, c.d_ff,
                      b,        c.norm_eps};
    mp.cancel = poll;
    begin_stage(l, lf.in + lf.attn + lf.wo, lf.mlp, row_tiles);
    cpu::mlp_block(mp);
    stop_if_cancelled();
    if (hooks.after_layer) hooks.after_layer(l);
  }
  q = {};
  k = {};
  v = {};
  cpu::rmsnorm({x.data(), w.final_norm.data(), x.data(), m, d, c.norm_eps});
  const int64_t bad = cpu::find_nonfinite(x.data(), m * d);
  if (bad >= 0) throw output_not_finite(b + bad / d, bad % d);
  out.y = std::move(x);
  return out;
}

void rc_average_rows(std::vector<float>& fwd, const std::vector<float>& rev, int64_t m, int64_t d) {
  if ((int64_t)fwd.size() < m * d || (int64_t)rev.size() < m * d)
    throw SystemError("rc_average_rows: fewer rows than the shard");
#pragma omp parallel for schedule(static) if (m * d > (int64_t{1} << 18))
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < d; ++j)
      // Halves first: no overflow near FLT_MAX; the same bits as (f + r) / 2 but for subnormals.
      fwd[t * d + j] = 0.5f * fwd[t * d + j] + 0.5f * rev[(m - 1 - t) * d + j];
}

// A float32 overflow inside the layers is the usual cause (weights far larger than training
// leaves them; load_checkpoint has checked that each weight is finite).
static const char* const kOverflowHint =
    " (float32 overflowed in the layers before it: weights too large, or scaled wrongly on "
    "export?)";

NumericError router_not_finite(int64_t position, int64_t layer) {
  return NumericError("layer " + std::to_string(layer) + ": router score at position " +
                      std::to_string(position) + " is not finite" + kOverflowHint);
}

NumericError output_not_finite(int64_t position, int64_t dimension) {
  return NumericError("the model produced a non-finite value at record position " +
                      std::to_string(position) + ", dimension " + std::to_string(dimension) +
                      kOverflowHint);
}

}  // namespace sparsa
