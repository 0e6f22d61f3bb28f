// sparsa: model weights in memory (float32, row-major, y = x W) and the checkpoint file.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.hpp"

namespace sparsa {

struct LayerWeights {
  std::vector<float> attn_norm;       // [d]
  std::vector<float> wq, wk, wv, wo;  // [d, d]
  std::vector<float> router_w1;       // [d, r]
  std::vector<float> router_b1;       // [r]
  std::vector<float> router_w2;       // [r]
  std::vector<float> router_b2;       // [1]
  std::vector<float> alpha, beta;     // [H]
  std::vector<float> mlp_norm;        // [d]
  std::vector<float> w_up;            // [d, f]
  std::vector<float> w_down;          // [f, d]
};

struct ModelWeights {
  ModelConfig config;
  std::string config_toml;                // the config text as stored in the checkpoint
  std::vector<std::vector<float>> embed;  // n_tables x [vocab, d]
  std::vector<LayerWeights> layers;       // [L]
  std::vector<float> final_norm;          // [d]
  // The seed init_model drew the weights from, as decimal text (the checkpoint's `seed`
  // attribute); "" for a checkpoint made otherwise (exported from a training run).
  std::string seed;
  // load_checkpoint: datasets and groups in the file that the model does not use ("/layers/0/bq",
  // "/head"), which it ignores: biases or heads exported with the weights, said by embed and
  // inspect so that wrong embeddings from a model sparsa does not run are not silent.
  std::vector<std::string> unused;
};

// Deterministic initialisation from a seed (portable: splitmix64 + uniform, no std distributions).
// Weights are random until training lands; the scales keep activations O(1) through the layers.
ModelWeights init_model(const ModelConfig& config, uint64_t seed);

// Checkpoint file, spec section 3. save writes PATH.tmp and renames it into place.
void save_checkpoint(const ModelWeights& w, const std::string& path);
// Refuses a missing dataset, a wrong shape, a non-float32 type or a non-finite value with a
// message naming the dataset (InputError); so is a config attribute that does not parse (the
// file is damaged, not the user's command).
ModelWeights load_checkpoint(const std::string& path);

// One (name, shape, data) entry per dataset in the spec's order; used by save, load and inspect.
struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float>* data;
};
std::vector<TensorRef> tensor_list(ModelWeights& w);

}  // namespace sparsa
