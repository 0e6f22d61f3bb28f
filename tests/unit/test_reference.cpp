// Unit tests of the model math (spec section 2): a naive float64 reference of the whole network,
// written from the spec with DENSE n x n masked attention and no code from backends/cpu or
// model/forward, compared against sparsa::forward; the routing tie rule; RoPE at large positions;
// and the CPU ops (Ops.*).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backends/cpu/ops.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "core/signals.hpp"
#include "dist/comm.hpp"
#include "model/forward.hpp"
#include "model/weights.hpp"
#include "test_util.hpp"

namespace sparsa {
namespace {

// Max abs error of the engine's output against the float64 reference. Outputs are RMSNorm'd, so
// O(1); the engine accumulates in float32 (dot products over d <= 64, softmax sums over <= 130
// terms, 2 layers), which gives errors below 1e-6 here (measured); 1e-4 leaves margin while staying
// far below what a wrong mask, gate or mix moves (~1, see Reference.ToleranceCatchesPlausibleBugs).
constexpr double kTol = 1e-4;
// Router scores are O(1) and carry the float32 error of the layers below (measured ~1e-6).
constexpr double kScoreTol = 1e-5;

// Test data generator (splitmix64), independent of the engine's initialiser.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform(double a, double b) { return a + (b - a) * (double)(next() >> 11) * 0x1.0p-53; }
  std::vector<float> floats(size_t n, double a, double b) {
    std::vector<float> v(n);
    for (auto& e : v) e = (float)uniform(a, b);
    return v;
  }
};

// ---------------------------------------------------------------------------------------------
// The float64 reference, straight from spec section 2.

using Mat = std::vector<double>;  // row-major

// Deliberately wrong variants, to show that the comparison would notice such bugs.
struct Variant {
  bool gamma_in_softmax = false;   // gamma_j weights the softmax instead of multiplying outside
  int64_t window_delta = 0;        // W(i) built with w + delta
  bool swap_alpha_beta = false;    // Local * beta + Global * alpha
  bool causal_global_all = false;  // causal but S'(i) = S
};

struct RefOutput {
  Mat y;  // [n, d]
  int64_t G = 0;
  std::vector<int64_t> positions;  // [L, G] ascending
  std::vector<double> scores;      // [L, G]
};

double ref_gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

int64_t ref_n_global(const ModelConfig& c, int64_t n) {
  const int64_t ceil_div = n / c.global_every + (n % c.global_every != 0 ? 1 : 0);
  return std::min({c.global_max, n, std::max(c.global_min, ceil_div)});
}

Mat ref_rmsnorm(const Mat& x, const std::vector<float>& g, int64_t n, int64_t d, double eps) {
  Mat out(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0.0;
    for (int64_t e = 0; e < d; ++e) ss += x[i * d + e] * x[i * d + e];
    const double r = std::sqrt(ss / (double)d + eps);
    for (int64_t e = 0; e < d; ++e) out[i * d + e] = x[i * d + e] / r * (double)g[e];
  }
  return out;
}

// y = x W with W row-major [din, dout].
Mat ref_matmul(const Mat& x, const std::vector<float>& w, int64_t n, int64_t din, int64_t dout) {
  Mat y(n * dout, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < dout; ++o)
      for (int64_t e = 0; e < din; ++e) y[i * dout + o] += x[i * din + e] * (double)w[e * dout + o];
  return y;
}

// RoPE rotate-half on every head of row i at position first_pos + i, angle in double.
void ref_rope(double* x, int64_t n, int64_t H, int64_t dh, int64_t first_pos, double base) {
  const int64_t half = dh / 2;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h) {
      double* v = x + (i * H + h) * dh;
      for (int64_t k = 0; k < half; ++k) {
        const double angle =
            (double)(first_pos + i) * std::pow(base, -2.0 * (double)k / (double)dh);
        const double a = v[k], b = v[k + half];
        v[k] = a * std::cos(angle) - b * std::sin(angle);
        v[k + half] = a * std::sin(angle) + b * std::cos(angle);
      }
    }
}

// sum_j softmax_j(scores over mask) * gate_j * v_j for one head; zero when the mask is empty.
void masked_attend(const Mat& sc, const std::vector<char>& mask, const std::vector<double>& gate,
                   bool gate_in_softmax, const Mat& v, int64_t i, int64_t n, int64_t d, int64_t off,
                   int64_t dh, double* out) {
  double mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j)
    if (mask[i * n + j]) mx = std::max(mx, sc[i * n + j]);
  if (mx == -INFINITY) return;
  double denom = 0.0;
  for (int64_t j = 0; j < n; ++j)
    if (mask[i * n + j]) denom += std::exp(sc[i * n + j] - mx) * (gate_in_softmax ? gate[j] : 1.0);
  for (int64_t j = 0; j < n; ++j) {
    if (!mask[i * n + j]) continue;
    const double p = std::exp(sc[i * n + j] - mx) / denom * gate[j];
    for (int64_t e = 0; e < dh; ++e) out[e] += p * v[j * d + off + e];
  }
}

