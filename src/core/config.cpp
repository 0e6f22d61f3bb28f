#include "core/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "core/edit_distance.hpp"
#include "core/error.hpp"
#include "core/file_text.hpp"

namespace sparsa {

const char* to_string(ModelKind k) { return k == ModelKind::kDna ? "dna" : "timeseries"; }

const char* to_string(TsTransform t) {
  switch (t) {
    case TsTransform::kLevel:
      return "level";
    case TsTransform::kLogReturn:
      return "log_return";
    case TsTransform::kDiff:
      return "diff";
  }
  return "?";
}

int64_t ModelConfig::n_global(int64_t n) const {
  // G = min(global_max, n, max(global_min, ceil(n / global_every)))
  // ceil without n + global_every - 1, which overflows for a huge global_every.
  int64_t g = n / global_every + (n % global_every != 0 ? 1 : 0);
  g = std::max(global_min, g);
  return std::min({global_max, n, g});
}

// Sum over rows i of a record of n tokens of the keys its band holds: [max(0, i - w), min(n - 1,
// i + w)], or [max(0, i - w), i] when causal. In closed form (a million-token record's count is
// taken per forward pass).
double band_keys(int64_t n, int64_t w, bool causal) {
  const double N = (double)n;
  // sum_i (i - max(0, i - w)): rows past w see w keys before them, the others i.
  const int64_t a = std::min(n, w + 1);  // rows 0..a-1 see all before them
  const double before = (double)a * (double)(a - 1) / 2 + (double)(n - a) * (double)w;
  if (causal) return before + N;
  return 2 * before + N;  // the keys after a row mirror those before the row at n - 1 - i
}

ModelConfig::LayerFlops ModelConfig::layer_flops(int64_t n) const {
  const double N = (double)n, d = (double)d_model, G = (double)n_global(n);
  LayerFlops f;
  f.in = 2 * N * d * (3 * d + (double)router_hidden);
  // Causal: a row sees about half of the global set (the keys before it).
  f.attn = 4 * d * (band_keys(n, window, causal) + N * G * (causal ? 0.5 : 1.0));
  f.wo = 2 * N * d * d;
  f.mlp = 4 * N * d * (double)d_ff;
  return f;
}

void ModelConfig::validate() const {
  auto bad = [](const std::string& key, const std::string& why) {
    throw ConfigError("config key '" + key + "': " + why);
  };
  if (d_model < 1) bad("d_model", "must be >= 1");
  if (n_heads < 1) bad("n_heads", "must be >= 1");
  if (d_model % n_heads != 0)
    bad("d_model", "d_model (" + std::to_string(d_model) + ") must be divisible by n_heads (" +
                       std::to_string(n_heads) + ")");
  if (head_dim() % 2 != 0)
    bad("n_heads",
        "head_dim = d_model / n_heads = " + std::to_string(head_dim()) + " must be even for RoPE");
  if (n_layers < 1) bad("n_layers", "must be >= 1");
  if (d_ff < 1) bad("d_ff", "must be >= 1");
  // window 0: W(i) = {i} (the spec's formula; causal too).
  if (window < 0) bad("window", "must be >= 0");
  if (global_every < 1) bad("global_every", "must be >= 1");
  if (global_min < 0) bad("global_min", "must be >= 0");
  if (global_max < 0) bad("global_max", "must be >= 0");
  // global_min > global_max is the spec's formula too: G = min(global_max, ...) = global_max.
  if (router_hidden < 1) bad("router_hidden", "must be >= 1");
  if (!(rope_base > 1.0) || !std::isfinite(rope_base))
    bad("rope_base", "must be a finite number > 1");
  if (!(norm_eps > 0.0) || !std::isfinite(norm_eps)) bad("norm_eps", "must be a finite number > 0");
  if (kind == ModelKind::kTimeseries) {
    if (channels < 1) bad("channels", "must be >= 1");
    if (channels > 4096) bad("channels", "must be <= 4096");
    if (ts_bins < 2) bad("ts_bins", "must be >= 2");
    if (ts_bins > (1 << 20)) bad("ts_bins", "must be <= 1048576");
    if (!(ts_clip > 0.0) || !std::isfinite(ts_clip)) bad("ts_clip", "must be a finite number > 0");
  }
  // Sizes that would overflow the int64 arithmetic of [n, d] buffers are refused early.
  if (d_model > (1 << 16)) bad("d_model", "must be <= 65536");
  if (d_ff > (1 << 20)) bad("d_ff", "must be <= 1048576");
  if (n_layers > 4096) bad("n_layers", "must be <= 4096");
  if (router_hidden > (1 << 16)) bad("router_hidden", "must be <= 65536");
}

namespace {
// The shortest text that reads back as the same double (10000.0, 1e-06, 0.1), as a TOML float.
std::string toml_float(double v) {
  char b[64];
  const auto r = std::to_chars(b, b + sizeof b, v);
  std::string s(b, r.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // (n: inf, nan)
  return s;
}
}  // namespace

std::string ModelConfig::to_toml() const {
  std::ostringstream o;
  o << "[model]\n"
    << "kind = \"" << to_string(kind) << "\"\n"
    << "d_model = " << d_model << "\n"
    << "n_layers = " << n_layers << "\n"
    << "n_heads = " << n_heads << "\n"
    << "d_ff = " << d_ff << "\n"
    << "window = " << window << "\n"
    << "causal = " << (causal ? "true" : "false") << "\n"
    << "global_every = " << global_every << "\n"
    << "global_min = " << global_min << "\n"
    << "global_max = " << global_max << "\n"
    << "router_hidden = " << router_hidden << "\n"
    << "rope_base = " << toml_float(rope_base) << "\n"
    << "norm_eps = " << toml_float(norm_eps) << "\n";
  if (kind == ModelKind::kTimeseries) {
    o << "channels = " << channels << "\n"
      << "ts_bins = " << ts_bins << "\n"
      << "ts_clip = " << toml_float(ts_clip) << "\n"
      << "ts_transform = \"" << to_string(ts_transform) << "\"\n";
  }
  return o.str();
}

namespace {

struct Reader {
  const toml::table& t;
  std::string origin;
  std::set<std::string> seen;

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw ConfigError(origin + ": [model] " + key + ": " + why);
  }
  void get_int(const char* key, int64_t& out) {
    seen.insert(key);
    auto node = t.get(key);
    if (!node) return;
    if (auto v = node->value_exact<int64_t>())
      out = *v;
    else
      fail(key, "must be an integer");
  }
  void get_float(const char* key, double& out) {
    seen.insert(key);
    auto node = t.get(key);
    if (!node) return;
    if (auto v = node->value<double>())
      out = *v;  // integers are accepted for floats
    else
      fail(key, "must be a number");
  }
  void get_bool(const char* key, bool& out) {
    seen.insert(key);
    auto node = t.get(key);
    if (!node) return;
    if (auto v = node->value_exact<bool>())
      out = *v;
    else
      fail(key, "must be true or false");
  }
  bool get_string(const char* key, std::string& out) {
    seen.insert(key);
    auto node = t.get(key);
    if (!node) return false;
    if (auto v = node->value_exact<std::string>())
      out = *v;
    else
      fail(key, "must be a string");
    return true;
  }
};

// toml++ 3.3.0 (Debian 12) reaches __builtin_unreachable() for some non-ASCII code points where
// it looks for whitespace, e.g. after a bare key or a line-ending backslash (undefined behaviour;
// marzer/tomlplusplus#190 and #295, found by fuzz/fuzz_config). Every key and value of a [model]
// table is ASCII, so non-ASCII text is refused before toml++ sees it, except in comments, which
// toml++ skips without that lookup. Strings are tracked only so that a '#' in one is not taken
// for a comment.
void check_ascii_outside_comments(const std::string& text, const std::string& origin) {
  enum class In { kCode, kComment, kBasic, kLiteral, kMlBasic, kMlLiteral };
  In in = In::kCode;
  // Length of the run of quote characters (at most 5) at i: a multi-line string may end with up
  // to two quotes of its own before its closing three.
  auto run = [&](size_t i, char q) {
    size_t n = 0;
    while (n < 5 && i + n < text.size() && text[i + n] == q) ++n;
    return n;
  };
  long long line = 1;
  size_t line_start = 0;
  // A UTF-8 byte order mark (Windows editors write one) is fine: toml++ skips it.
  const size_t bom = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  for (size_t i = bom; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      line_start = i + 1;
      // A newline ends a comment and (unterminated, which toml++ reports) a one-line string.
      if (in == In::kComment || in == In::kBasic || in == In::kLiteral) in = In::kCode;
      continue;
    }
    if (in == In::kComment) continue;
    if ((unsigned char)c >= 0x80) {
      throw ConfigError(origin + ":" + std::to_string(line) + ":" +
                        std::to_string(i - line_start + 1) +
                        ": non-ASCII character outside a comment (config keys and values are "
                        "ASCII)");
    }
    const bool basic = in == In::kBasic || in == In::kMlBasic;
    if (basic && c == '\\' && i + 1 < text.size() && (unsigned char)text[i + 1] < 0x80 &&
        text[i + 1] != '\n') {
      ++i;  // an escaped character never ends the string (a non-ASCII one is still checked)
    } else if (in == In::kCode && c == '#') {
      in = In::kComment;
    } else if (in == In::kCode && (c == '"' || c == '\'')) {
      const bool multi = run(i, c) >= 3;
      if (multi) i += 2;
      in = c == '"' ? (multi ? In::kMlBasic : In::kBasic) : (multi ? In::kMlLiteral : In::kLiteral);
    } else if ((in == In::kBasic && c == '"') || (in == In::kLiteral && c == '\'')) {
      in = In::kCode;
    } else if ((in == In::kMlBasic && c == '"') || (in == In::kMlLiteral && c == '\'')) {
      const size_t n = run(i, c);
      if (n >= 3) {
        in = In::kCode;
        i += n - 1;
      }
    }
  }
}

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& origin, bool every_key) {
  check_ascii_outside_comments(text, origin);
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream o;
    o << origin << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
      << e.description();
    throw ConfigError(o.str());
  }
  for (auto&& [k, v] : root) {
    if (k.str() != "model")
      throw ConfigError(origin + ": unknown table or key '" + std::string(k.str()) +
                        "' (a config holds one [model] table)");
  }
  const toml::table* mt = root["model"].as_table();
  if (!mt) throw ConfigError(origin + ": no [model] table");
  ModelConfig c;
  Reader r{*mt, origin, {}};
  std::string kind;
  if (!r.get_string("kind", kind)) r.fail("kind", "is required (\"dna\" or \"timeseries\")");
  if (kind == "dna")
    c.kind = ModelKind::kDna;
  else if (kind == "timeseries")
    c.kind = ModelKind::kTimeseries;
  else
    r.fail("kind", "must be \"dna\" or \"timeseries\", not \"" + kind + "\"");
  r.get_int("d_model", c.d_model);
  r.get_int("n_layers", c.n_layers);
  r.get_int("n_heads", c.n_heads);
  r.get_int("d_ff", c.d_ff);
  r.get_int("window", c.window);
  r.get_bool("causal", c.causal);
  r.get_int("global_every", c.global_every);
  r.get_int("global_min", c.global_min);
  r.get_int("global_max", c.global_max);
  r.get_int("router_hidden", c.router_hidden);
  r.get_float("rope_base", c.rope_base);
  r.get_float("norm_eps", c.norm_eps);
  r.get_int("channels", c.channels);
  r.get_int("ts_bins", c.ts_bins);
  r.get_float("ts_clip", c.ts_clip);
  std::string tr;
  if (r.get_string("ts_transform", tr)) {
    if (tr == "level")
      c.ts_transform = TsTransform::kLevel;
    else if (tr == "log_return")
      c.ts_transform = TsTransform::kLogReturn;
    else if (tr == "diff")
      c.ts_transform = TsTransform::kDiff;
    else
      r.fail("ts_transform", "must be \"level\", \"log_return\" or \"diff\", not \"" + tr + "\"");
  }
  for (auto&& [k, v] : *mt) {
    if (!r.seen.count(std::string(k.str()))) {
      const std::string near = nearest_word(k.str(), r.seen);
      throw ConfigError(origin + ": [model] unknown key '" + std::string(k.str()) + "'" +
                        (near.empty() ? std::string() : "; did you mean '" + near + "'?"));
    }
  }
  if (c.kind == ModelKind::kDna) {
    for (const char* k : {"channels", "ts_bins", "ts_clip", "ts_transform"})
      if (mt->contains(k)) r.fail(k, "is for time-series models only (kind = \"timeseries\")");
  }
  if (every_key) {  // a checkpoint's config is written whole (to_toml): a missing key is damage
    for (const std::string& k : r.seen) {
      const bool ts_key =
          k == "channels" || k == "ts_bins" || k == "ts_clip" || k == "ts_transform";
      if ((c.kind == ModelKind::kTimeseries || !ts_key) && !mt->contains(k))
        r.fail(k,
               "is missing (a checkpoint's config names every key; this one was not written "
               "by `sparsa init`, or was edited)");
    }
  }
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(origin + ": " + e.what());
  }
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ConfigError(path + ": cannot open config file");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  if (hdf5_signature(text))  // the likely mix-up: a checkpoint given as the config
    throw ConfigError(path +
                      ": an HDF5 file (a sparsa checkpoint?), not a TOML config: --config takes a "
                      "text file such as configs/dna-tiny.toml");
  return parse_model_config(text, path);
}

}  // namespace sparsa
