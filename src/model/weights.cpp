#include "model/weights.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <tuple>

#include "core/error.hpp"
#include "io/h5.hpp"

namespace sparsa {

namespace {

// splitmix64: tiny, portable, and the same on every platform and compiler.
struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1) with 24 random bits.
  float uniform() { return (float)((double)(next() >> 40) / (double)(1ull << 23) - 1.0); }
};

void fill_uniform(std::vector<float>& v, size_t n, float stddev, SplitMix64& rng) {
  // A uniform on [-a, a] has standard deviation a / sqrt(3).
  const float a = stddev * std::sqrt(3.0f);
  v.resize(n);
  for (auto& x : v) x = a * rng.uniform();
}

void fill_const(std::vector<float>& v, size_t n, float c) { v.assign(n, c); }

}  // namespace

std::vector<TensorRef> tensor_list(ModelWeights& w) {
  const auto& c = w.config;
  const int64_t d = c.d_model, r = c.router_hidden, f = c.d_ff, H = c.n_heads;
  std::vector<TensorRef> t;
  if (c.kind == ModelKind::kDna) {
    t.push_back({"/embedding/tokens", {c.vocab(), d}, &w.embed[0]});
  } else {
    for (int64_t ch = 0; ch < c.channels; ++ch)
      t.push_back({"/embedding/channel_" + std::to_string(ch), {c.vocab(), d}, &w.embed[ch]});
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    auto& L = w.layers[i];
    const std::string p = "/layers/" + std::to_string(i) + "/";
    t.push_back({p + "attn_norm", {d}, &L.attn_norm});
    t.push_back({p + "wq", {d, d}, &L.wq});
    t.push_back({p + "wk", {d, d}, &L.wk});
    t.push_back({p + "wv", {d, d}, &L.wv});
    t.push_back({p + "wo", {d, d}, &L.wo});
    t.push_back({p + "router_w1", {d, r}, &L.router_w1});
    t.push_back({p + "router_b1", {r}, &L.router_b1});
    t.push_back({p + "router_w2", {r}, &L.router_w2});
    t.push_back({p + "router_b2", {1}, &L.router_b2});
    t.push_back({p + "alpha", {H}, &L.alpha});
    t.push_back({p + "beta", {H}, &L.beta});
    t.push_back({p + "mlp_norm", {d}, &L.mlp_norm});
    t.push_back({p + "w_up", {d, f}, &L.w_up});
    t.push_back({p + "w_down", {f, d}, &L.w_down});
  }
  t.push_back({"/final_norm", {d}, &w.final_norm});
  return t;
}

ModelWeights init_model(const ModelConfig& c, uint64_t seed) {
  c.validate();
  ModelWeights w;
  w.config = c;
  w.config_toml = c.to_toml();
  w.embed.resize(c.n_tables());
  w.layers.resize(c.n_layers);
  w.seed = std::to_string(seed);
  SplitMix64 rng{seed};
  const int64_t d = c.d_model, r = c.router_hidden, f = c.d_ff, H = c.n_heads;
  const float sd = 1.0f / std::sqrt((float)d);
  // Residual branches are scaled down with depth so the stream stays O(1) (GPT-2 style).
  const float sd_out = sd / std::sqrt(2.0f * (float)c.n_layers);
  for (auto& e : w.embed) fill_uniform(e, c.vocab() * d, 1.0f, rng);
  for (auto& L : w.layers) {
    fill_const(L.attn_norm, d, 1.0f);
    fill_uniform(L.wq, d * d, sd, rng);
    fill_uniform(L.wk, d * d, sd, rng);
    fill_uniform(L.wv, d * d, sd, rng);
    fill_uniform(L.wo, d * d, sd_out, rng);
    fill_uniform(L.router_w1, d * r, sd, rng);
    fill_uniform(L.router_b1, r, 0.1f, rng);
    fill_uniform(L.router_w2, r, 1.0f / std::sqrt((float)r), rng);
    fill_const(L.router_b2, 1, 0.0f);
    fill_const(L.alpha, H, 1.0f);
    fill_const(L.beta, H, 1.0f);
    fill_const(L.mlp_norm, d, 1.0f);
    fill_uniform(L.w_up, d * f, sd, rng);
    fill_uniform(L.w_down, f * d, 1.0f / std::sqrt((float)f) / std::sqrt(2.0f * c.n_layers), rng);
  }
  fill_const(w.final_norm, d, 1.0f);
  return w;
}

void save_checkpoint(const ModelWeights& wc, const std::string& path) {
  ModelWeights& w = const_cast<ModelWeights&>(wc);  // tensor_list hands out pointers; not written
  const std::string tmp = path + ".tmp";
  try {
    auto f = h5::File::create(tmp);
    f.set_attr("/", "format", std::string("sparsa-model"));
    f.set_attr("/", "format_version", (int64_t)1);
    f.set_attr("/", "config", w.config_toml);
    if (!w.seed.empty()) f.set_attr("/", "seed", w.seed);
    for (auto& t : tensor_list(w)) f.write_f32(t.name, t.shape, t.data->data());
    f.close();
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw SystemError(path + ": cannot move the checkpoint into place: " + ec.message());
  }
}

