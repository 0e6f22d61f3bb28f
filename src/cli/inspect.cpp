#include "cli/inspect.hpp"

#include <cstdio>

#include "core/error.hpp"
#include "io/h5.hpp"
#include "model/weights.hpp"

namespace sparsa {

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

void inspect_model(const std::string& path) {
  ModelWeights w = load_checkpoint(path);  // validates every dataset
  const auto& c = w.config;
  int64_t params = 0;
  for (auto& t : tensor_list(w)) params += (int64_t)t.data->size();
  std::printf("%s: sparsa checkpoint (format_version 1), valid\n", path.c_str());
  std::printf("  kind %s, d_model %lld, n_layers %lld, n_heads %lld (head_dim %lld), d_ff %lld\n",
              to_string(c.kind), (long long)c.d_model, (long long)c.n_layers, (long long)c.n_heads,
              (long long)c.head_dim(), (long long)c.d_ff);
  std::printf("  window %lld (%s), globals: every %lld, min %lld, max %lld; router_hidden %lld\n",
              (long long)c.window, c.causal ? "causal" : "bidirectional", (long long)c.global_every,
              (long long)c.global_min, (long long)c.global_max, (long long)c.router_hidden);
  if (c.kind == ModelKind::kTimeseries)
    std::printf("  channels %lld, ts_bins %lld, ts_clip %g, ts_transform %s\n",
                (long long)c.channels, (long long)c.ts_bins, c.ts_clip, to_string(c.ts_transform));
  std::printf("  parameters: %lld (%.1f MB as float32)\n", (long long)params, params * 4 / 1e6);
  std::printf("config:\n%s", w.config_toml.c_str());
}

bool inspect_embeddings(const h5::File& f, bool verbose) {
  const std::string& path = f.path();
  const bool complete = f.has_attr("/", "complete") && f.attr_int("/", "complete") == 1;
  std::printf("%s: sparsa embeddings (format_version %lld)%s\n", path.c_str(),
              (long long)f.attr_int("/", "format_version"),
              complete ? "" : "  ** INCOMPLETE: not a result **");
  for (const char* a :
       {"sparsa_version", "created_utc", "pool", "dtype", "model_sha256", "command_line"})
    if (f.has_attr("/", a)) std::printf("  %-14s %s\n", a, f.attr_string("/", a).c_str());
  const auto keys = f.list("/records");
  std::printf("  records        %zu\n", keys.size());
  size_t shown = 0;
  for (const auto& k : keys) {
    if (!verbose && shown == 20) {
      std::printf("  ... %zu more (use --all)\n", keys.size() - shown);
      break;
    }
    const std::string g = "/records/" + k;
    const auto emb = f.shape(g + "/embedding");
    const auto gp = f.shape(g + "/global_positions");
    std::string region = f.attr_string(g, "region");
    std::printf("  %-24s name=%s length=%lld embedding=%s globals=%s strand=%s%s%s\n", k.c_str(),
                f.attr_string(g, "name").c_str(), (long long)f.attr_int(g, "length"),
                shape_text(emb).c_str(), shape_text(gp).c_str(), f.attr_string(g, "strand").c_str(),
                region.empty() ? "" : " region=", region.c_str());
    ++shown;
  }
  return complete;
}

}  // namespace

bool inspect_file(const std::string& path, bool verbose) {
  auto f = h5::File::open_read(path);
  if (!f.has_attr("/", "format"))
    throw InputError(path + ": an HDF5 file, but not one of sparsa's (no 'format' attribute)");
  const std::string fmt = f.attr_string("/", "format");
  if (fmt == "sparsa-model") {
    f.close();
    inspect_model(path);
    return true;
  } else if (fmt == "sparsa-embeddings") {
    return inspect_embeddings(f, verbose);
  } else {
    throw InputError(path + ": unknown format '" + fmt + "'");
  }
}

}  // namespace sparsa