RefOutput reference_forward(const ModelWeights& w, const std::vector<int32_t>& tok, int64_t n,
                            const Variant& var = {}) {
  const ModelConfig& c = w.config;
  const int64_t d = c.d_model, H = c.n_heads, dh = d / H, T = c.n_tables(), r = c.router_hidden;
  const int64_t win = c.window + var.window_delta;
  RefOutput out;
  const int64_t G = out.G = ref_n_global(c, n);
  Mat x(n * d, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < d; ++e) x[i * d + e] += w.embed[t][tok[i * T + t] * d + e];

  for (const LayerWeights& L : w.layers) {
    const Mat h = ref_rmsnorm(x, L.attn_norm, n, d, c.norm_eps);
    Mat q = ref_matmul(h, L.wq, n, d, d), k = ref_matmul(h, L.wk, n, d, d);
    const Mat v = ref_matmul(h, L.wv, n, d, d), hid = ref_matmul(h, L.router_w1, n, d, r);
    ref_rope(q.data(), n, H, dh, 0, c.rope_base);
    ref_rope(k.data(), n, H, dh, 0, c.rope_base);

    std::vector<double> s(n), gamma(n), ones(n, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      s[i] = L.router_b2[0];
      for (int64_t j = 0; j < r; ++j)
        s[i] += ref_gelu(hid[i * r + j] + L.router_b1[j]) * (double)L.router_w2[j];
      gamma[i] = 1.0 / (1.0 + std::exp(-s[i]));
    }
    // S: the G largest scores; a stable sort keeps the smaller position first on equal scores.
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    std::vector<int64_t> S(order.begin(), order.begin() + G);
    std::sort(S.begin(), S.end());
    std::vector<char> in_s(n, 0);
    for (int64_t j : S) {
      in_s[j] = 1;
      out.positions.push_back(j);
      out.scores.push_back(s[j]);
    }
    // Dense n x n masks.
    std::vector<char> local(n * n), global(n * n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        local[i * n + j] = c.causal ? (j <= i && j >= i - win) : std::llabs(i - j) <= win;
        global[i * n + j] = in_s[j] && (!c.causal || var.causal_global_all || j <= i);
      }
    Mat a(n * d, 0.0), sc(n * n);
    for (int64_t hd = 0; hd < H; ++hd) {
      const int64_t off = hd * dh;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double dot = 0.0;
          for (int64_t e = 0; e < dh; ++e) dot += q[i * d + off + e] * k[j * d + off + e];
          sc[i * n + j] = dot / std::sqrt((double)dh);
        }
      const double alpha = var.swap_alpha_beta ? L.beta[hd] : L.alpha[hd];
      const double beta = var.swap_alpha_beta ? L.alpha[hd] : L.beta[hd];
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> loc(dh, 0.0), glo(dh, 0.0);
        masked_attend(sc, local, ones, false, v, i, n, d, off, dh, loc.data());
        masked_attend(sc, global, gamma, var.gamma_in_softmax, v, i, n, d, off, dh, glo.data());
        for (int64_t e = 0; e < dh; ++e) a[i * d + off + e] = alpha * loc[e] + beta * glo[e];
      }
    }
    const Mat ao = ref_matmul(a, L.wo, n, d, d);
    for (int64_t e = 0; e < n * d; ++e) x[e] += ao[e];
    Mat u = ref_matmul(ref_rmsnorm(x, L.mlp_norm, n, d, c.norm_eps), L.w_up, n, d, c.d_ff);
    for (auto& e : u) e = ref_gelu(e);
    const Mat down = ref_matmul(u, L.w_down, n, c.d_ff, d);
    for (int64_t e = 0; e < n * d; ++e) x[e] += down[e];
  }
  out.y = ref_rmsnorm(x, w.final_norm, n, d, c.norm_eps);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Helpers for the comparisons.

ModelConfig small_config(bool causal, int64_t d = 32) {
  ModelConfig c;
  c.d_model = d;
  c.n_layers = 2;
  c.n_heads = 2;
  c.d_ff = 48;
  c.window = 4;
  c.causal = causal;
  c.global_every = 8;
  c.global_min = 1;
  c.global_max = 16;
  c.router_hidden = 8;
  return c;
}

// init_model, then make every mixing weight and gain non-trivial.
ModelWeights make_weights(const ModelConfig& c, uint64_t seed) {
  ModelWeights w = init_model(c, seed);
  Rng rng{seed ^ 0xABCDEFull};
  for (auto& L : w.layers) {
    L.alpha = rng.floats(c.n_heads, 0.2, 1.5);
    L.beta = rng.floats(c.n_heads, 0.2, 1.5);
    L.router_b2[0] = (float)rng.uniform(-0.5, 0.5);
    for (auto& e : L.router_w2) e *= 3.0f;  // spread the scores, so the gates differ
    L.attn_norm = rng.floats(c.d_model, 0.5, 1.5);
    L.mlp_norm = rng.floats(c.d_model, 0.5, 1.5);
  }
  w.final_norm = rng.floats(c.d_model, 0.5, 1.5);
  return w;
}

