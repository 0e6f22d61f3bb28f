#include "backends/cpu/ops.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <queue>

#include "core/error.hpp"

namespace sparsa::cpu {

void init_threads() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

float gelu(float x) {
  const double xd = x;
  return (float)(0.5 * xd * (1.0 + std::erf(xd * 0.70710678118654752440)));
}

int64_t find_nonfinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

static void rmsnorm_row(const float* x, const float* g, float* out, int64_t dim, double eps) {
  double ss = 0.0;
  for (int64_t j = 0; j < dim; ++j) ss += (double)x[j] * (double)x[j];
  const double inv = 1.0 / std::sqrt(ss / (double)dim + eps);
  for (int64_t j = 0; j < dim; ++j) out[j] = (float)((double)x[j] * inv * (double)g[j]);
}

void rmsnorm(const RmsNormParams& p) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n_tokens; ++i)
    rmsnorm_row(p.x + i * p.dim, p.gain, p.out + i * p.dim, p.dim, p.eps);
}

// Tiles of a shard: tile t covers record positions [t*kRowTile, (t+1)*kRowTile).
struct TileRange {
  int64_t first, count;
};
static TileRange tiles_of(int64_t first_pos, int64_t n_tokens) {
  if (n_tokens <= 0) return {0, 0};
  const int64_t t0 = first_pos / kRowTile, t1 = (first_pos + n_tokens - 1) / kRowTile + 1;
  return {t0, t1 - t0};
}

int64_t tile_count(int64_t first_pos, int64_t n_tokens) {
  return tiles_of(first_pos, n_tokens).count;
}

// The shard rows [r0, r1) that fall in tile `tile`, and the tile slot of row r0.
struct TileRows {
  int64_t r0, r1, slot0;
};
static TileRows tile_rows(int64_t first_pos, int64_t n_tokens, int64_t tile) {
  const int64_t tile_pos = tile * kRowTile;
  const int64_t r0 = std::max<int64_t>(0, tile_pos - first_pos);
  const int64_t r1 = std::min<int64_t>(n_tokens, tile_pos + kRowTile - first_pos);
  return {r0, r1, first_pos + r0 - tile_pos};
}

// One GEMM of exactly kRowTile rows: the `rows` rows of x (at tile slots slot0..) times W into y
// (= or +=). The other slots are zero so that M, N, K never depend on the shard.
static void gemm_tile(const float* x, const float* w, float* y, int64_t rows, int64_t slot0,
                      int64_t d_in, int64_t d_out, bool accumulate, std::vector<float>& xs,
                      std::vector<float>& ys) {
  xs.assign(kRowTile * d_in, 0.0f);
  std::memcpy(xs.data() + slot0 * d_in, x, rows * d_in * sizeof(float));
  ys.resize(kRowTile * d_out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)kRowTile, (int)d_out, (int)d_in, 1.0f,
              xs.data(), (int)d_in, w, (int)d_out, 0.0f, ys.data(), (int)d_out);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = ys.data() + (slot0 + r) * d_out;
    float* dst = y + r * d_out;
    if (accumulate)
      for (int64_t j = 0; j < d_out; ++j) dst[j] += src[j];
    else
      std::memcpy(dst, src, d_out * sizeof(float));
  }
}

void linear(const LinearParams& p) {
  init_threads();
  const TileRange tr = tiles_of(p.first_pos, p.n_tokens);
#pragma omp parallel
  {
    std::vector<float> xs, ys;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tr.count; ++t) {
      if (p.cancel && p.cancel()) continue;
      const TileRows tw = tile_rows(p.first_pos, p.n_tokens, tr.first + t);
      gemm_tile(p.x + tw.r0 * p.d_in, p.w, p.y + tw.r0 * p.d_out, tw.r1 - tw.r0, tw.slot0, p.d_in,
                p.d_out, p.accumulate, xs, ys);
    }
  }
}

// One row's router score from that row alone, in a fixed order. Not a GEMM: BLAS rounds a row
// differently in different slots of a tile, so equal tokens got unequal scores and rounding, not
// the spec's tie rule (smaller position wins), chose between them (e.g. every token of layer 0).
static float router_row(const float* h, const float* w1, const float* b1, const float* w2, float b2,
                        int64_t d, int64_t hidden, std::vector<double>& hid) {
  hid.assign(hidden, 0.0);
  for (int64_t e = 0; e < d; ++e)
    for (int64_t j = 0; j < hidden; ++j) hid[j] += (double)h[e] * (double)w1[e * hidden + j];
  double s = 0.0;
  for (int64_t j = 0; j < hidden; ++j)
    s += (double)gelu((float)(hid[j] + (double)b1[j])) * (double)w2[j];
  return (float)(s + (double)b2);
}

