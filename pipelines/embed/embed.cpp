#include "pipelines/embed/embed.hpp"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/error.hpp"
#include "core/progress.hpp"
#include "core/sha256.hpp"
#include "io/dna.hpp"
#include "model/forward.hpp"
#include "model/weights.hpp"
#include "pipelines/embed/records.hpp"
#include "pipelines/embed/writer.hpp"

namespace sparsa {

std::string PoolSpec::text() const {
  if (kind == kNone) return "none";
  if (kind == kMean) return "mean";
  return "bin:" + std::to_string(bin);
}

PoolSpec parse_pool(const std::string& s) {
  PoolSpec p;
  if (s == "none") return p;
  if (s == "mean") {
    p.kind = PoolSpec::kMean;
    return p;
  }
  if (s.rfind("bin:", 0) == 0) {
    const std::string num = s.substr(4);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(num.c_str(), &end, 10);
    if (!num.empty() && *end == '\0' && errno == 0 && v >= 1) {
      p.kind = PoolSpec::kBin;
      p.bin = v;
      return p;
    }
  }
  throw ConfigError("--pool '" + s + "': expected none, mean or bin:N with N >= 1");
}

// Rows a block of the mean pool covers: matches the shard alignment so blocks never straddle.
static constexpr int64_t kMeanBlock = 64;

Pooled pool_shard(const float* y, int64_t n, int64_t d, int64_t first_pos, int64_t n_record,
                  const PoolSpec& pool) {
  Pooled out;
  if (pool.kind == PoolSpec::kNone) {
    out.rows.assign(y, y + n * d);
    for (int64_t i = 0; i < n; ++i) {
      out.starts.push_back(first_pos + i);
      out.ends.push_back(first_pos + i + 1);
    }
    return out;
  }
  const int64_t B = pool.kind == PoolSpec::kBin ? pool.bin : kMeanBlock;
  if (first_pos % B != 0) throw SystemError("pool_shard: shard does not start on a bin boundary");
  std::vector<double> acc(d);
  for (int64_t b0 = 0; b0 < n; b0 += B) {
    const int64_t b1 = std::min(n, b0 + B);
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t i = b0; i < b1; ++i)
      for (int64_t j = 0; j < d; ++j) acc[j] += (double)y[i * d + j];
    if (pool.kind == PoolSpec::kMean) {
      out.block_sums.insert(out.block_sums.end(), acc.begin(), acc.end());
    } else {
      for (int64_t j = 0; j < d; ++j) out.rows.push_back((float)(acc[j] / (double)(b1 - b0)));
      out.starts.push_back(first_pos + b0);
      out.ends.push_back(std::min(n_record, first_pos + b1));
    }
  }
  return out;
}

std::vector<float> combine_mean(const std::vector<double>& block_sums, int64_t d, int64_t n_record) {
  std::vector<double> acc(d, 0.0);
  for (size_t b = 0; b * d < block_sums.size(); ++b)
    for (int64_t j = 0; j < d; ++j) acc[j] += block_sums[b * d + j];
  std::vector<float> out(d);
  for (int64_t j = 0; j < d; ++j) out[j] = (float)(acc[j] / (double)n_record);
  return out;
}

namespace {

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

void check_paths(const EmbedOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (o.output.empty()) throw ConfigError("--output is required");
  for (const auto& in : o.inputs)
    if (fs::equivalent(in, o.output, ec))
      throw ConfigError("--output " + o.output + " is one of the inputs; refusing to overwrite it");
  if (fs::equivalent(o.model, o.output, ec))
    throw ConfigError("--output " + o.output + " is the model; refusing to overwrite it");
  if (fs::exists(o.output, ec) && !o.force)
    throw ConfigError(o.output + " already exists; pass --force to replace it");
  const fs::path dir = fs::absolute(o.output).parent_path();
  if (!fs::is_directory(dir, ec)) throw ConfigError("output folder " + dir.string() + " does not exist");
  if (access(dir.c_str(), W_OK) != 0) throw ConfigError("output folder " + dir.string() + " is not writable");
}

}  // namespace