std::vector<int32_t> make_tokens(const ModelConfig& c, int64_t n, uint64_t seed) {
  Rng rng{seed};
  std::vector<int32_t> t(n * c.n_tables());
  for (auto& e : t) e = (int32_t)(rng.next() % (uint64_t)c.vocab());
  return t;
}

ForwardOutput run_forward(const ModelWeights& w, const std::vector<int32_t>& tok, int64_t n) {
  auto comm = make_single_comm();
  return forward(w, tok.data(), shard_of(n, 0, 1), *comm);
}

double max_abs_diff(const std::vector<float>& a, const Mat& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::fabs((double)a[i] - b[i]));
  return m;
}

// Compares sparsa::forward with the reference; returns the engine's G.
int64_t expect_matches_reference(const ModelWeights& w, const std::vector<int32_t>& tok,
                                 int64_t n) {
  SCOPED_TRACE("n = " + std::to_string(n) + (w.config.causal ? " causal" : " bidirectional") +
               ", window " + std::to_string(w.config.window));
  const ForwardOutput got = run_forward(w, tok, n);
  const RefOutput ref = reference_forward(w, tok, n);
  EXPECT_LE(max_abs_diff(got.y, ref.y), kTol);  // also checks the sizes
  EXPECT_EQ(got.n_global, ref.G);
  EXPECT_EQ(got.global_positions, ref.positions);
  EXPECT_EQ(got.global_scores.size(), ref.scores.size());
  for (size_t i = 0; i < std::min(ref.scores.size(), got.global_scores.size()); ++i)
    EXPECT_NEAR(got.global_scores[i], ref.scores[i], kScoreTol) << "entry " << i;
  return got.n_global;
}

void check_config(const ModelConfig& c, const std::vector<int64_t>& ns, uint64_t seed) {
  const ModelWeights w = make_weights(c, seed);
  for (int64_t n : ns) expect_matches_reference(w, make_tokens(c, n, seed + n), n);
}

// ---------------------------------------------------------------------------------------------
// Whole model against the reference.

// ForwardHooks::cancel: polled before each tile of the layer's ops; once it says stop, forward
// throws Interrupted at the end of the op at work (inside the first layer here: after_layer never
// runs), and a cancel that never says stop leaves the result as it was, bit for bit.
std::atomic<int> g_polls{0}, g_stop_after{-1};
bool cancel_after_polls() {
  const int k = g_polls.fetch_add(1);
  return g_stop_after.load() >= 0 && k >= g_stop_after.load();
}

TEST(Reference, CancelStopsInsideALayerAndOtherwiseChangesNothing) {
  const ModelConfig c = small_config(false);
  const ModelWeights w = make_weights(c, 21);
  const int64_t n = 1000;  // 16 tiles of 64 rows an op
  const std::vector<int32_t> tok = make_tokens(c, n, 22);
  auto comm = make_single_comm();
  ForwardHooks hooks;
  int layers = 0;
  hooks.after_layer = [&](int64_t) { ++layers; };
  hooks.cancel = &cancel_after_polls;
  hooks.cancel_message = "stop now";
  g_polls = 0;
  g_stop_after = -1;
  const ForwardOutput whole = forward(w, tok.data(), shard_of(n, 0, 1), *comm, hooks);
  EXPECT_EQ(layers, c.n_layers);
  EXPECT_GT(g_polls.load(), 16);  // polled tile by tile
  const ForwardOutput plain = run_forward(w, tok, n);
  EXPECT_EQ(whole.y, plain.y);
  EXPECT_EQ(whole.global_positions, plain.global_positions);
  // The four activation arrays' first touch polls once a 64 MB piece: once each here.
  constexpr int kAllocPolls = 4;
  layers = 0;
  g_polls = 0;
  g_stop_after = kAllocPolls + 5;  // inside the first op of layer 0
  try {
    forward(w, tok.data(), shard_of(n, 0, 1), *comm, hooks);
    ADD_FAILURE() << "no stop";
  } catch (const Interrupted& e) {
    EXPECT_STREQ(e.what(), "stop now");
  }
  EXPECT_EQ(layers, 0);
  // the op's remaining tiles polled (and skipped), no more
  EXPECT_LT(g_polls.load(), kAllocPolls + 16 + 4);
  // A stop while the arrays are made (GBs of fresh pages for a long record: seconds) ends there.
  g_polls = 0;
  g_stop_after = 2;
  EXPECT_THROW(forward(w, tok.data(), shard_of(n, 0, 1), *comm, hooks), Interrupted);
  EXPECT_EQ(layers, 0);
  EXPECT_LE(g_polls.load(), kAllocPolls);
}