void attn_inputs(const AttnInputParams& p) {
  init_threads();
  const TileRange tr = tiles_of(p.first_pos, p.n_tokens);
#pragma omp parallel
  {
    std::vector<float> h, xs, ys;
    std::vector<double> hid;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tr.count; ++t) {
      if (p.cancel && p.cancel()) continue;
      const TileRows tw = tile_rows(p.first_pos, p.n_tokens, tr.first + t);
      const int64_t m = tw.r1 - tw.r0;
      h.resize(m * p.d);
      for (int64_t r = 0; r < m; ++r)
        rmsnorm_row(p.x + (tw.r0 + r) * p.d, p.norm, h.data() + r * p.d, p.d, p.eps);
      gemm_tile(h.data(), p.wq, p.q + tw.r0 * p.d, m, tw.slot0, p.d, p.d, false, xs, ys);
      gemm_tile(h.data(), p.wk, p.k + tw.r0 * p.d, m, tw.slot0, p.d, p.d, false, xs, ys);
      gemm_tile(h.data(), p.wv, p.v + tw.r0 * p.d, m, tw.slot0, p.d, p.d, false, xs, ys);
      for (int64_t r = 0; r < m; ++r)
        p.scores[tw.r0 + r] = router_row(h.data() + r * p.d, p.router_w1, p.router_b1, p.router_w2,
                                         p.router_b2, p.d, p.hidden, hid);
    }
  }
}

void rope(const RopeParams& p) {
  const int64_t half = p.head_dim / 2, d = p.n_heads * p.head_dim;
  std::vector<double> theta(half);
  for (int64_t k = 0; k < half; ++k)
    theta[k] = std::pow(p.base, -2.0 * (double)k / (double)p.head_dim);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n_tokens; ++i) {
    const double pos = (double)(p.first_pos + i);
    for (int64_t k = 0; k < half; ++k) {
      // NOTE: the angle is formed in double: at positions near 1e9 a float angle is off by
      // whole radians (spec section 2).
      const double a = pos * theta[k];
      const double c = std::cos(a), s = std::sin(a);
      for (float* base : {p.x, p.x2}) {
        if (!base) continue;
        float* row = base + i * d;
        for (int64_t h = 0; h < p.n_heads; ++h) {
          float* x = row + h * p.head_dim;
          const double x0 = x[k], x1 = x[k + half];
          x[k] = (float)(x0 * c - x1 * s);
          x[k + half] = (float)(x0 * s + x1 * c);
        }
      }
    }
  }
}

void router(const RouterParams& p) {
#pragma omp parallel
  {
    std::vector<double> hid;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < p.n_tokens; ++r)
      p.scores[r] = router_row(p.h + r * p.d, p.w1, p.b1, p.w2, p.b2, p.d, p.hidden, hid);
  }
}

std::vector<GlobalCandidate> top_g(const float* scores, int64_t n, int64_t first_pos, int64_t g) {
  std::vector<GlobalCandidate> heap;  // a min-heap on `better`: the worst kept candidate on top
  if (g <= 0) return heap;
  heap.reserve(std::min(g, n));
  auto worse_first = [](const GlobalCandidate& a, const GlobalCandidate& b) {
    return better(a, b);
  };
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(scores[i]))
      throw NumericError("router score at position " + std::to_string(first_pos + i) +
                         " is not finite");
    GlobalCandidate c{scores[i], first_pos + i};
    if ((int64_t)heap.size() < g) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), worse_first);
    } else if (better(c, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), worse_first);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), worse_first);
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  return heap;
}

std::vector<GlobalCandidate> select_global(std::vector<GlobalCandidate> all, int64_t g) {
  g = std::min<int64_t>(g, (int64_t)all.size());
  std::partial_sort(all.begin(), all.begin() + g, all.end(), better);
  all.resize(g);
  std::sort(all.begin(), all.end(),
            [](const GlobalCandidate& a, const GlobalCandidate& b) { return a.pos < b.pos; });
  return all;
}

