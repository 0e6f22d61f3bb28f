// sparsa: the model configuration ([model] table of a TOML file). See docs/model.md.
#pragma once
#include <cstdint>
#include <string>

namespace sparsa {

enum class ModelKind { kDna, kTimeseries };
enum class TsTransform { kLevel, kLogReturn, kDiff };

// One flat struct: defaults here, presets in configs/*.toml, validate() refuses the impossible.
struct ModelConfig {
  ModelKind kind = ModelKind::kDna;
  int64_t d_model = 64;  // d
  int64_t n_layers = 2;  // L
  int64_t n_heads = 4;   // H, head_dim = d / H
  int64_t d_ff = 128;    // f
  int64_t window = 32;   // w: bidirectional |i-j| <= w; causal i-w <= j <= i
  bool causal = false;
  int64_t global_every = 1024;  // G = min(global_max, n, max(global_min, ceil(n / global_every)))
  int64_t global_min = 1;
  int64_t global_max = 128;
  int64_t router_hidden = 16;  // r
  double rope_base = 10000.0;
  double norm_eps = 1e-6;
  // time series only
  int64_t channels = 1;
  int64_t ts_bins = 256;
  double ts_clip = 4.0;
  TsTransform ts_transform = TsTransform::kLogReturn;

  int64_t head_dim() const { return d_model / n_heads; }
  // Vocabulary of one embedding table: 7 for DNA, ts_bins + 3 for a time-series channel.
  int64_t vocab() const { return kind == ModelKind::kDna ? 7 : ts_bins + 3; }
  // Number of embedding tables: 1 for DNA, `channels` for time series.
  int64_t n_tables() const { return kind == ModelKind::kDna ? 1 : channels; }
  // G for a record of n tokens (spec section 2).
  int64_t n_global(int64_t n_tokens) const;
  // Useful FLOPs of one layer over n tokens, by stage (what `sparsa bench` reports and the CPU's
  // progress inside a layer weighs): only the band's keys and the G global keys count.
  struct LayerFlops {
    double in = 0;    // RMSNorm'd x times [W_q | W_k | W_v] and the router's first layer
    double attn = 0;  // local band + global set: Q K^T and P V
    double wo = 0, mlp = 0;
    double all() const { return in + attn + wo + mlp; }
  };
  LayerFlops layer_flops(int64_t n_tokens) const;

  // Throws ConfigError naming the key for any impossible value.
  void validate() const;
  // The canonical TOML text of this config ([model] table), echoed into every output file.
  std::string to_toml() const;
};

// Keys of the local band summed over a record's rows: w before and w after a row (w before when
// causal), cut at the record's ends.
double band_keys(int64_t n, int64_t w, bool causal);

// Parses TOML text; `origin` names the file in messages. Unknown keys and wrong types are errors.
// every_key: each key must be given (a checkpoint's config, written whole by to_toml), instead of
// taking the defaults for keys left out (a user's config file).
ModelConfig parse_model_config(const std::string& toml_text, const std::string& origin,
                               bool every_key = false);
ModelConfig load_model_config(const std::string& path);

const char* to_string(ModelKind k);
const char* to_string(TsTransform t);

}  // namespace sparsa