EmbedSummary run_embed(const EmbedOptions& o, Comm& comm) {
  const bool root = comm.rank() == 0;
  if (o.inputs.empty()) throw ConfigError("no --input given");
  if (o.device != "cpu" && o.device != "auto")
    throw ConfigError("--device " + o.device + ": this build runs on the CPU only (use cpu or auto)");
  check_paths(o);
  const ModelWeights w = load_checkpoint(o.model);
  const ModelConfig& c = w.config;
  RecordSource source(o, c);
  Progress progress = Progress::for_stderr(o.quiet || !root);

  std::unique_ptr<EmbeddingsWriter> writer;
  if (root) {
    FileAttrs a{SPARSA_VERSION, sha256_file(o.model), w.config_toml, o.command_line, utc_now(),
                o.pool.text(), o.f16 ? "float16" : "float32"};
    writer = std::make_unique<EmbeddingsWriter>(o.output, a, o.f16);
  }
  const int64_t align = o.pool.kind == PoolSpec::kBin ? o.pool.bin
                        : o.pool.kind == PoolSpec::kMean ? kMeanBlock
                                                         : 1;
  EmbedSummary sum;
  Record rec;
  for (int64_t index = 1; source.next(rec); ++index) {
    const int64_t n = rec.n_tokens(), d = c.d_model;
    if (n == 0) throw InputError(rec.source + ": record '" + rec.name + "' is empty");
    progress.start_record(index, rec.name, n);
    const Shard sh = shard_of(n, comm.rank(), comm.size(), align);
    const int passes = o.rc_average ? 2 : 1;
    ForwardHooks hooks;
    int pass = 0;
    hooks.after_layer = [&](int64_t l) {
      progress.update((pass + (double)(l + 1) / c.n_layers) / passes);
    };
    ForwardOutput fwd = forward(w, rec.tokens.data() + sh.begin * rec.n_channels, sh, comm, hooks);
    if (o.rc_average) {
      pass = 1;
      std::vector<int32_t> rc = rec.tokens;
      reverse_complement(rc);
      const Shard mir = shard_of(n, comm.rank(), comm.size(), align, true);
      ForwardOutput rev = forward(w, rc.data() + mir.begin, mir, comm, hooks);
      // Forward row t of this shard is reverse row (m - 1 - t) of the mirrored shard.
      const int64_t m = sh.size();
      for (int64_t t = 0; t < m; ++t)
        for (int64_t j = 0; j < d; ++j)
          fwd.y[t * d + j] = (fwd.y[t * d + j] + rev.y[(m - 1 - t) * d + j]) * 0.5f;
    }
    Pooled pooled = pool_shard(fwd.y.data(), sh.size(), d, sh.begin, n, o.pool);
    fwd.y = {};
    // Gather every rank's pooled rows (rank order = position order) on rank 0, which writes.
    std::vector<uint8_t> rows_b, starts_b, ends_b;
    if (o.pool.kind == PoolSpec::kMean) {
      comm.gatherv(pooled.block_sums.data(), (int64_t)pooled.block_sums.size() * 8, rows_b, nullptr, 0);
    } else {
      comm.gatherv(pooled.rows.data(), (int64_t)pooled.rows.size() * 4, rows_b, nullptr, 0);
      comm.gatherv(pooled.starts.data(), (int64_t)pooled.starts.size() * 8, starts_b, nullptr, 0);
      comm.gatherv(pooled.ends.data(), (int64_t)pooled.ends.size() * 8, ends_b, nullptr, 0);
    }
    if (root) {
      std::vector<float> rows;
      std::vector<int64_t> starts, ends;
      if (o.pool.kind == PoolSpec::kMean) {
        std::vector<double> sums(rows_b.size() / 8);
        std::memcpy(sums.data(), rows_b.data(), rows_b.size());
        rows = combine_mean(sums, d, n);
        starts = {0};
        ends = {n};
      } else {
        rows.resize(rows_b.size() / 4);
        std::memcpy(rows.data(), rows_b.data(), rows_b.size());
        starts.resize(starts_b.size() / 8);
        std::memcpy(starts.data(), starts_b.data(), starts_b.size());
        ends.resize(ends_b.size() / 8);
        std::memcpy(ends.data(), ends_b.data(), ends_b.size());
      }
      RecordOutput ro{&rec, to_string(c.kind), o.rc_average ? "rc-average" : "+", n, rows.data(),
                      (int64_t)starts.size(), d, starts.data(), ends.data(),
                      fwd.global_positions.data(), fwd.global_scores.data(), c.n_layers,
                      fwd.n_global};
      writer->write(ro);
    }
    progress.finish_record();
    sum.records++;
    sum.tokens += n;
  }
  if (sum.records == 0) throw InputError("the inputs hold no records");
  // Every rank has finished its part before rank 0 marks the file complete.
  comm.barrier();
  if (root) writer->finish();
  comm.barrier();
  sum.seconds = progress.seconds();
  return sum;
}

}  // namespace sparsa