// Progress inside a layer comes tile by tile, not only at its four stage ends (a stage of a long
// record on a CPU takes minutes): from the thread that runs forward only, never going back within
// a layer, reaching each stage's end, and the results unchanged. With the threads shared, how
// many tiles the calling thread begins depends on the scheduler (a loaded 2-core machine once
// gave it too few), so the count and the last value are checked with one thread, where every
// tile is the caller's.
TEST(Reference, ProgressInsideALayerComesTileByTile) {
  const ModelConfig c = small_config(false);
  const ModelWeights w = make_weights(c, 23);
  const int64_t n = 1000;  // 16 tiles of 64 rows an op
  const std::vector<int32_t> tok = make_tokens(c, n, 24);
  auto comm = make_single_comm();
  const ModelConfig::LayerFlops lf = c.layer_flops(n);
  const ForwardOutput plain = run_forward(w, tok, n);
  const int threads = omp_get_max_threads();
  for (const bool one_thread : {false, true}) {
    SCOPED_TRACE(one_thread ? "1 thread" : "every thread");
    ForwardHooks hooks;
    std::vector<std::pair<int64_t, double>> said;
    const std::thread::id me = std::this_thread::get_id();
    bool other_thread = false;
    hooks.in_layer = [&](int64_t l, double f) {
      other_thread |= std::this_thread::get_id() != me;
      said.emplace_back(l, f);
    };
    if (one_thread) omp_set_num_threads(1);
    const ForwardOutput got = forward(w, tok.data(), shard_of(n, 0, 1), *comm, hooks);
    omp_set_num_threads(threads);
    EXPECT_FALSE(other_thread);
    EXPECT_EQ(got.y, plain.y);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      std::vector<double> f;
      for (const auto& [layer, v] : said)
        if (layer == l) f.push_back(v);
      ASSERT_FALSE(f.empty()) << l;
      for (size_t i = 1; i < f.size(); ++i) EXPECT_GE(f[i], f[i - 1]) << l << " " << i;
      EXPECT_GT(f.front(), 0.0);
      EXPECT_LE(f.back(), 1.0);
      if (!one_thread) continue;
      // more than the 3 stage ends (with 1 thread, a value a tile: 16 x 4 and more)
      EXPECT_GT(f.size(), 12u) << l;
      // the last value inside the MLP (the calling thread's last tile)
      EXPECT_GT(f.back(), (lf.in + lf.attn + lf.wo) / lf.all()) << l;
    }
  }
}

TEST(Reference, BidirectionalSmallN) { check_config(small_config(false), {1, 2, 7, 37, 130}, 11); }

TEST(Reference, CausalSmallN) { check_config(small_config(true), {1, 2, 7, 37, 130}, 12); }

TEST(Reference, WindowCoversRecord) {
  for (bool causal : {false, true})
    // A huge window ("full attention") must not cost memory in proportion to the window.
    for (int64_t window : {36, 37, 1000, 1000000000}) {
      ModelConfig c = small_config(causal);
      c.window = window;
      check_config(c, {37}, 13);
    }
}

TEST(Reference, WindowOne) {
  for (bool causal : {false, true}) {
    ModelConfig c = small_config(causal);
    c.window = 1;
    check_config(c, {2, 37, 130}, 15);
  }
}

// window 0: W(i) = {i}, as the spec's formula gives. With no global tokens, and with every token
// global (G = n): a routed set of G < n would hinge on near-ties here (a token's context is its
// own id, so many layer-1 scores differ only in their last bits; float and float64 may order them
// differently, as with window 1 for other seeds).
TEST(Reference, WindowZero) {
  for (bool causal : {false, true})
    for (int64_t g : {0, 1000}) {
      ModelConfig c = small_config(causal);
      c.window = 0;
      c.global_min = c.global_max = g;
      c.validate();
      check_config(c, {1, 2, 37, 130}, 15);
    }
}

TEST(Reference, EveryTokenGlobal) {
  for (bool causal : {false, true}) {
    ModelConfig c = small_config(causal);
    c.global_min = c.global_max = 1000;  // G = n
    const ModelWeights w = make_weights(c, 16);
    for (int64_t n : {7, 130}) EXPECT_EQ(expect_matches_reference(w, make_tokens(c, n, 17), n), n);
  }
}

TEST(Reference, NoGlobalTokens) {
  for (bool causal : {false, true}) {
    ModelConfig c = small_config(causal);
    c.global_min = c.global_max = 0;  // G = 0: attention is the local window only
    EXPECT_EQ(expect_matches_reference(make_weights(c, 18), make_tokens(c, 37, 19), 37), 0);
  }
}

struct Case {
  int64_t every, min, max, n, G;  // global_every, global_min, global_max, n -> G
};