// Attention runs on the same 64-row tiles as the GEMMs. For a query tile at record positions
// [t0, t0 + 64) the band keys form one contiguous span [t0 - w, t0 + 64 + w) (clipped to the
// record), so scores and weighted sums are two small GEMMs per head whose shapes depend only on
// the tile's position, never on the shard. Keys outside a row's window get weight exactly 0.
// Only the keys that the written rows can see are copied (the rest stay 0): during the interior
// phase the halo rows may still be in flight.
namespace {

struct AttnScratch {
  std::vector<float> qs, ks, vs, sc, o, out, denom;
};

// Softmax numerators of one score row over columns [lo, hi], 0 elsewhere; returns the sum.
// `gate` (optional) multiplies each numerator after the sum is taken (the global gate).
float softmax_row(float* row, int64_t ncols, int64_t lo, int64_t hi, float scale,
                  const float* gate) {
  if (hi < lo) {
    std::fill(row, row + ncols, 0.0f);
    return 0.0f;
  }
  float m = -INFINITY;
  for (int64_t j = lo; j <= hi; ++j) m = std::max(m, row[j] * scale);
  float denom = 0.0f;
  for (int64_t j = 0; j < lo; ++j) row[j] = 0.0f;
  for (int64_t j = lo; j <= hi; ++j) {
    const float e = std::exp(row[j] * scale - m);
    denom += e;
    row[j] = gate ? e * gate[j] : e;
  }
  for (int64_t j = hi + 1; j < ncols; ++j) row[j] = 0.0f;
  return denom;
}

}  // namespace

void dsa_attention(const AttentionParams& p) {
  init_threads();
  if (p.row_end <= p.row_begin) return;
  const int64_t d = p.n_heads * p.head_dim, dh = p.head_dim, T = kRowTile, w = p.window;
  const int64_t n = p.n_record, G = p.n_global;
  const float scale = 1.0f / std::sqrt((float)dh);
  const TileRange tr = tiles_of(p.first_pos + p.row_begin, p.row_end - p.row_begin);
  // Widest key span of a tile: T + 2w keys (T + w causal), never more than the record (causal:
  // its T-row tiles). A causal tile's span does not stop at the record's end (keys past it are
  // zeros, outside every row's window): its GEMMs' shapes, and so their rounding, depend on the
  // tile's place alone, so a causal record's earlier rows keep their bits when rows are
  // appended. (Bidirectional rows near the end see the appended rows anyway.)
  const int64_t span_max =
      p.causal ? T + std::min(w, n) : std::min<int64_t>(n, T + 2 * std::min(w, n));
#pragma omp parallel
  {
    AttnScratch sb;
    sb.qs.resize(T * dh);
    sb.ks.resize(span_max * dh);
    sb.vs.resize(span_max * dh);
    sb.sc.resize(T * std::max(span_max, G));
    sb.o.resize(T * dh);
    sb.out.resize(T * d);
    sb.denom.resize(T);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tr.count; ++t) {
      if (p.cancel && p.cancel()) continue;
      const int64_t tile_pos = (tr.first + t) * T;
      // Shard rows of this tile that this call writes, and their slots in the tile.
      const int64_t r0 = std::max(p.row_begin, tile_pos - p.first_pos);
      const int64_t r1 = std::min(p.row_end, tile_pos + T - p.first_pos);
      const int64_t s0 = p.first_pos + r0 - tile_pos, s1 = p.first_pos + r1 - tile_pos;
      const int64_t key0 = std::max<int64_t>(0, tile_pos - w);
      // causal: may pass n (zeros there)
      const int64_t key1 = p.causal ? tile_pos + T : std::min<int64_t>(n, tile_pos + T + w);
      const int64_t nk = key1 - key0;
      // Keys visible to the written rows.
      const int64_t need0 = std::max<int64_t>(0, tile_pos + s0 - w);
      const int64_t need1 = std::min<int64_t>(n, tile_pos + s1 + (p.causal ? 0 : w));
      std::fill(sb.out.begin(), sb.out.end(), 0.0f);
      for (int64_t h = 0; h < p.n_heads; ++h) {
        const int64_t off = h * dh;
        std::fill(sb.qs.begin(), sb.qs.end(), 0.0f);
        for (int64_t s = s0; s < s1; ++s)
          std::memcpy(&sb.qs[s * dh], p.q + (tile_pos + s - p.first_pos) * d + off, dh * 4);
        std::fill(sb.ks.begin(), sb.ks.begin() + nk * dh, 0.0f);
        std::fill(sb.vs.begin(), sb.vs.begin() + nk * dh, 0.0f);
        for (int64_t j = need0; j < need1; ++j) {
          std::memcpy(&sb.ks[(j - key0) * dh], p.k + (j - p.kv_begin) * d + off, dh * 4);
          std::memcpy(&sb.vs[(j - key0) * dh], p.v + (j - p.kv_begin) * d + off, dh * 4);
        }
        // Local: scores [T, nk] = Q K^T; masked softmax numerators; O = P V.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)nk, (int)dh, 1.0f,
                    sb.qs.data(), (int)dh, sb.ks.data(), (int)dh, 0.0f, sb.sc.data(), (int)nk);
        for (int64_t s = 0; s < T; ++s) {
          const int64_t i = tile_pos + s;
          const bool written = s >= s0 && s < s1;
          const int64_t lo = std::max<int64_t>(0, i - w) - key0;
          const int64_t hi = (p.causal ? i : std::min<int64_t>(n - 1, i + w)) - key0;
          sb.denom[s] =
              softmax_row(&sb.sc[s * nk], nk, written ? lo : 1, written ? hi : 0, scale, nullptr);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)dh, (int)nk, 1.0f,
                    sb.sc.data(), (int)nk, sb.vs.data(), (int)dh, 0.0f, sb.o.data(), (int)dh);
        for (int64_t s = s0; s < s1; ++s) {
          const float f = p.alpha[h] / sb.denom[s];
          for (int64_t e = 0; e < dh; ++e) sb.out[s * d + off + e] = f * sb.o[s * dh + e];
        }
        if (G == 0) continue;
        // Global: scores [T, G] against the gathered set; the gate scales numerators only.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)G, (int)dh, 1.0f,
                    sb.qs.data(), (int)dh, p.k_global + off, (int)d, 0.0f, sb.sc.data(), (int)G);
        for (int64_t s = 0; s < T; ++s) {
          const int64_t i = tile_pos + s;
          const bool written = s >= s0 && s < s1;
          const int64_t ng =
              p.causal ? std::upper_bound(p.pos_global, p.pos_global + G, i) - p.pos_global : G;
          sb.denom[s] = softmax_row(&sb.sc[s * G], G, 0, written ? ng - 1 : -1, scale, p.gamma);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)dh, (int)G, 1.0f,
                    sb.sc.data(), (int)G, p.v_global + off, (int)d, 0.0f, sb.o.data(), (int)dh);
        for (int64_t s = s0; s < s1; ++s) {
          if (sb.denom[s] == 0.0f) continue;  // S'(i) is empty: Global_i = 0
          const float f = p.beta[h] / sb.denom[s];
          for (int64_t e = 0; e < dh; ++e) sb.out[s * d + off + e] += f * sb.o[s * dh + e];
        }
      }
      for (int64_t s = s0; s < s1; ++s)
        std::memcpy(p.out + (tile_pos + s - p.first_pos) * d, &sb.out[s * d], d * 4);
    }
  }
}