ModelWeights load_checkpoint(const std::string& path) {
  auto f = [&] {
    try {
      return h5::File::open_read(path);
    } catch (const InputError& e) {  // not HDF5 (a FASTA given as --model, say), or unreadable
      throw InputError(
          std::string(e.what()) +
          " (--model takes a checkpoint: the file that `sparsa init` writes, or weights exported "
          "to HDF5 in the layout of docs/formats.md)");
    }
  }();
  auto bad = [&](const std::string& obj, const std::string& why) {
    throw InputError(path + ": " + obj + ": " + why);
  };
  const std::string format = f.has_attr("/", "format") ? f.attr_string("/", "format") : "";
  if (format == "sparsa-embeddings")  // the likely mix-up: an output given as the model
    throw InputError(path +
                     ": a sparsa embeddings file (written by sparsa embed), not a checkpoint: "
                     "--model takes the file that `sparsa init` wrote");
  if (format != "sparsa-model")
    bad("/",
        "not a sparsa checkpoint (attribute format != \"sparsa-model\"; a checkpoint is "
        "the file that `sparsa init` writes)");
  if (!f.has_attr("/", "format_version") || f.attr_int("/", "format_version") != 1)
    bad("/", "unsupported format_version (this sparsa reads version 1)");
  ModelWeights w;
  w.config_toml = f.attr_string("/", "config");
  try {
    w.config = parse_model_config(w.config_toml, path + " (attribute config)", true);
  } catch (const ConfigError& e) {  // the file's fault (exit 1), not the command line's (2)
    throw InputError(std::string(e.what()) +
                     " (the checkpoint's config must be valid TOML naming every key of [model], "
                     "as `sparsa init` writes it; a checkpoint exported by another program too: "
                     "docs/model.md lists the keys)");
  }
  // init's seed, as text; an exporter's own `seed` (an integer, as h5py writes one) is taken as
  // its number, and one of another type is left alone like any other attribute.
  if (f.has_attr("/", "seed")) {
    try {
      w.seed = f.attr_string("/", "seed");
    } catch (const Error&) {
      try {
        w.seed = std::to_string(f.attr_int("/", "seed"));
      } catch (const Error&) {
      }
    }
  }
  w.embed.resize(w.config.n_tables());
  w.layers.resize(w.config.n_layers);
  for (auto& t : tensor_list(w)) {
    if (!f.exists(t.name)) bad(t.name, "dataset is missing");
    auto shape = f.shape(t.name);
    if (shape != t.shape) {
      std::string want, got;
      for (auto v : t.shape) want += (want.empty() ? "" : ", ") + std::to_string(v);
      for (auto v : shape) got += (got.empty() ? "" : ", ") + std::to_string(v);
      bad(t.name, "wrong shape [" + got + "], expected [" + want + "]");
    }
    if (!f.is_float32(t.name)) bad(t.name, "must be float32");
    *t.data = f.read_f32(t.name);
    for (size_t i = 0; i < t.data->size(); ++i)
      if (!std::isfinite((*t.data)[i]))
        bad(t.name, "non-finite value at flat index " + std::to_string(i));
  }
  // Weights its config does not use (a layer past n_layers, a table past its channels) mean the
  // config and the weights disagree: a checkpoint edited by hand, not one to embed with.
  std::vector<std::string> want_layers, want_tables;
  for (int64_t i = 0; i < w.config.n_layers; ++i) want_layers.push_back(std::to_string(i));
  for (const auto& t : tensor_list(w))
    if (t.name.rfind("/embedding/", 0) == 0) want_tables.push_back(t.name.substr(11));
  for (const auto& [group, want, what] :
       {std::tuple{std::string("/layers"), &want_layers,
                   "n_layers = " + std::to_string(w.config.n_layers)},
        std::tuple{std::string("/embedding"), &want_tables, std::string("its kind and channels")}})
    for (const std::string& name : f.list(group))
      if (std::find(want->begin(), want->end(), name) == want->end())
        bad(group + "/" + name,
            "not part of the model its config describes (" + what +
                "): weights and config disagree (a checkpoint edited by hand?)");
  // Anything else beside the model's datasets is ignored, and listed (ModelWeights::unused).
  std::vector<std::string> names;
  for (const auto& t : tensor_list(w)) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  auto known = [&](const std::string& n) {
    return std::binary_search(names.begin(), names.end(), n);
  };
  for (const std::string& name : f.list("/"))
    if (name != "embedding" && name != "layers" && !known("/" + name))
      w.unused.push_back("/" + name);
  for (int64_t i = 0; i < w.config.n_layers; ++i) {
    const std::string g = "/layers/" + std::to_string(i);
    for (const std::string& name : f.list(g))
      if (!known(g + "/" + name)) w.unused.push_back(g + "/" + name);
  }
  return w;
}

}  // namespace sparsa