TEST(Reference, GlobalMinEdges) {
  // global_min 0 still gives ceil(n / every) >= 1; global_min = n, n + 1 and > global_max (a
  // valid config: G = global_max).
  for (const Case& k : {Case{1000, 0, 16, 37, 1}, Case{8, 37, 64, 37, 37}, Case{8, 38, 64, 37, 37},
                        Case{8, 3, 3, 130, 3}, Case{1, 1, 16, 37, 16}, Case{8, 50, 16, 130, 16}}) {
    ModelConfig c = small_config(false);
    c.global_every = k.every;
    c.global_min = k.min;
    c.global_max = k.max;
    c.validate();
    EXPECT_EQ(expect_matches_reference(make_weights(c, 20), make_tokens(c, k.n, 21), k.n), k.G);
  }
}

TEST(Reference, GlobalCountFormula) {
  // G = min(global_max, n, max(global_min, ceil(n / global_every))), worked out by hand.
  const int64_t kBig = std::numeric_limits<int64_t>::max();
  for (const Case& k :
       {Case{4, 2, 10, 0, 0}, Case{4, 2, 10, 1, 1}, Case{4, 2, 10, 2, 2}, Case{4, 2, 10, 8, 2},
        Case{4, 2, 10, 9, 3}, Case{4, 2, 10, 40, 10}, Case{4, 2, 10, 41, 10},
        Case{4, 2, 10, 1000, 10}, Case{1000, 0, 128, 1, 1}, Case{1000, 0, 128, 1000, 1},
        Case{1000, 0, 128, 1001, 2}, Case{1000, 0, 0, 5000, 0}, Case{8, 1000, 1000, 37, 37},
        Case{kBig, 0, 128, 5, 1}, Case{kBig, 0, 128, int64_t{1} << 40, 1}}) {
    ModelConfig c;
    c.global_every = k.every;
    c.global_min = k.min;
    c.global_max = k.max;
    EXPECT_EQ(c.n_global(k.n), k.G)
        << "every " << k.every << " min " << k.min << " max " << k.max << " n " << k.n;
    EXPECT_EQ(ref_n_global(c, k.n), k.G);
  }
  // And forward reports the same G at several n.
  const ModelConfig c = small_config(true, 16);
  const ModelWeights w = make_weights(c, 22);
  for (int64_t n : {1, 8, 9, 64, 65, 128, 129})
    EXPECT_EQ(run_forward(w, make_tokens(c, n, 23), n).n_global, ref_n_global(c, n)) << n;
}

TEST(Reference, TimeSeriesTwoChannels) {
  for (bool causal : {false, true}) {
    ModelConfig c = small_config(causal, 16);
    c.kind = ModelKind::kTimeseries;
    c.channels = 2;
    c.ts_bins = 13;
    const ModelWeights w = make_weights(c, 24);
    ASSERT_EQ(w.embed.size(), 2u);
    for (int64_t n : {1, 37, 130}) expect_matches_reference(w, make_tokens(c, n, 25 + n), n);
  }
}

TEST(Reference, ToleranceCatchesPlausibleBugs) {
  // The comparison has teeth: each wrong variant of the math is far outside kTol.
  for (bool causal : {false, true}) {
    const ModelConfig c = small_config(causal);
    const ModelWeights w = make_weights(c, 26);
    const auto tok = make_tokens(c, 37, 27);
    const ForwardOutput got = run_forward(w, tok, 37);
    std::vector<Variant> variants(4);
    variants[0].gamma_in_softmax = true;
    variants[1].window_delta = -1;
    variants[2].swap_alpha_beta = true;
    variants[3].causal_global_all = true;
    for (size_t i = 0; i < variants.size(); ++i) {
      if (variants[i].causal_global_all && !causal) continue;
      EXPECT_GT(max_abs_diff(got.y, reference_forward(w, tok, 37, variants[i]).y), 10 * kTol)
          << "variant " << i;
    }
  }
}