void mlp_block(const MlpParams& p) {
  init_threads();
  const TileRange tr = tiles_of(p.first_pos, p.n_tokens);
#pragma omp parallel
  {
    std::vector<float> h, u, xs, ys;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tr.count; ++t) {
      if (p.cancel && p.cancel()) continue;
      const TileRows tw = tile_rows(p.first_pos, p.n_tokens, tr.first + t);
      const int64_t m = tw.r1 - tw.r0;
      h.resize(m * p.d);
      u.resize(m * p.d_ff);
      for (int64_t r = 0; r < m; ++r)
        rmsnorm_row(p.x + (tw.r0 + r) * p.d, p.norm, h.data() + r * p.d, p.d, p.eps);
      gemm_tile(h.data(), p.w_up, u.data(), m, tw.slot0, p.d, p.d_ff, false, xs, ys);
      for (auto& e : u) e = gelu(e);
      gemm_tile(u.data(), p.w_down, p.x + tw.r0 * p.d, m, tw.slot0, p.d_ff, p.d, true, xs, ys);
    }
  }
}

void embed(const EmbedParams& p) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n_tokens; ++i) {
    float* xi = p.x + i * p.d;
    std::fill(xi, xi + p.d, 0.0f);
    for (int64_t c = 0; c < p.n_tables; ++c) {
      const int32_t t = p.tokens[i * p.n_tables + c];
      const float* e = p.tables[c] + (int64_t)t * p.d;
      for (int64_t j = 0; j < p.d; ++j) xi[j] += e[j];
    }
  }
}

}  // namespace sparsa::cpu