TEST(Reference, NonFiniteWeightThrows) {
  const ModelConfig c = small_config(false);
  const auto tok = make_tokens(c, 37, 28);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_NO_THROW(run_forward(make_weights(c, 29), tok, 37));  // control
  ModelWeights w = make_weights(c, 29);
  w.layers[0].wq[5] = nan;
  EXPECT_THROW(run_forward(w, tok, 37), NumericError);
  w = make_weights(c, 29);
  w.layers[1].router_w1[3] = nan;  // reaches the router scores only: the message names layer 1
  try {
    run_forward(w, tok, 37);
    ADD_FAILURE() << "no error";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1: router score at position 0 is not finite "
                                         "(float32 overflowed"),
              std::string::npos)
        << e.what();
  }
  w = make_weights(c, 29);
  w.layers[1].w_down[7] = inf;
  try {
    run_forward(w, tok, 37);
    ADD_FAILURE() << "no error";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite value at record position"), std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// The tie rule: on equal scores the smaller position wins.

std::vector<int64_t> positions_of(const std::vector<cpu::GlobalCandidate>& v) {
  std::vector<int64_t> p;
  for (auto& e : v) p.push_back(e.pos);
  return p;
}

TEST(ReferenceTies, TopGPrefersSmallerPosition) {
  const std::vector<float> s = {1.0f, 2.0f, 2.0f, 2.0f, 0.5f, 2.0f};
  EXPECT_EQ(positions_of(cpu::top_g(s.data(), 6, 10, 2)), (std::vector<int64_t>{11, 12}));
  EXPECT_EQ(positions_of(cpu::top_g(s.data(), 6, 10, 4)), (std::vector<int64_t>{11, 12, 13, 15}));
  EXPECT_EQ(positions_of(cpu::top_g(s.data(), 6, 10, 5)),
            (std::vector<int64_t>{11, 12, 13, 15, 10}));  // best first
  const std::vector<float> flat(100, 0.25f);
  EXPECT_EQ(positions_of(cpu::top_g(flat.data(), 100, 50, 7)),
            (std::vector<int64_t>{50, 51, 52, 53, 54, 55, 56}));
  const std::vector<float> zeros = {0.0f, -0.0f, 0.0f};  // -0 == +0: still a tie
  EXPECT_EQ(positions_of(cpu::top_g(zeros.data(), 3, 0, 1)), (std::vector<int64_t>{0}));
  EXPECT_TRUE(cpu::top_g(s.data(), 6, 10, 0).empty());
  const std::vector<float> bad = {1.0f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(cpu::top_g(bad.data(), 2, 0, 1), NumericError);
}

TEST(ReferenceTies, SelectGlobalAcrossTwoRanks) {
  // Rank 0 owns positions [0, 50), rank 1 [50, 100); all scores equal. The union is passed with
  // rank 1's proposals first, so only the tie rule can pick the smaller positions.
  const std::vector<float> a(50, 1.0f), b(50, 1.0f);
  auto pa = cpu::top_g(a.data(), 50, 0, 5), pb = cpu::top_g(b.data(), 50, 50, 5);
  std::vector<cpu::GlobalCandidate> all = pb;
  all.insert(all.end(), pa.begin(), pa.end());
  EXPECT_EQ(positions_of(cpu::select_global(all, 5)), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  // A higher score on rank 1 wins; the rest of the ties go to rank 0's smaller positions;
  // the result is in ascending position order.
  std::vector<float> b2 = b;
  b2[10] = 3.0f;
  pb = cpu::top_g(b2.data(), 50, 50, 4);
  all = pb;
  all.insert(all.end(), pa.begin(), pa.end());
  const auto sel = cpu::select_global(all, 4);
  EXPECT_EQ(positions_of(sel), (std::vector<int64_t>{0, 1, 2, 60}));
  EXPECT_EQ(sel[3].score, 3.0f);
  // Equal scores straddling the two lists: 49 (rank 0) beats 50 (rank 1).
  std::vector<cpu::GlobalCandidate> edge = {{0.5f, 50}, {0.5f, 49}, {0.7f, 99}};
  EXPECT_EQ(positions_of(cpu::select_global(edge, 2)), (std::vector<int64_t>{49, 99}));
  EXPECT_EQ(positions_of(cpu::select_global(edge, 10)), (std::vector<int64_t>{49, 50, 99}));
}

TEST(ReferenceTies, ModelWithEqualScoresPicksFirstPositions) {
  for (bool causal : {false, true}) {
    ModelConfig c = small_config(causal);
    ModelWeights w = make_weights(c, 30);
    for (auto& L : w.layers) {
      std::fill(L.router_w2.begin(), L.router_w2.end(), 0.0f);
      L.router_b2[0] = 0.5f;  // every score is exactly 0.5
    }
    const int64_t n = 130, G = ref_n_global(c, n);  // ceil(130 / 8) = 17 -> global_max 16
    ASSERT_EQ(G, 16);
    const auto tok = make_tokens(c, n, 31);
    const ForwardOutput got = run_forward(w, tok, n);
    ASSERT_EQ(got.n_global, G);
    for (int64_t l = 0; l < c.n_layers; ++l)
      for (int64_t j = 0; j < G; ++j) {
        EXPECT_EQ(got.global_positions[l * G + j], j) << "layer " << l;
        EXPECT_EQ(got.global_scores[l * G + j], 0.5f);
      }
    expect_matches_reference(w, tok, n);
  }
}

TEST(ReferenceTies, RepeatedTokenTiesInEveryTileSlot) {
  // Layer 0's score depends on the token alone, so a record of one repeated token is an n-way tie:
  // S must be {0..G-1} and the scores equal, whatever slot of a 64-row GEMM tile a row sits in.
  const ModelConfig c = small_config(false);
  const ModelWeights w = make_weights(c, 32);
  const int64_t n = 130, G = ref_n_global(c, n);
  for (int32_t t = 0; t < 7; ++t) {
    const ForwardOutput got = run_forward(w, std::vector<int32_t>(n, t), n);
    ASSERT_EQ(got.n_global, G);
    for (int64_t j = 0; j < G; ++j) {
      EXPECT_EQ(got.global_positions[j], j) << "token " << t;
      EXPECT_EQ(got.global_scores[j], got.global_scores[0]) << "token " << t;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE at large positions: the angle must be formed in double.

struct RopeCheck {
  double max_err = 0.0;         // engine vs double reference, relative to max |input|
  double max_float_diff = 0.0;  // double reference vs a float-angle computation
};

RopeCheck check_rope(int64_t first_pos, int64_t n) {
  const int64_t H = 2, dh = 16, d = H * dh, half = dh / 2;
  const double base = 10000.0;
  Rng rng{(uint64_t)first_pos};
  const std::vector<float> in = rng.floats(n * d, -1.0, 1.0);
  std::vector<float> x = in;
  cpu::rope({x.data(), n, H, dh, first_pos, base});
  Mat ref(in.begin(), in.end());
  ref_rope(ref.data(), n, H, dh, first_pos, base);
  RopeCheck r;
  double mag = 0.0;
  for (float v : in) mag = std::max(mag, (double)std::fabs(v));
  for (int64_t i = 0; i < n * d; ++i) r.max_err = std::max(r.max_err, std::fabs(x[i] - ref[i]));
  r.max_err /= mag;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t k = 0; k < half; ++k) {
        const float fa = (float)(first_pos + i) * std::pow(10000.0f, -2.0f * (float)k / (float)dh);
        const int64_t o = i * d + h * dh;
        const double a = in[o + k], b = in[o + k + half];
        const double f0 = a * std::cos((double)fa) - b * std::sin((double)fa);
        r.max_float_diff = std::max(r.max_float_diff, std::fabs(f0 - ref[o + k]));
      }
  return r;
}

TEST(ReferenceRope, Near2To31) {
  const RopeCheck r = check_rope(2147483000, 1300);  // crosses 2^31 = 2147483648
  EXPECT_LE(r.max_err, 1e-6);
}

TEST(ReferenceRope, Near1e9AndFloatAngleIsWrong) {
  const RopeCheck r = check_rope(1000000000 - 50, 100);
  EXPECT_LE(r.max_err, 1e-6);
  EXPECT_GT(r.max_float_diff, 1e-2);  // a float angle is off by radians: the test has teeth
}

TEST(ReferenceRope, SmallPositions) {
  EXPECT_LE(check_rope(0, 70).max_err, 1e-6);
  EXPECT_LE(check_rope(123, 5).max_err, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Ops.

TEST(Ops, RmsNorm) {
  Rng rng{40};
  const int64_t n = 5, dim = 24;
  const std::vector<float> gain = rng.floats(dim, 0.5, 1.5);
  for (double scale : {1.0, 1e-3}) {
    for (double eps : {1e-6, 1e-2}) {  // 1e-3 inputs with eps 1e-2: eps dominates the norm
      std::vector<float> x = rng.floats(n * dim, -2.0 * scale, 2.0 * scale), y(n * dim);
      const Mat ref = ref_rmsnorm(Mat(x.begin(), x.end()), gain, n, dim, eps);
      cpu::rmsnorm({x.data(), gain.data(), y.data(), n, dim, eps});
      for (int64_t i = 0; i < n * dim; ++i)
        EXPECT_NEAR(y[i], ref[i], 1e-6 * std::max(1.0, std::fabs(ref[i]))) << i;
      cpu::rmsnorm({x.data(), gain.data(), x.data(), n, dim, eps});  // in place
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float)));
    }
  }
}

TEST(Ops, Gelu) {
  double tanh_gap = 0.0;
  for (double x : {-6.0, -3.0, -2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 3.0, 6.0}) {
    const double ref = 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    EXPECT_NEAR(cpu::gelu((float)x), ref, 1e-7 * std::max(1.0, std::fabs(ref))) << x;
    const double tanh_form =
        0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    tanh_gap = std::max(tanh_gap, std::fabs(tanh_form - ref));
  }
  EXPECT_GT(tanh_gap, 1e-5);  // the tolerance above tells the erf form from the tanh one
}

TEST(Ops, LinearMidTileShard) {
  Rng rng{41};
  const int64_t n = 100, din = 24, dout = 40;
  const std::vector<float> x = rng.floats(n * din, -1, 1), w = rng.floats(din * dout, -1, 1);
  const Mat ref = ref_matmul(Mat(x.begin(), x.end()), w, n, din, dout);
  std::vector<float> y(n * dout, 7.0f);
  cpu::linear({x.data(), w.data(), y.data(), n, din, dout, 10, false});  // rows at 10..109
  EXPECT_LE(max_abs_diff(y, ref), 1e-5);
  const std::vector<float> y0 = rng.floats(n * dout, -1, 1);
  y = y0;
  cpu::linear({x.data(), w.data(), y.data(), n, din, dout, 10, true});
  Mat acc = ref;
  for (int64_t i = 0; i < n * dout; ++i) acc[i] += y0[i];
  EXPECT_LE(max_abs_diff(y, acc), 1e-5);
}

TEST(Ops, LinearShardInvariant) {
  Rng rng{42};
  const int64_t n = 130, din = 24, dout = 40;
  const std::vector<float> x = rng.floats(n * din, -1, 1), w = rng.floats(din * dout, -1, 1);
  std::vector<float> full(n * dout), split(n * dout), mid(100 * dout);
  cpu::linear({x.data(), w.data(), full.data(), n, din, dout, 0, false});
  EXPECT_LE(max_abs_diff(full, ref_matmul(Mat(x.begin(), x.end()), w, n, din, dout)), 1e-5);
  cpu::linear({x.data(), w.data(), split.data(), 50, din, dout, 0, false});
  cpu::linear({x.data() + 50 * din, w.data(), split.data() + 50 * dout, 80, din, dout, 50, false});
  EXPECT_EQ(0, std::memcmp(full.data(), split.data(), full.size() * sizeof(float)));
  cpu::linear({x.data() + 10 * din, w.data(), mid.data(), 100, din, dout, 10, false});
  EXPECT_EQ(0, std::memcmp(full.data() + 10 * dout, mid.data(), mid.size() * sizeof(float)));
}

}  // namespace
}  // namespace sparsa

// The band's key count in closed form against the count row by row, both kinds of band, records
// shorter and longer than the window.
TEST(Config, BandKeysClosedForm) {
  for (bool causal : {false, true})
    for (int64_t w : {0, 1, 3, 256})
      for (int64_t n : {1, 2, 3, 4, 7, 255, 256, 257, 600}) {
        double want = 0;
        for (int64_t i = 0; i < n; ++i)
          want += (double)((causal ? i : std::min(n - 1, i + w)) - std::max<int64_t>(0, i - w) + 1);
        EXPECT_EQ(sparsa::band_keys(n, w, causal), want) << n << " " << w << " " << causal;
      }
}

// docs/model.md's configuration table says each key's default: it must be the code's (a config
// may leave keys out; the table is where a user finds what they then are).
TEST(Config, DocumentedDefaultsAreTheCodes) {
  std::ifstream doc(sparsa::testing::source_dir() + "/docs/model.md");
  ASSERT_TRUE(doc) << "docs/model.md";
  sparsa::ModelConfig ts;  // every key, the time-series ones too, at its default
  ts.kind = sparsa::ModelKind::kTimeseries;
  std::map<std::string, std::string> code;
  std::istringstream toml(ts.to_toml());
  for (std::string line; std::getline(toml, line);)
    if (const size_t eq = line.find(" = "); eq != std::string::npos) {
      std::string v = line.substr(eq + 3);
      if (v.size() >= 2 && v.front() == '"') v = v.substr(1, v.size() - 2);
      code[line.substr(0, eq)] = v;
    }
  code["kind"] = sparsa::to_string(sparsa::ModelConfig{}.kind);
  auto cells = [](const std::string& row) {
    std::vector<std::string> out;
    std::string cell;
    std::istringstream in(row.substr(1));
    while (std::getline(in, cell, '|')) {
      while (!cell.empty() && cell.front() == ' ') cell.erase(0, 1);
      while (!cell.empty() && cell.back() == ' ') cell.pop_back();
      out.push_back(cell);
    }
    return out;
  };
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string part; std::getline(in, part, ',');) {
      while (!part.empty() && part.front() == ' ') part.erase(0, 1);
      out.push_back(part);
    }
    return out;
  };
  bool in_table = false;
  size_t keys_seen = 0;
  for (std::string line; std::getline(doc, line);) {
    if (line.rfind("| key | meaning |", 0) == 0) {
      in_table = true;
      ASSERT_EQ(cells(line).back(), "default") << line;
      continue;
    }
    if (!in_table || line.rfind("|---", 0) == 0) continue;
    if (line.empty() || line[0] != '|') break;
    const std::vector<std::string> c = cells(line);
    const std::vector<std::string> keys = split(c.front()), values = split(c.back());
    ASSERT_EQ(keys.size(), values.size()) << line;
    for (size_t i = 0; i < keys.size(); ++i) {
      ++keys_seen;
      ASSERT_TRUE(code.count(keys[i])) << "docs/model.md names an unknown key: " << keys[i];
      if (keys[i] == "kind") {  // no default: a config without it is refused
        EXPECT_EQ(values[i], "(required)") << line;
        EXPECT_THROW(sparsa::parse_model_config("[model]\nd_model = 64\n", "no-kind.toml"),
                     sparsa::ConfigError);
        continue;
      }
      const std::string& want = code[keys[i]];
      char* end = nullptr;
      const double a = std::strtod(values[i].c_str(), &end);
      if (*end == 0 && !values[i].empty())
        EXPECT_EQ(a, std::strtod(want.c_str(), nullptr)) << keys[i];
      else
        EXPECT_EQ(values[i], want) << keys[i];
    }
  }
  EXPECT_EQ(keys_seen, code.size()) << "every key of the code is in the table";
}
