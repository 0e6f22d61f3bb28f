#include "pipelines/embed/embed.hpp"

#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <sstream>
#include <system_error>
#include <thread>

#include "core/build.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/paths.hpp"
#include "core/progress.hpp"
#include "core/sha256.hpp"
#include "core/signals.hpp"
#include "io/dna.hpp"
#include "io/timeseries.hpp"
#ifdef SPARSA_HAVE_CUDA
#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/device.hpp"
#include "dist/comm_nccl.hpp"
#include "dist/cpu_share.hpp"
#endif
#include "io/h5.hpp"
#include "model/forward.hpp"
#include "model/weights.hpp"
#include "pipelines/embed/records.hpp"
#include "pipelines/embed/writer.hpp"

namespace sparsa {

namespace fs = std::filesystem;

std::string PoolSpec::text() const {
  if (kind == kNone) return "none";
  if (kind == kMean) return "mean";
  return "bin:" + std::to_string(bin);
}

int64_t PoolSpec::rows(int64_t n) const {
  return kind == kNone ? n : kind == kMean ? 1 : (n + bin - 1) / bin;
}

PoolSpec parse_pool(const std::string& s) {
  PoolSpec p;
  if (s == "none") return p;
  if (s == "mean") {
    p.kind = PoolSpec::kMean;
    return p;
  }
  // N as regions and --split-min write counts (128, 1,000, 2k, 1.5k); the file says it in digits
  if (int64_t v = 0; s.rfind("bin:", 0) == 0 && parse_token_count(s.substr(4), v) && v >= 1) {
    p.kind = PoolSpec::kBin;
    p.bin = v;
    return p;
  }
  if (s.rfind("bin:", 0) == 0)
    if (const std::string f = fractional_count(s.substr(4)); !f.empty())
      throw ConfigError("--pool '" + s + "': " + s.substr(4) + " is " + f +
                        ", not a whole number of tokens");
  throw ConfigError("--pool '" + s +
                    "': expected none, mean or bin:N with N >= 1 tokens (128, 2k, 1.5k)");
}

// Rows a block of the mean pool covers: matches the shard alignment so blocks never straddle.
static constexpr int64_t kMeanBlock = 64;

Pooled pool_shard(std::vector<float>&& y, int64_t n, int64_t d, int64_t first_pos, int64_t n_record,
                  const PoolSpec& pool) {
  Pooled out;
  if (pool.kind == PoolSpec::kNone) {
    out.rows = std::move(y);
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

SidePlan cpu_side_plan(int threads, const std::vector<int64_t>& tokens) {
  SidePlan p;
  const int64_t k = (int64_t)tokens.size();
  p.order.resize(k);
  std::iota(p.order.begin(), p.order.end(), int64_t{0});
  std::stable_sort(p.order.begin(), p.order.end(),
                   [&](int64_t x, int64_t y) { return tokens[x] > tokens[y]; });
  threads = std::max(threads, 1);
  const int64_t full = k - k % threads;  // records a thread each
  if (full > 0) p.waves.push_back({threads, 1, 0, full});
  if (full < k) {
    const int rest = (int)(k - full);
    p.waves.push_back({rest, threads / rest, full, k});
  }
  return p;
}

std::vector<float> combine_mean(const std::vector<double>& block_sums, int64_t d,
                                int64_t n_record) {
  std::vector<double> acc(d, 0.0);
  for (size_t b = 0; b * d < block_sums.size(); ++b)
    for (int64_t j = 0; j < d; ++j) acc[j] += block_sums[b * d + j];
  std::vector<float> out(d);
  for (int64_t j = 0; j < d; ++j) out[j] = (float)(acc[j] / (double)n_record);
  return out;
}

namespace {

// A stop at a safe point with finished records kept: what the user does next.
const char* const kResumeAdvice = "run the same command with --resume to continue";

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

// Returns true when --resume finds OUT already complete (nothing to do if it was made by this
// same run: run_embed compares the manifests).
bool check_paths(const EmbedOptions& o) {
  std::error_code ec;
  if (o.output.empty()) throw ConfigError("--output is required");
  check_input_files(o.inputs);
  for (const auto& in : o.inputs) {
    if (fs::equivalent(in, o.output, ec))
      throw ConfigError("--output " + o.output + " is one of the inputs; refusing to overwrite it");
    // (Also where the index does not exist yet: --region makes it.)
    for (const char* index : {".fai", ".gzi"})
      if (fs::equivalent(in + index, o.output, ec) ||
          fs::weakly_canonical(fs::absolute(in + index), ec) ==
              fs::weakly_canonical(fs::absolute(o.output), ec))
        throw ConfigError("--output " + o.output + " is the index of input " + in +
                          "; refusing to overwrite it");
  }
  if (!o.regions_bed.empty() && fs::equivalent(o.regions_bed, o.output, ec))
    throw ConfigError("--output " + o.output + " is the --regions file; refusing to overwrite it");
  if (fs::equivalent(o.model, o.output, ec))
    throw ConfigError("--output " + o.output + " is the model; refusing to overwrite it");
  if (!fs::is_regular_file(o.model, ec))
    throw ConfigError("--model " + o.model +
                      " is not a regular file (a checkpoint from `sparsa init`)");
  // OUT.tmp (the final file while it is made) and OUT.parts/ (the journal) are sparsa's: none of
  // the files it reads may be one of them, or it would overwrite or delete them.
  const std::string tmp = o.output + ".tmp", parts = o.output + ".parts";
  const fs::path parts_dir = fs::weakly_canonical(fs::absolute(parts), ec);
  auto ours = [&](const std::string& p, const std::string& what) {
    const fs::path cp = fs::weakly_canonical(fs::absolute(p), ec);
    const auto rel = cp.lexically_relative(parts_dir);
    const bool inside = !rel.empty() && *rel.begin() != "..";
    if (fs::equivalent(p, tmp, ec) || inside)
      throw ConfigError(what + " " + p + " is where sparsa writes " +
                        (inside ? "its journal (" + parts + "/)" : "the output while it is made") +
                        " for --output " + o.output + "; rename it or choose another --output");
  };
  for (const auto& in : o.inputs) ours(in, "input");
  if (!o.regions_bed.empty()) ours(o.regions_bed, "--regions file");
  ours(o.model, "--model");
  const fs::path dir = fs::absolute(o.output).parent_path();
  if (!fs::is_directory(dir, ec))
    throw ConfigError(
        "output folder " + dir.string() +
        (fs::exists(dir, ec) ? " is not a folder (a file of that name)" : " does not exist"));
  if (access(dir.c_str(), W_OK) != 0)
    throw ConfigError("output folder " + dir.string() + " is not writable");
  check_scratch_path(tmp, o.output, o.force, [](const std::string& p) {
    return h5::is_sparsa_scratch(p, "sparsa-embeddings");
  });
  Journal::check_folder(o.output + ".parts");  // before --force sets the old output aside there
  std::string taken_by;
  if (output_path_taken(o.output, "--output", &taken_by)) {
    if (o.resume && taken_by.empty() &&
        (!Journal::present(o.output + ".parts") || Journal::only_manifest(o.output + ".parts"))) {
      try {
        auto f = h5::File::open_read(o.output);
        if (f.has_attr("/", "complete") && f.attr_int("/", "complete") == 1) return true;
      } catch (const InputError&) {  // not an HDF5 file: not a result; --force replaces it
        if (!o.force) throw;
      }
    }
    if (!o.force) throw output_exists_error(o.output, taken_by);
  }
  return false;
}

#ifdef SPARSA_HAVE_CUDA
// Collective. "" when no two ranks of one host use the same GPU (by PCI bus id); else which
// share one ("ranks 0 and 2 share GPU 0000:3B:00.0 of host gpu01").
std::string shared_gpu(Comm& comm, int device) {
  // A line a rank: its node (node_of_this_process: containers of one node share its boot id),
  // the GPU's bus id, and the host name to say.
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string mine =
      node_of_this_process() + '\t' + cuda::pci_bus_id(device) + '\t' + host + '\n';
  std::vector<uint8_t> all;
  comm.allgatherv(mine.data(), (int64_t)mine.size(), all);
  std::map<std::string, int> first;  // node and bus id -> the first rank on it
  std::istringstream in(std::string(all.begin(), all.end()));
  int rank = 0;
  for (std::string line; std::getline(in, line); ++rank) {
    const size_t tab = line.find('\t'), tab2 = line.find('\t', tab + 1);
    if (auto [it, fresh] = first.try_emplace(line.substr(0, tab2), rank); !fresh)
      return "ranks " + std::to_string(it->second) + " and " + std::to_string(rank) +
             " share GPU " + line.substr(tab + 1, tab2 - tab - 1) + " of host " +
             line.substr(tab2 + 1);
  }
  return "";
}
#endif

// ", N threads" for the device line: what this rank's forwards may use (docs/cli.md --threads),
// and how many ranks divided its CPUs where that is how the count came.
std::string cpu_threads(const EmbedOptions& o) {
  const int n = omp_get_max_threads();
  std::string s = ", " + std::to_string(n) + (n == 1 ? " thread" : " threads");
  if (!o.threads_note.empty()) s += " (" + o.threads_note + ")";
  return s;
}

// What a run computes with, as the manifest records it: "cpu fp32", "cuda bf16" or "cuda fp32"
// (--device auto resolved: a job that stopped on a GPU node and resumes on a CPU node, or the
// reverse, would mix records of both in one file).
std::string resolved_backend(const EmbedOptions& o) {
  bool gpu = false;
#ifdef SPARSA_HAVE_CUDA
  gpu = o.device != "cpu" && cuda_available(nullptr);
#endif
  return gpu ? (o.cuda_fp32 ? "cuda fp32" : "cuda bf16") : "cpu fp32";
}

// What this rank computes with, for the file's `compute` attribute and the check that ranks
// agree: the backend, and the GPU's name or the CPU backend's OpenBLAS build line (which names
// the kernels it picked for this CPU: another CPU model may round the last bits otherwise).
std::string compute_of(const EmbedOptions& o) {
  const std::string backend = resolved_backend(o);
#ifdef SPARSA_HAVE_CUDA
  if (backend != "cpu fp32") return backend + ", " + cuda::device_name();
#endif
  return backend + ", " + blas_build_line();
}

// Collective. What the ranks compute with: each kind once, in rank order (one where they agree),
// with a warning (rank 0) where they differ: a record split over them, or records of one file,
// may differ in the last bits from a run on one kind of node.
std::vector<std::string> ranks_compute(Comm& comm, const std::string& mine) {
  std::vector<uint8_t> all;
  const std::string line = mine + '\n';
  comm.allgatherv(line.data(), (int64_t)line.size(), all);
  std::istringstream in(std::string(all.begin(), all.end()));
  std::vector<std::string> kinds;
  std::string l;
  for (int rank = 0; std::getline(in, l); ++rank) {
    if (std::find(kinds.begin(), kinds.end(), l) != kinds.end()) continue;
    if (kinds.size() == 1 && comm.rank() == 0)  // the second kind: said once
      std::fprintf(stderr,
                   "[sparsa] warning: ranks compute with different kernels (rank 0: '%s'; rank "
                   "%d: '%s'), so their rows may differ in the last bits from a run on one kind "
                   "of node; keep a job on one node type (Slurm: --constraint)\n",
                   kinds[0].c_str(), rank, l.c_str());
    kinds.push_back(l);
  }
  if (kinds.empty()) kinds.push_back(mine);
  return kinds;
}

// What makes two runs the same run: a resumed run must match the journal's manifest.
std::string manifest_for(const EmbedOptions& o, const std::string& model_sha) {
  std::ostringstream m;
  // Inputs by path alone: a record's content is checked by its fingerprint (input_sha256), so a
  // fixed input resumes, reusing the records that did not change.
  m << "sparsa-journal 3\nmodel_sha256 " << model_sha << "\n";
  // Absolute and without . or .. (./reads.fq is reads.fq); a symbolic link is taken as named.
  for (const auto& in : o.inputs)
    m << "input " << fs::absolute(in).lexically_normal().string() << "\n";
  for (const auto& r : o.regions) m << "region " << r << "\n";
  if (!o.regions_bed.empty())
    m << "regions_bed " << fs::absolute(o.regions_bed).lexically_normal().string() << "\n";
  m << "pool " << o.pool.text() << "\ndtype " << (o.f16 ? "f16" : "f32") << "\nrc_average "
    << o.rc_average << "\ninvalid_as_n " << o.invalid_as_n << "\nbackend " << resolved_backend(o)
    << "\ncolumns";
  for (const auto& c : o.columns) m << " " << c;
  m << "\ntime_column " << o.time_column << "\nid_column " << o.id_column << "\n";
  return m.str();
}

// A rough upper bound of the bytes the run writes (parts and final file), from input sizes and,
// for DNA, the records begun in the first 256 KB of each input's text (extrapolated); time-series
// CSVs are read here (their rows and records are exact, and a bad file stops the run before the
// backend is set up); their records go to `source`, which would read them again: the first
// CSV's, and the next ones' while those files add up to 128 MB (past that each is read again when
// its turn comes: holding them all would multiply the memory). Each
// record costs its part's HDF5 structure, its group in the final file and its global sets (12 L G
// bytes) besides its rows, which is what a FASTQ of short reads or a panel of many short series
// mostly writes.
struct OutputEstimate {
  int64_t bytes = 0;        // the journal and the final file together
  int64_t final_bytes = 0;  // the final file alone (the largest file written)
  int64_t records = 0;
  bool exact_records = false;  // counted (regions, time series, small files), not estimated
};
OutputEstimate estimate_output(const EmbedOptions& o, const ModelConfig& c, RecordSource& source) {
  double tokens = 0, records = 0;
  bool exact = true;
  constexpr int64_t kPrimeBytes = int64_t{128} << 20;
  int64_t primed_bytes = 0;
  for (size_t f = 0; f < o.inputs.size(); ++f) {
    const std::string& in = o.inputs[f];
    if (c.kind == ModelKind::kTimeseries) {
      std::vector<RawSeries> series =
          read_timeseries_csv(in, CsvOptions{o.time_column, o.columns, o.id_column}, c.channels);
      for (const RawSeries& s : series) {
        check_series(s, c, in);  // a bad value stops the run here, before any record is embedded
        tokens += (double)s.timestamps.size();
        records += 1;
      }
      // Kept for the record source: the first input (read first, so no more memory than reading
      // it again), and the next ones while their files add up to kPrimeBytes.
      std::error_code ec;
      primed_bytes += (int64_t)fs::file_size(in, ec);
      if (f == 0 || primed_bytes <= kPrimeBytes) source.prime_input(f, std::move(series));
      continue;
    }
    std::error_code ec;
    const double sz = (double)fs::file_size(in, ec);
    const bool gz = in.size() > 3 && (in.ends_with(".gz") || in.ends_with(".bgz"));
    double text = sz * (gz ? 4.5 : 1.0);  // gzip'd DNA: ~4.5x, unless the sample says
    if (o.regions.empty() && o.regions_bed.empty()) {
      const InputSample s = sample_records(in, 256 << 10);
      if (s.whole)
        text = (double)s.bytes;
      else if (s.compressed > 0)  // the ratio of this file's start
        text = sz * (double)s.bytes / (double)s.compressed;
      records += s.whole ? (double)s.records
                         : std::max(1.0, (double)s.records * text / std::max<double>(1, s.bytes));
      exact = exact && s.whole;
      // A token a base: the text's share of sequence (a FASTQ's is under half: its quality line
      // is as long, and its names count; charged as text, reads that fit were refused)
      if (s.bytes > 0) text *= (double)s.sequence / (double)s.bytes;
    }
    tokens += text;
  }
  if (!o.regions.empty() || !o.regions_bed.empty()) {  // the regions alone, exactly
    records = (double)source.n_regions();
    tokens = (double)source.region_tokens();
  }
  records = std::max(records, 1.0);
  OutputEstimate est;
  est.records = (int64_t)std::llround(records);
  est.exact_records = exact;
  const double per_record_g = std::min<double>(
      (double)c.global_max,
      std::max<double>((double)c.global_min, tokens / records / (double)c.global_every));
  const double rows = o.pool.kind == PoolSpec::kMean  ? records
                      : o.pool.kind == PoolSpec::kBin ? tokens / (double)o.pool.bin + records
                                                      : tokens;
  // A row: its embedding, bin_start and bin_end, and for a time series its timestamp strings
  // (~64 bytes each: a 16-byte reference and the text in the global heap), two where bins hold
  // several rows (timestamps and timestamps_end).
  const double embedding_bytes = (double)c.d_model * (o.f16 ? 2 : 4);  // a row's
  const double ts_bytes = c.kind != ModelKind::kTimeseries ? 0.0
                          : o.pool.kind == PoolSpec::kNone ? 64.0
                                                           : 128.0;
  const double row_bytes = embedding_bytes + 16 + ts_bytes;
  const double data = rows * row_bytes + records * 12.0 * (double)c.n_layers * per_record_g;
  // Measured with HDF5 1.8's object format (h5.cpp), dna-tiny: a part file's own structure is
  // ~16 KB (14.4 KB for a 2-row record), a short record in a group part ~3 KB (2.6 KB with its
  // data, --pool mean); a record in the final file ~2 KB when its datasets are all compact (16 KB
  // or less; 1.5 KB with its data, --pool mean), ~5 KB when its embedding is chunked (4.0 KB
  // besides its rows); the final file's own ~8 KB. One record's part becomes the file itself;
  // several are copied into it, so the parts and the final file are on disk together.
  if (records <= 1) {
    est.bytes = est.final_bytes = (int64_t)(data + 16384.0 + 8192.0);
    return est;
  }
  const double record_bytes = rows / records * embedding_bytes;
  const double final_record = record_bytes <= 16384.0 ? 2048.0 : 5120.0;
  // A group part holds the records that finish within a second or more (writer.hpp): short records
  // (up to 16,384 tokens, embedded side by side) share one; a longer record, which may take
  // longer than that, is charged a part of its own.
  const double part_record = tokens / records <= 16384.0 ? 3072.0 : 16384.0;
  est.bytes = (int64_t)(2.0 * data + records * (part_record + final_record) + 8192.0);
  est.final_bytes = (int64_t)(data + records * final_record + 8192.0);
  return est;
}

// Longest-first onto the least loaded rank: a balanced split of whole records by length.
std::vector<int> assign_by_length(const std::vector<int64_t>& lengths, int ranks) {
  std::vector<size_t> order(lengths.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
  std::vector<int64_t> load(ranks, 0);
  std::vector<int> owner(lengths.size(), 0);
  for (size_t i : order) {
    const int r = (int)(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[r] += lengths[i];
  }
  return owner;
}

// What ranks that read different inputs are told.
constexpr const char* kSameInputs =
    "Every rank reads the inputs itself, so each must see the same files at those paths: a "
    "node-local copy that is stale, or a file changed while the ranks read it?";

// The highest rank of c whose `digest` (a SHA-256 in hex) is not rank 0's; -1 where all agree.
// Collective: the checks of a split record, of a batch and of the inputs' end have this one
// shape and are the first collective of each of those paths, so ranks whose inputs diverged
// into different paths still meet here and learn it.
int64_t rank_that_differs(Comm& c, const std::string& digest) {
  std::array<char, 64> root{};
  std::memcpy(root.data(), digest.data(), std::min(digest.size(), root.size()));
  c.broadcast(root.data(), (int64_t)root.size(), 0);
  const bool same =
      digest.size() == root.size() && std::equal(digest.begin(), digest.end(), root.begin());
  int64_t differs = same ? -1 : c.rank();
  c.allreduce_max(&differs, 1);
  return differs;
}

struct Item {
  int64_t index;  // 1-based, input order
  Record rec;
  // record_fingerprint(rec), made once on first use (the parts' input_sha256)
  const std::string& fingerprint() const {
    if (fp.empty()) fp = record_fingerprint(rec);
    return fp;
  }
  mutable std::string fp;
};

}  // namespace

// Everything one run needs, shared by the per-record steps below.
using ForwardFn =
    std::function<ForwardOutput(const int32_t*, const Shard&, Comm&, const ForwardHooks&)>;
// Both passes of --rc-average and their average (rc_average_rows), where the backend does it in
// one call: (forward tokens, shard, reverse-complement tokens, mirrored shard, comm, hooks).
using RcPairFn = std::function<ForwardOutput(const int32_t*, const Shard&, const int32_t*,
                                             const Shard&, Comm&, const ForwardHooks&)>;

// One pass over many short whole records (the GPU's CudaModel::forward_packed): for each
// record, what run_forward_on gives for it alone (bins pooled, or with a mean block B > 0 its
// mean pool's block sums; with rc pairs the passes at 2k and 2k + 1 averaged), or its error.
struct PackedPass {
  const int32_t* tokens;
  int64_t n;
  bool mirrored;
};
struct PackedFn {
  std::function<std::vector<std::pair<ForwardOutput, std::exception_ptr>>(
      const std::vector<PackedPass>&, bool rc_pairs, int64_t mean_block)>
      run;
  int64_t max_tokens = 0;         // longer records: one at a time (CudaModel::packed_max_tokens)
  std::function<void()> release;  // frees the packs' own GPU buffers (CudaModel::release_packed)
};

// The backend the run uses: the CPU oracle, or the CUDA backend (--device cuda|auto); rc_pair is
// set where the backend averages the two passes itself (CUDA, rows back to the host).
#ifdef SPARSA_HAVE_CUDA
using NcclFuture = std::future<std::unique_ptr<NcclComm>>;
#else
using NcclFuture = std::future<void>;  // never valid
#endif

// adopt_nccl: set for a GPU model; hands it the NCCL communicator being made for split records.
// make_worker: set for a GPU model; makes another one on the same GPU (short records side by side).
// packed: set for a GPU model; embeds many short records in one pass (SPARSA_PACKED=0: not set).
// say_warnings: this rank says warnings (rank 0 alone: every rank chooses its backend).
// gpu_shared: ranks share a GPU (shared_gpu): split records exchange through MPI, not NCCL.
ForwardFn choose_backend(const EmbedOptions& o, const ModelWeights& w, Progress& progress,
                         bool say_warnings, std::shared_ptr<void>& keep_alive, RcPairFn& rc_pair,
                         std::function<void(NcclFuture&&, Comm&)>& adopt_nccl,
                         std::function<std::pair<ForwardFn, RcPairFn>()>& make_worker,
                         PackedFn& packed, bool gpu_shared) {
  (void)gpu_shared;  // (a build without CUDA)
  ForwardFn cpu = [&w](const int32_t* t, const Shard& s, Comm& c, const ForwardHooks& h) {
    return forward(w, t, s, c, h);
  };
  // An explicit --precision bf16 that --device auto resolved to the CPU: said (rank 0), not run.
  auto cpu_bf16_warning = [&](const char* why) {
    if (o.precision_given && !o.cuda_fp32 && say_warnings)
      std::fprintf(stderr,
                   "[sparsa] warning: --precision bf16 applies to a GPU; %s the CPU computes in "
                   "float32\n",
                   why);
  };
  if (o.device == "cpu") {
    progress.log("device: CPU (" + (o.device_note.empty() ? "--device cpu" : o.device_note) + ")" +
                 cpu_threads(o));
    if (!o.device_note.empty()) cpu_bf16_warning("some ranks have no GPU, so");
    return cpu;
  }
#ifdef SPARSA_HAVE_CUDA
  std::string why;
  if (cuda_available(&why)) {
    CudaOptions co;
    co.bf16 = !o.cuda_fp32;
    if (gpu_shared) co.nccl = 0;
    // bin:N: pool on the GPU and copy only the bin means back (shards start on bin boundaries,
    // so device bins are the record's bins; the reverse-complement pass pools the rows that
    // mirror each forward bin, and the two passes' bin means are averaged here).
    if (o.pool.kind == PoolSpec::kBin) {
      co.output = CudaOutput::kPooled;
      co.pool_bin = o.pool.bin;
    }
    // mean: only the blocks' sums come back (d / 8 bytes a token, not 4 d), as pool_shard's.
    if (o.pool.kind == PoolSpec::kMean) co.mean_block = kMeanBlock;
    const char* rc_dev = std::getenv("SPARSA_RC_ON_DEVICE");  // 0: average on the host (A/B)
    co.rc_on_device = !(rc_dev && rc_dev[0] == '0');
    // Per-token rows into a float16 file: converted on the GPU, half the bytes come back.
    co.rows_f16 = o.f16 && o.pool.kind == PoolSpec::kNone;
    // The model's forward pass, and both strands' where the device averages them.
    auto entry = [co](const std::shared_ptr<CudaModel>& model) {
      RcPairFn rc;
      if (co.output == CudaOutput::kHost)
        rc = [model](const int32_t* t, const Shard& s, const int32_t* rt, const Shard& rs, Comm& c,
                     const ForwardHooks& h) {
          return model->forward_rc_average(t, s, rt, rs, c, h);
        };
      ForwardFn f = [model](const int32_t* t, const Shard& s, Comm& c, const ForwardHooks& h) {
        return model->forward(t, s, c, h);
      };
      return std::make_pair(std::move(f), std::move(rc));
    };
    auto model = std::make_shared<CudaModel>(w, co);
    keep_alive = model;
    progress.log("device: CUDA GPU " + std::to_string(model->device()) +
                 (co.bf16 ? " (bf16)" : " (fp32)"));
    adopt_nccl = [model](NcclFuture&& f, Comm& c) { model->adopt_nccl(std::move(f), c); };
    // On the main model's device: choosing one again could be an MPI collective (the node-local
    // rank), and workers are made by one rank alone.
    CudaOptions wco = co;
    wco.device = model->device();
    make_worker = [&w, wco, entry]() { return entry(std::make_shared<CudaModel>(w, wco)); };
    packed.release = [model] { model->release_packed(); };
    packed.max_tokens = model->packed_max_tokens();
    // SPARSA_PACKED_MAX=N (tests, A/B runs): records of more than N tokens one at a time.
    if (const char* e = std::getenv("SPARSA_PACKED_MAX"); e && *e) {
      double v = 0;
      if (!whole_number(e, 1, 1e9, &v) || v != std::floor(v))
        throw ConfigError(std::string("SPARSA_PACKED_MAX=") + e + ": not a number of tokens");
      packed.max_tokens = std::min(packed.max_tokens, (int64_t)v);
    }
    if (!env_off("SPARSA_PACKED"))
      packed.run = [model](const std::vector<PackedPass>& passes, bool rc_pairs,
                           int64_t mean_block) {
        std::vector<CudaModel::PackedItem> items;
        for (const PackedPass& p : passes) items.push_back({p.tokens, p.n, p.mirrored});
        std::vector<CudaModel::PackedResult> r =
            model->forward_packed(items, {rc_pairs, mean_block});
        std::vector<std::pair<ForwardOutput, std::exception_ptr>> out;
        for (CudaModel::PackedResult& x : r) out.emplace_back(std::move(x.out), x.error);
        return out;
      };
    auto [f, rc] = entry(model);
    rc_pair = std::move(rc);
    return f;
  }
  if (o.device == "cuda") throw ConfigError("--device cuda: no usable GPU: " + why);
#else  // (--device cuda: refused by run_embed before the set-up)
  progress.log("device: CPU (this sparsa was built without CUDA)" + cpu_threads(o));
  cpu_bf16_warning("this sparsa was built without CUDA, so");
  return cpu;
#endif
  progress.log("device: CPU (no GPU found)" + cpu_threads(o));
  cpu_bf16_warning("with none found");
  return cpu;
}

// The error for a record whose embedding ran out of memory: which record, how long, this rank's
// part, and what to do. The GPU backend holds about 4 d + 48 bytes a token of a rank's part (the
// float32 residual stream, the router's scores and sort keys) besides buffers of fixed size.
static OutOfMemory record_out_of_memory(const Record& rec, int64_t part, int ranks,
                                        const ModelConfig& cfg, const char* stage,
                                        const std::string& what, long long device_total) {
  const int64_t n = rec.n_tokens();
  std::string msg =
      where(rec.source, rec.name, 0,
            std::to_string(n) + " tokens (" + std::to_string(part) + " on this rank, of " +
                std::to_string(ranks) + "): out of memory " + stage + ": " + what);
  if (device_total > 0) {
    const double per_token = 4.0 * (double)cfg.d_model + 48.0, need = per_token * (double)n;
    // More GPUs than now, and at least as many as the estimate asks for.
    const long long gpus =
        std::max<long long>((long long)std::ceil(need / (0.8 * (double)device_total)), ranks + 1);
    msg += ". On a GPU this model holds about " + human_bytes(per_token * 1e6) +
           " per million tokens of a rank's part, so this record needs about " + human_bytes(need) +
           " of GPU memory in all: split it over " + std::to_string(gpus) +
           " or more GPUs (mpirun -np " + std::to_string(gpus) +
           "; records of --split-min tokens or more are split over all ranks), or use --device "
           "cpu";
  } else {
    msg +=
        ". Split the record over ranks on more nodes (mpirun, srun: a node's ranks share its "
        "memory, so more ranks on one node do not help), or use a machine with more memory";
  }
  return OutOfMemory(msg, device_total);
}

struct EmbedRun {
  const EmbedOptions& o;
  Comm& comm;
  const ModelWeights& w;
  Journal& journal;
  Progress& progress;
  int64_t align;
  bool parallel_h5;
  // Records one rank holds with at most this many bytes of rows are written into group parts
  // (Journal::write_grouped); longer ones get a part each (a row per token: streamed into it).
  static constexpr int64_t kGroupedRowBytes = int64_t{16} << 20;
  ForwardFn forward_fn;
  RcPairFn rc_pair_fn;
  // GPU: makes another model on the same GPU for short records side by side (SideBatch);
  // empty on the CPU backend.
  std::function<std::pair<ForwardFn, RcPairFn>()> make_worker;
  int64_t gpu_workers = 8;
  std::vector<std::pair<ForwardFn, RcPairFn>> workers;
  bool told_threads = false;  // that too few threads cap the models side by side
  // GPU: short records in one pass (forward_packed) instead of models side by side; run is
  // cleared when a pack does not fit on the GPU (then side by side, as before).
  PackedFn packed;
  bool told_packed = false;
  bool packed_held = false;  // a pack's buffers are on the GPU (release_packed frees them)
  // Frees the GPU memory of the side-by-side models and of the packs (before a split record, or
  // when the GPU is full).
  void drop_workers() {
    workers.clear();
    if (packed_held && packed.release) packed.release();
    packed_held = false;
  }
  // The GPU is full: the side-by-side models go, and one model runs from here on.
  // `note`: the message is kept for the thread that writes (side_write) instead of printed here.
  void one_model(const std::string& what, std::string* note = nullptr) {
    const std::string msg = what + " with " + std::to_string(workers.size() + 1) +
                            " models side by side on the GPU; one model from here on";
    if (note)
      *note = msg;
    else
      progress.log(msg);
    drop_workers();
    gpu_workers = 1;
  }

  // embed_record; a record one rank holds that runs out of memory while side-by-side models
  // hold theirs is embedded again without them (they are kept between records, not remade for
  // every short one after a long one). A split record is not retried (its ranks would have to
  // agree): the side-by-side models are dropped before one.
  void embed_record_or_retry(const Item& it, Comm& c, bool show_progress) {
    try {
      embed_record(it, c, show_progress);
    } catch (const OutOfMemory&) {
      if (c.size() > 1 || (workers.empty() && !packed_held)) throw;
      const std::string what =
          "record " + std::to_string(it.index) + " '" + it.rec.name + "': out of memory";
      if (workers.empty()) {  // the packs' buffers: freed, made again by the next pack
        progress.log(what + "; embedding it again without the short records' GPU buffers");
        drop_workers();
      } else {
        one_model(what + "; embedding it again");
      }
      embed_record(it, c, show_progress);
    }
  }
  double forward_s = 0, write_s = 0;  // SPARSA_PROFILE=1: this rank's time in the model, in output
  bool cpu_backend = false;           // the host's memory is checked before a long record
  int64_t host_memory_limit = 0;      // SPARSA_HOST_MEMORY (0: none)

  // The CPU backend holds about 16 x d_model bytes a token of a rank's part (x, q, k, v in
  // float32; the rows are x's), and with --rc-average --pool none the forward strand's rows
  // (4 d a token) while the reverse one runs. A record past the memory this process may still
  // take (MemAvailable, the job's cgroup: shared by the node's ranks) is refused with a message
  // instead of running into the kernel's OOM killer, which ends the process without a word.
  // Collective over c. SPARSA_SKIP_MEMORY_CHECK=1: runs anyway.
  void check_host_memory(const Record& rec, const Shard& sh, Comm& c) const {
    static const bool skip = env_on("SPARSA_SKIP_MEMORY_CHECK");
    const int64_t d = w.config.d_model, m = sh.size();
    const int64_t need =
        16 * d * m + (o.rc_average && o.pool.kind == PoolSpec::kNone ? 4 * d * m : 0);
    const int64_t limit = host_memory_limit;
    // (a short record alone is not worth reading /proc for: 20,000 reads a run)
    if (!cpu_backend || skip || (need < (int64_t{256} << 20) && c.size() == 1 && limit == 0))
      return;
    int64_t avail = host_memory_available();
    if (limit > 0) avail = avail < 0 ? limit : std::min(avail, limit);
    // An address-space limit: what it leaves to map, less each thread's BLAS buffer and stack
    // (counted again where they are mapped already: on the safe side)
    if (int64_t as = address_space_room(); as >= 0) {
      as = std::max<int64_t>(0, as - omp_get_max_threads() * kBlasThreadBytes);
      avail = avail < 0 ? as : std::min(avail, as);
    }
    // The node's ranks share it (the launcher's count: of this run's ranks at most).
    const int64_t ranks = std::clamp<int64_t>(local_rank_count(), 1, comm.size());
    // The largest shortfall and the least room over c; a rank that cannot tell counts for none.
    constexpr int64_t kNone = std::numeric_limits<int64_t>::min();
    int64_t v[2] = {avail < 0 ? kNone : need - avail / ranks, avail < 0 ? kNone : -(avail / ranks)};
    if (c.size() > 1) c.allreduce_max(v, 2);
    if (v[0] <= 0) return;
    throw record_out_of_memory(
        rec, m, c.size(), w.config, "before the model",
        "this rank's part needs about " + human_bytes((double)need) +
            " of host memory on the CPU (16 x d_model bytes a token), and " +
            human_bytes((double)-v[1]) + " are available" +
            (ranks > 1 ? " to each of the node's " + std::to_string(ranks) + " ranks" : "") +
            " (MemAvailable, the job's memory limit or ulimit -v); SPARSA_SKIP_MEMORY_CHECK=1 "
            "runs anyway",
        0);
  }

  // A record split over c: every rank reads the DNA inputs itself, so a rank that read other
  // bytes under the same path (a stale node-local copy, an input changed between the ranks'
  // reads) would embed its shard of another record, and the file would hold a chimera under
  // one rank's input_sha256. Its fingerprint against rank 0's; collective (all throw).
  void check_same_record(const Item& it, Comm& c) const {
    if (const int64_t r = rank_that_differs(c, it.fingerprint()); r >= 0)
      throw InputError(it.rec.source + ": record '" + it.rec.name + "' (record " +
                       std::to_string(it.index) + "): rank " + std::to_string(r) +
                       " read other data for it than rank 0 (their input_sha256 differ). " +
                       kSameInputs);
  }

  // What every part of a record says of it: its metadata, d, and (from fwd) its global sets.
  RecordOutput record_output(const Item& it, const ForwardOutput& fwd) const {
    const Record& rec = it.rec;
    RecordOutput ro{&rec, to_string(w.config.kind), o.rc_average ? "rc-average" : "+",
                    rec.n_tokens()};
    ro.d = w.config.d_model;
    ro.global_positions = fwd.global_positions.data();
    ro.global_scores = fwd.global_scores.data();
    ro.n_layers = w.config.n_layers;
    ro.n_global = fwd.n_global;
    ro.fingerprint = it.fingerprint();
    ro.pooled = o.pool.kind == PoolSpec::kMean || (o.pool.kind == PoolSpec::kBin && o.pool.bin > 1);
    return ro;
  }

  // Stops at a safe point: every rank learns of a stop that any rank received.
  void check_stop(Comm& c) {
    int64_t sig = stop_signal();
    c.allreduce_max(&sig, 1);
    if (sig == 0) return;
    adopt_stop_signal((int)sig);  // a rank that was not signalled names the signal too
    throw Interrupted(kResumeAdvice);
  }

  // Whether the record's rows go into this rank's group part (Journal::write_grouped): one rank
  // holds it and its rows take at most kGroupedRowBytes.
  bool grouped(const Record& rec, const Comm& c) const {
    return c.size() == 1 &&
           o.pool.rows(rec.n_tokens()) * w.config.d_model * (o.f16 ? 2 : 4) <= kGroupedRowBytes;
  }

  // Forward (+ reverse complement) of one record over `c`, pooled, and its part written.
  void embed_record(const Item& it, Comm& c, bool show_progress) {
    const Record& rec = it.rec;
    const ModelConfig& cfg = w.config;
    const int64_t n = rec.n_tokens();
    // An open group waits no longer than its time, nor behind a record of another kind.
    if (grouped(rec, c))
      journal.flush_group_if_due();
    else
      journal.flush_group();
    const Shard sh = shard_of(n, c.rank(), c.size(), align);
    // (First: a rank whose inputs diverged may be at a batch's check or the inputs' end, which
    // have this collective's shape, and nowhere else.)
    if (c.size() > 1) check_same_record(it, c);
    check_host_memory(rec, sh, c);
    if (show_progress) progress.start_record(it.index, rec.name, n);
    // Layers over both passes (the reverse complement's too): the share done.
    const double total_layers = (double)cfg.n_layers * (o.rc_average ? 2 : 1);
    int64_t layers_done = 0;
    ForwardHooks hooks;
    hooks.after_layer = [&](int64_t) {
      ++layers_done;
      if (show_progress) progress.update((double)layers_done / total_layers);
      check_stop(c);
    };
    hooks.in_layer = [&](int64_t, double f) {
      if (show_progress) progress.update(((double)layers_done + f) / total_layers);
    };
    // One rank: the record at work is not kept by a stop anyway, so a stop need not wait for the
    // layer's end (minutes for a long record on the CPU: past Slurm's KillWait); the CPU's ops
    // poll it between tiles. Ranks together stop at layer ends (check_stop is collective).
    if (c.size() == 1) {
      hooks.cancel = &stop_requested;
      hooks.cancel_message = kResumeAdvice;
    }
    const auto t0 = std::chrono::steady_clock::now();
    // One rank holding the record and a row per token: the part is written while the rows come
    // (PartStream), from a GPU piece by piece as they cross (ForwardHooks::rows_out: float16
    // rows for a float16 file, else float32), so the host never holds them all; from the CPU
    // backend, which ignores the hook, after the forward pass.
    std::unique_ptr<PartStream> part;
    ForwardHooks out_hooks = hooks;
    static const bool stream_env = [] {  // SPARSA_STREAM_ROWS=0: A/B runs
      const char* e = std::getenv("SPARSA_STREAM_ROWS");
      return !(e && e[0] == '0');
    }();
    if (o.pool.kind == PoolSpec::kNone && c.size() == 1 && stream_env && !grouped(rec, c)) {
      const ForwardOutput none;  // the head names no global sets: they come with finish()
      RecordOutput head = record_output(it, none);
      head.n_out_total = n;
      part = std::make_unique<PartStream>(journal, it.index, head, o.f16);
      out_hooks.rows_out = [&](int64_t row0, int64_t n_rows, const void* rows) {
        if (o.f16)
          part->rows(row0, n_rows, static_cast<const uint16_t*>(rows));
        else
          part->rows(row0, n_rows, static_cast<const float*>(rows));
      };
    }
    try {  // (the streamed part's rows are written during the forward pass)
      ForwardOutput fwd = run_forward(it, c, sh, hooks, out_hooks);
      forward_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      write_out(it, c, sh, std::move(fwd), part.get());
    } catch (const h5::F16RangeError& e) {
      throw f16_error(rec, e);
    }
    if (show_progress) progress.finish_record();
  }

  // A value past float16's range met while a record's rows were written into its part: named by
  // the record (input, record, output row, column), not by the journal's part.
  NumericError f16_error(const Record& rec, const h5::F16RangeError& e) const {
    const char* row = o.pool.kind == PoolSpec::kMean  ? " (the record's mean)"
                      : o.pool.kind == PoolSpec::kBin ? " (a bin)"
                                                      : "";
    return NumericError(where(rec.source, rec.name, 0,
                              "output row " + std::to_string(e.row) + row + ", column " +
                                  std::to_string(e.column) + ": " + std::to_string(e.value) +
                                  h5::f16_range_advice));
  }

  // The record's rows into its part (the streamed one, else write_record), timed; running out
  // of host memory names the record.
  void write_out(const Item& it, Comm& c, const Shard& sh, ForwardOutput&& fwd, PartStream* part) {
    const auto t1 = std::chrono::steady_clock::now();
    try {
      if (part)
        finish_part(*part, it, std::move(fwd));
      else
        write_record(it, c, sh, std::move(fwd));
    } catch (const std::bad_alloc&) {
      throw record_out_of_memory(it.rec, sh.size(), c.size(), w.config,
                                 "pooling and writing its rows", "host memory exhausted", 0);
    }
    write_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  }

  // The forward pass of the record (both strands with --rc-average) over c: this rank's rows,
  // pooled where the backend pools. Errors name the record.
  ForwardOutput run_forward(const Item& it, Comm& c, const Shard& sh, const ForwardHooks& hooks,
                            const ForwardHooks& out_hooks) const {
    return run_forward_on(forward_fn, rc_pair_fn, it, c, sh, hooks, out_hooks);
  }
  ForwardOutput run_forward_on(const ForwardFn& fwd_fn, const RcPairFn& rc_fn, const Item& it,
                               Comm& c, const Shard& sh, const ForwardHooks& hooks,
                               const ForwardHooks& out_hooks) const {
    const Record& rec = it.rec;
    const ModelConfig& cfg = w.config;
    const int64_t n = rec.n_tokens(), d = cfg.d_model;
    const int32_t* tokens = rec.tokens.data() + sh.begin * rec.n_channels;
    ForwardOutput fwd;
    try {
      std::vector<int32_t> rc;  // --rc-average: the reverse complement, and this rank's mirror
      Shard mir;
      if (o.rc_average) {
        rc = rec.tokens;
        reverse_complement(rc);
        mir = shard_of(n, c.rank(), c.size(), align, true);
      }
      if (o.rc_average && rc_fn) {  // both passes and their average on the device
        fwd = rc_fn(tokens, sh, rc.data() + mir.begin, mir, c, out_hooks);
      } else if (o.rc_average) {
        fwd = fwd_fn(tokens, sh, c, hooks);
        ForwardOutput rev = fwd_fn(rc.data() + mir.begin, mir, c, hooks);
        if (fwd.pooled_bin > 0) {
          // Bin means of both passes, bin k of the reverse pass mirroring forward bin k: the mean
          // of (f + r) / 2 over a bin is the mean of the two means (equal up to rounding).
          if (rev.pooled_bin != fwd.pooled_bin || rev.y.size() != fwd.y.size())
            throw SystemError("internal: the two passes pooled differently");
          // Halves first: (f + r) / 2 of two values near FLT_MAX overflowed to Inf; halving is
          // exact, so these are the same bits but where a half is subnormal (|f| < 2^-125).
          for (size_t i = 0; i < fwd.y.size(); ++i) fwd.y[i] = 0.5f * fwd.y[i] + 0.5f * rev.y[i];
        } else {
          rc_average_rows(fwd.y, rev.y, sh.size(), d);
        }
      } else {
        fwd = fwd_fn(tokens, sh, c, out_hooks);
      }
    } catch (const NumericError& e) {  // the model's message has the position, not the record
      throw NumericError(where(rec.source, rec.name, 0, e.what()));
    } catch (const OutOfMemory& e) {
      throw record_out_of_memory(rec, sh.size(), c.size(), cfg, "in the model", e.what(),
                                 e.device_total);
    } catch (const std::bad_alloc&) {
      throw record_out_of_memory(rec, sh.size(), c.size(), cfg, "in the model",
                                 "host memory exhausted", 0);
    }
    return fwd;
  }

  // Short records this rank holds whole, side by side, then each written in input order:
  // - CPU backend, several threads: a record a thread (each pass then runs on its thread alone:
  //   OpenMP's inner regions get one thread). A short record's pass spread over the threads
  //   spends much of its time in OpenMP's fork and join.
  // - GPU: `gpu_workers` models on the same GPU (make_worker: each its own stream, buffers and
  //   weights), a host thread each. A short record's pass is ~180 small kernels that each fill a
  //   few of the GPU's SMs; several records' kernels run at once.
  // The rows are the same bits as one after another (the CPU backend's results do not depend on
  // the thread count; the GPU models are the same model). A record that fails (or a stop) ends
  // the batch there: the records before it are written, its error is thrown.
  // In three steps, so that a batch's writing can overlap the next batch's forward passes
  // (SidePipe): side_team (the GPU's models, on the thread that writes), side_forwards (any
  // thread: no journal), side_write (the journal's thread).
  struct SideBatch {
    std::vector<const Item*> items;
    std::vector<ForwardOutput> outs;
    std::vector<std::exception_ptr> errors;
    int team = 1;
    std::string note;  // side_forwards' message for the progress output (side_write prints it)
    bool failed() const {
      for (const auto& e : errors)
        if (e) return true;
      return false;
    }
  };
  // A batch and, on one rank's path, the records it points to.
  struct SideSet {
    std::vector<Item> items;  // owned records (one rank's path), or none (they live elsewhere)
    SideBatch batch;
  };
  // Batches of short records in a pipeline: a batch's forward passes run on a helper thread while
  // the calling thread writes the batch before into the journal, so the GPU (or the CPU threads)
  // do not wait for HDF5. Only the calling thread touches the journal and the progress line.
  class SidePipe {
   public:
    SidePipe(EmbedRun& run, Comm& self, bool show) : run_(run), self_(self), show_(show) {}
    bool pending() const { return made_ != nullptr; }
    // Whether writing a batch threw (a record's own error or the journal's): nothing more is
    // written through this pipe after that.
    bool failed() const { return failed_; }
    // The next batch, `items` and the records of `owned` (one rank's path: the batch owns them;
    // both are left as they were if making the batch fails): its forwards, overlapping the writing
    // of the batch made before. A record of it that failed: the ones before it are written and its
    // error thrown at once. After an error in the writing, it is not written. Returns the records
    // and tokens written.
    std::pair<int64_t, int64_t> push(std::vector<const Item*>&& items, std::vector<Item>&& owned) {
      auto next = std::make_unique<SideSet>();
      next->batch.team = run_.side_team((int64_t)(items.size() + owned.size()));
      next->items = std::move(owned);
      owned.clear();
      next->batch.items = std::move(items);
      items.clear();
      for (const Item& it : next->items) next->batch.items.push_back(&it);
      std::pair<int64_t, int64_t> written{0, 0};
      SideSet* n = next.get();
      std::future<void> forwards;
      try {
        forwards =
            std::async(std::launch::async, [this, n] { run_.side_forwards(n->batch, self_); });
      } catch (const std::system_error&) {  // no thread to be had: one after the other
        drain(written);
        run_.side_forwards(n->batch, self_);
      }
      if (forwards.valid()) {
        try {
          drain(written);
        } catch (...) {
          forwards.wait();  // it uses `next`
          throw;
        }
        forwards.get();
      }
      made_ = std::move(next);
      if (made_->batch.failed()) drain(written);
      return written;
    }
    // Writes the batch made last; returns its records and tokens.
    std::pair<int64_t, int64_t> drain() {
      std::pair<int64_t, int64_t> written{0, 0};
      drain(written);
      return written;
    }

   private:
    void drain(std::pair<int64_t, int64_t>& written) {
      if (!made_) return;
      std::unique_ptr<SideSet> done = std::move(made_);
      try {
        run_.side_write(done->batch, self_, show_);
      } catch (...) {
        failed_ = true;
        throw;
      }
      written.first += (int64_t)done->batch.items.size();
      for (const Item* it : done->batch.items) written.second += it->rec.n_tokens();
    }
    EmbedRun& run_;
    Comm& self_;
    bool show_;
    std::unique_ptr<SideSet> made_;  // made, not yet written
    bool failed_ = false;
  };
  Shard alone(const Item& it) const { return shard_of(it.rec.n_tokens(), 0, 1, align); }
  int side_team(int64_t k) {
    const int64_t threads = omp_get_max_threads();
    int team = (int)threads;
    if (packed.run) return 1;  // one pass for the whole batch
    if (make_worker) {         // the GPU's models, made when first needed; a host thread each
      auto wanted = [&] { return std::min<int64_t>({gpu_workers, k, threads}); };
      while ((int64_t)workers.size() + 1 < wanted()) {
        try {
          workers.push_back(make_worker());
        } catch (const std::exception& e) {  // no room on the GPU: fewer models side by side
          gpu_workers = (int64_t)workers.size() + 1;
          progress.log("short records: " + std::to_string(gpu_workers) +
                       " model(s) side by side on the GPU, not more (" + e.what() + ")");
          break;
        }
      }
      team = (int)wanted();
      if (team < std::min<int64_t>(gpu_workers, k) && !told_threads) {
        told_threads = true;
        progress.log("short records: " + std::to_string(team) + " model(s) side by side on the " +
                     "GPU, one a CPU thread this rank may use (" + std::to_string(threads) +
                     "; mpirun binds each rank to a core unless started with --bind-to none)");
      }
    }
    return team;
  }
  void side_forwards(SideBatch& b, Comm& self) {
    const std::vector<const Item*>& items = b.items;
    const int64_t k = (int64_t)items.size();
    std::vector<ForwardOutput>& outs = b.outs;
    std::vector<std::exception_ptr>& errors = b.errors;
    outs.assign(k, ForwardOutput{});
    errors.assign(k, nullptr);
    const int team = b.team;
    const auto t0 = std::chrono::steady_clock::now();
    const ForwardHooks none;
    if (packed.run && team == 1 && packed_forwards(b, self)) {
      forward_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return;
    }
    // On the CPU (team = this rank's threads) the records longest first, so that the last few do
    // not leave threads idle, and where there are fewer records than threads each one's ops run
    // over threads / records of them (a record's bits do not depend on its threads). On the GPU
    // (team = models side by side) a thread a model.
    SidePlan plan;
    if (make_worker) {  // a model a thread
      plan.order.resize(k);
      std::iota(plan.order.begin(), plan.order.end(), int64_t{0});
      plan.waves.push_back({team, 1, 0, k});
    } else {
      std::vector<int64_t> tokens;
      for (const Item* it : items) tokens.push_back(it->rec.n_tokens());
      plan = cpu_side_plan(team, tokens);
    }
    const std::vector<int64_t>& order = plan.order;
    auto one = [&](int64_t i) {
      try {
        // A stop leaves the records not yet begun: those before are written, then it is raised.
        if (stop_requested()) throw Interrupted(kResumeAdvice);
        const Shard sh = alone(*items[i]);
        const int t = omp_get_thread_num();
        if (make_worker && t > 0)
          outs[i] = run_forward_on(workers[t - 1].first, workers[t - 1].second, *items[i], self, sh,
                                   none, none);
        else
          outs[i] = run_forward(*items[i], self, sh, none, none);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    };
    const int levels = omp_get_max_active_levels();
    for (const SideWave& wave : plan.waves) {
      if (wave.outer <= 1) {  // one record at a time: its ops over every thread
        for (int64_t j = wave.begin; j < wave.end; ++j) one(order[j]);
        continue;
      }
      omp_set_max_active_levels(wave.inner > 1 ? 2 : 1);
#pragma omp parallel num_threads(wave.outer)
      {
        omp_set_num_threads(wave.inner);  // this thread's record's ops (nested regions)
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = wave.begin; j < wave.end; ++j) one(order[j]);
      }
    }
    omp_set_max_active_levels(levels);
    // The GPU out of memory with several models on it: one from here on (the others' memory
    // freed), and the records that ran out are embedded again on it.
    if (!workers.empty()) {
      std::vector<int64_t> again;
      for (int64_t i = 0; i < k; ++i) {
        if (!errors[i]) continue;
        try {
          std::rethrow_exception(errors[i]);
        } catch (const OutOfMemory&) {
          again.push_back(i);
        } catch (...) {
        }
      }
      if (!again.empty()) {
        one_model("short records: the GPU ran out of memory", &b.note);
        for (int64_t i : again) {
          errors[i] = nullptr;
          try {
            outs[i] = run_forward(*items[i], self, alone(*items[i]), none, none);
          } catch (...) {
            errors[i] = std::current_exception();
          }
        }
      }
    }
    forward_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // The batch's records in packed passes (as many records as fit in kPackedRows rows a pass; a
  // record longer than the GPU packs, one at a time), each record's output what run_forward_on
  // gives it alone (the two strands averaged, bins or a mean's blocks pooled on the GPU), errors
  // named by the record. False, with nothing done, where a pass does not fit on the GPU: packing
  // is then off for the run (the records go side by side, one model each).
  bool packed_forwards(SideBatch& b, Comm& self) {
    static constexpr int64_t kPackedRows = int64_t{1} << 19;
    const std::vector<const Item*>& items = b.items;
    const int64_t k = (int64_t)items.size();
    const int64_t mean_block = o.pool.kind == PoolSpec::kMean ? kMeanBlock : 0;
    std::vector<std::vector<int32_t>> rcs(o.rc_average ? k : 0);
    std::vector<std::pair<ForwardOutput, std::exception_ptr>> results;  // one a record, in order
    const ForwardHooks none;
    int64_t done = 0;
    try {
      std::vector<PackedPass> passes;
      int64_t rows = 0;
      auto run = [&] {
        if (passes.empty()) return;
        packed_held = true;
        for (auto& r : packed.run(passes, o.rc_average, mean_block)) {
          if (r.second) {  // the model's message has the position, not the record
            const Record& rec = items[(int64_t)results.size()]->rec;
            try {
              std::rethrow_exception(r.second);
            } catch (const NumericError& e) {
              r.second =
                  std::make_exception_ptr(NumericError(where(rec.source, rec.name, 0, e.what())));
            } catch (...) {
            }
          }
          results.push_back(std::move(r));
        }
        passes.clear();
        rows = 0;
      };
      for (; done < k; ++done) {
        const Item& it = *items[done];
        const int64_t n = it.rec.n_tokens(), per = o.rc_average ? 2 * n : n;
        if (rows + per > kPackedRows || n > packed.max_tokens) run();
        if (stop_requested()) break;  // those before are written, then the stop is raised
        if (n > packed.max_tokens) {  // alone, in its place
          try {
            results.emplace_back(run_forward(it, self, alone(it), none, none), nullptr);
          } catch (const OutOfMemory&) {
            throw;
          } catch (...) {
            results.emplace_back(ForwardOutput{}, std::current_exception());
          }
          continue;
        }
        passes.push_back({it.rec.tokens.data(), n, false});
        if (o.rc_average) {
          rcs[done] = it.rec.tokens;
          reverse_complement(rcs[done]);
          passes.push_back({rcs[done].data(), n, true});
        }
        rows += per;
      }
      run();
    } catch (const std::bad_alloc&) {
      return packing_failed(b, "host memory exhausted");
    } catch (const OutOfMemory& e) {
      return packing_failed(b, e.what());
    } catch (...) {  // (a CUDA failure): the records before the failed pass are written
      const int64_t at = (int64_t)results.size();
      if (at >= k) throw;
      for (int64_t i = 0; i < at; ++i) take_result(b, i, results[i]);
      b.errors[at] = std::current_exception();
      return true;
    }
    for (int64_t i = 0; i < done; ++i) take_result(b, i, results.at(i));
    if (done < k) b.errors[done] = std::make_exception_ptr(Interrupted(kResumeAdvice));
    if (!told_packed) {
      told_packed = true;
      b.note = "short records: packed into one pass on the GPU (up to " +
               count_of(kPackedRows, "row") + " a pass)";
    }
    return true;
  }
  static void take_result(SideBatch& b, int64_t i,
                          std::pair<ForwardOutput, std::exception_ptr>& r) {
    if (r.second)
      b.errors[i] = r.second;
    else
      b.outs[i] = std::move(r.first);
  }
  // A pack that did not fit: its buffers freed, packing off for the run.
  bool packing_failed(SideBatch& b, const std::string& what) {
    b.note = "short records: one pass over many did not fit on the GPU (" + what +
             "); side by side from here on";
    packed.run = nullptr;
    drop_workers();
    return false;
  }
  void side_write(SideBatch& b, Comm& self, bool show_progress) {
    if (!b.note.empty()) progress.log(b.note);
    for (size_t i = 0; i < b.items.size(); ++i) {
      if (b.errors[i]) std::rethrow_exception(b.errors[i]);
      const Item& it = *b.items[i];
      if (show_progress) progress.start_record(it.index, it.rec.name, it.rec.n_tokens());
      write_out(it, self, alone(it), std::move(b.outs[i]), nullptr);
      if (show_progress) progress.finish_record();
    }
  }

  // The streamed part of a record one rank holds: its rows (unless the backend streamed them),
  // then its bins and global sets.
  void finish_part(PartStream& part, const Item& it, ForwardOutput&& fwd) {
    const Record& rec = it.rec;
    const ModelConfig& cfg = w.config;
    const int64_t n = rec.n_tokens(), d = cfg.d_model;
    if (!fwd.rows_streamed) {
      if (!fwd.y16.empty()) {
        if ((int64_t)fwd.y16.size() != n * d) throw SystemError("internal: rows of another size");
        part.rows(0, n, fwd.y16.data());
      } else {
        if ((int64_t)fwd.y.size() != n * d || fwd.pooled_bin != 0)
          throw SystemError("internal: rows of another size");
        part.rows(0, n, fwd.y.data());
      }
    }
    fwd.y = {};
    fwd.y16 = {};
    std::vector<int64_t> starts(n), ends(n);
    for (int64_t i = 0; i < n; ++i) starts[i] = i, ends[i] = i + 1;
    RecordOutput ro = record_output(it, fwd);
    ro.n_out_total = ro.n_rows = n;
    ro.starts = starts.data();
    ro.ends = ends.data();
    part.finish(ro);
  }

  // Pools this rank's rows of the record, brings them to the ranks that write, writes the part.
  void write_record(const Item& it, Comm& c, const Shard& sh, ForwardOutput&& fwd) {
    const Record& rec = it.rec;
    const ModelConfig& cfg = w.config;
    const int64_t n = rec.n_tokens(), d = cfg.d_model;
    Pooled pooled;
    if (fwd.pooled_bin > 0) {
      if (o.pool.kind != PoolSpec::kBin || fwd.pooled_bin != o.pool.bin)
        throw SystemError("internal: the backend pooled with another bin size");
      pooled.rows = std::move(fwd.y);
      for (int64_t b0 = 0; b0 < sh.size(); b0 += o.pool.bin) {
        pooled.starts.push_back(sh.begin + b0);
        pooled.ends.push_back(std::min(n, sh.begin + b0 + o.pool.bin));
      }
    } else if (!fwd.block_sums.empty()) {  // a mean pool's blocks, made on the device
      if (o.pool.kind != PoolSpec::kMean)
        throw SystemError("internal: block sums from the backend for another pool");
      pooled.block_sums = std::move(fwd.block_sums);
    } else if (!fwd.y16.empty()) {  // float16 rows, one per token (--pool none)
      if (o.pool.kind != PoolSpec::kNone)
        throw SystemError("internal: float16 rows from the backend for a pooled output");
      pooled = pool_shard({}, sh.size(), d, sh.begin, n, o.pool);
      pooled.rows16 = std::move(fwd.y16);
    } else {
      pooled = pool_shard(std::move(fwd.y), sh.size(), d, sh.begin, n, o.pool);
    }
    fwd.y = {};
    // A float16 file with a row per token: every rank's rows in float16 before they meet (a rank
    // without a GPU, under --device auto, converts its own: the same bits as the GPU's).
    if (o.f16 && o.pool.kind == PoolSpec::kNone && pooled.rows16.empty() && !pooled.rows.empty()) {
      pooled.rows16.resize(pooled.rows.size());
      if (const int64_t bad = h5::float_to_f16(pooled.rows.data(), pooled.rows16.data(),
                                               (int64_t)pooled.rows.size());
          bad >= 0)
        throw NumericError(
            where(rec.source, rec.name, 0,
                  "output row " +
                      std::to_string(pooled.starts.empty() ? bad / d : pooled.starts[bad / d]) +
                      ", column " + std::to_string(bad % d) + ": " +
                      std::to_string(pooled.rows[bad]) + h5::f16_range_advice));
      pooled.rows = {};
    }
    RecordOutput ro = record_output(it, fwd);
    std::vector<float> rows;
    std::vector<uint16_t> rows16;
    std::vector<int64_t> starts, ends;
    const bool parallel = parallel_h5 && c.size() > 1 && rec.timestamps.empty();
    if (o.pool.kind == PoolSpec::kMean) {
      // Block sums are added in block order on rank 0: the same sum for any split (one rank:
      // its own, not copied twice more: d / 8 bytes a token, 300 MB for E. coli at d = 512).
      std::vector<double> sums;
      if (c.size() == 1) {
        sums = std::move(pooled.block_sums);
      } else {
        std::vector<uint8_t> b;
        c.gatherv(pooled.block_sums.data(), (int64_t)pooled.block_sums.size() * 8, b, nullptr, 0);
        pooled.block_sums = {};
        sums.resize(b.size() / 8);
        if (!b.empty()) std::memcpy(sums.data(), b.data(), b.size());
      }
      if (c.rank() == 0) rows = combine_mean(sums, d, n), starts = {0}, ends = {n};
      ro.n_out_total = 1;
    } else if (parallel || c.size() == 1) {  // every rank writes its rows, or one rank holds all
      rows = std::move(pooled.rows);
      rows16 = std::move(pooled.rows16);
      starts = std::move(pooled.starts);
      ends = std::move(pooled.ends);
      int64_t counts[1] = {(int64_t)starts.size()};
      std::vector<uint8_t> all;
      c.allgatherv(counts, 8, all);
      const int64_t* per = reinterpret_cast<const int64_t*>(all.data());
      for (int r = 0; r < c.size(); ++r) {
        if (r < c.rank()) ro.row0 += per[r];
        ro.n_out_total += per[r];
      }
    } else {
      auto gather = [&](const void* p, int64_t bytes, auto& out) {
        std::vector<uint8_t> b;
        c.gatherv(p, bytes, b, nullptr, 0);
        out.resize(b.size() / sizeof(out[0]));
        if (!b.empty()) std::memcpy(out.data(), b.data(), b.size());
      };
      gather(pooled.rows.data(), (int64_t)pooled.rows.size() * 4, rows);
      gather(pooled.rows16.data(), (int64_t)pooled.rows16.size() * 2, rows16);
      gather(pooled.starts.data(), (int64_t)pooled.starts.size() * 8, starts);
      gather(pooled.ends.data(), (int64_t)pooled.ends.size() * 8, ends);
      ro.n_out_total = (int64_t)starts.size();
    }
    if (parallel) {
      ro.n_rows = (int64_t)starts.size();
    } else {
      ro.n_rows = c.rank() == 0 ? ro.n_out_total : 0;
      ro.row0 = 0;
    }
    ro.rows = rows.data();
    ro.rows16 = rows16.empty() ? nullptr : rows16.data();
    ro.starts = starts.data();
    ro.ends = ends.data();
    if ((int64_t)(rows16.empty() ? rows.size() : rows16.size()) != (int64_t)starts.size() * d ||
        (!rows16.empty() && !rows.empty()))
      throw SystemError("internal: " + rec.name + ": the rows to write do not match their bins");
    // A short record one rank holds joins this rank's group part; anything else is a part alone.
    try {
      if (grouped(rec, c) && ro.n_rows == ro.n_out_total) {
        journal.write_grouped(it.index, ro, o.f16);
      } else {
        journal.flush_group();
        journal.write_part(it.index, ro, o.f16, parallel, c);
      }
    } catch (const h5::F16RangeError& e) {
      throw f16_error(rec, e);
    }
  }
};

// "" when every record of the inputs has the input_sha256 of the complete output f's record of
// its index and name, and f holds no other records; else what differs.
std::string records_differ(const EmbedOptions& o, const h5::File& f) {
  const ModelConfig cfg = parse_model_config(
      h5::File::open_read(o.model).attr_string("/", "config"), o.model + " (attribute config)");
  RecordSource source(o, cfg);
  source.set_warnings(false);  // the run that made f said them
  Record rec;
  int64_t index = 0;
  const int64_t held = (int64_t)f.list("/records").size();
  while (source.next(rec)) {
    // The key as this version writes it, or (a file of more than a million records made before
    // keys took more digits) with six.
    std::string g = "/records/" + Journal::key_for(index, rec.name, held);
    if (!f.exists(g)) g = "/records/" + Journal::key_for(index, rec.name);
    ++index;
    if (!f.exists(g) || !f.has_attr(g, "input_sha256"))
      return "it has no record " + std::to_string(index) + " '" + rec.name + "'";
    if (f.attr_string(g, "input_sha256") != record_fingerprint(rec))
      return "record " + std::to_string(index) + " '" + rec.name + "' of " + rec.source +
             " changed since";
  }
  if (held != index)
    return "it holds " + count_of(held, "record") + ", the inputs " + std::to_string(index);
  return "";
}

// The variables that choose collectives (NCCL or not, its warm-up, parallel or serial HDF5) or a
// row's arithmetic (kernels, router, chunks) must be the same on every rank: mpirun over ssh
// passes a variable set by hand only to the ranks of the local node unless given with -x, and
// ranks that disagree would wait in different collectives or give rows that depend on the rank.
// Rank 0's values are made every rank's.
void agree_on_env(Comm& comm) {
  if (comm.size() <= 1) return;
  static const char* const names[] = {"SPARSA_NCCL",
                                      "SPARSA_NCCL_WARMUP",
                                      "SPARSA_HDF5_SERIAL",
                                      "SPARSA_ROUTER",
                                      "SPARSA_ATTN_BAND",
                                      "SPARSA_ATTN_GLOBAL",
                                      "SPARSA_ATTN_SPLIT",
                                      "SPARSA_MLP_GEMM",
                                      "SPARSA_CHUNK_ROWS",
                                      "SPARSA_GEMM_ALGO",
                                      "SPARSA_STREAM_ROWS",
                                      "SPARSA_RC_ON_DEVICE",
                                      "SPARSA_EARLY_DEVICE",
                                      "SPARSA_GROUP_SECONDS",
                                      "SPARSA_SKIP_SPACE_CHECK",
                                      "SPARSA_COMM_TIMEOUT",
                                      "SPARSA_PACKED",
                                      "SPARSA_PACKED_MAX",
                                      "SPARSA_SKIP_MEMORY_CHECK",
                                      "SPARSA_HOST_MEMORY"};
  std::string text;  // per name: '1' value '\n', or '0' '\n' when unset
  if (comm.rank() == 0)
    for (const char* n : names) {
      const char* v = std::getenv(n);
      text += v ? std::string("1") + v + "\n" : std::string("0\n");
    }
  int64_t len = (int64_t)text.size();
  comm.broadcast(&len, sizeof len, 0);
  text.resize(len);
  comm.broadcast(text.data(), len, 0);
  std::istringstream in(text);
  std::string line;
  for (const char* n : names) {
    if (!std::getline(in, line) || line.empty()) break;
    // Only where this rank's value differs: MPI's own threads may read the environment.
    const char* mine = std::getenv(n);
    if (line[0] == '1' && (!mine || line.compare(1, std::string::npos, mine) != 0))
      setenv(n, line.c_str() + 1, 1);
    else if (line[0] == '0' && mine)
      unsetenv(n);
  }
}

// SPARSA_SIDE_BY_SIDE: -1 unset, 0 off, N models on a GPU (checked before any work).
static int64_t side_by_side_env() {
  const char* e = std::getenv("SPARSA_SIDE_BY_SIDE");
  if (!e || !*e) return -1;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  if (*end != 0 || v < 0 || v > 64)
    throw ConfigError(std::string("SPARSA_SIDE_BY_SIDE=") + e +
                      ": not 0 (off) or a number of GPU models from 1 to 64");
  return v;
}

EmbedSummary run_embed(const EmbedOptions& o, Comm& comm) {
  agree_on_env(comm);
  if (std::string bad; comm_timeout_env(&bad), !bad.empty()) throw ConfigError(bad);
  const int64_t side_env = side_by_side_env();
  // A task farm (each task its own --output) is fine; N tasks meant as one MPI job are not: each
  // would embed everything, and all but one stop at the output's journal lock. Said up front,
  // whether srun gave the tasks no MPI interface, or the launcher's is one this MPI cannot join.
  if (const LauncherSize ls = launcher_world_size(); ls.size > 1 && comm.size() == 1) {
    if (!ls.mpi_env)
      std::fprintf(stderr,
                   "[sparsa] warning: one of %d srun tasks started without an MPI process "
                   "manager interface (no PMIX_RANK or PMI_RANK): this task runs alone, on its "
                   "own --output. To split records over the tasks, start them with `srun "
                   "--mpi=pmix` (`srun --mpi=list` shows what this Slurm offers) or mpirun\n",
                   ls.size);
    else
      std::fprintf(stderr,
                   "[sparsa] warning: the launcher started %d processes (%s=%d) but the MPI "
                   "library this sparsa was built with sees a world of 1: they do not "
                   "understand each other, so this process runs alone, on its own --output "
                   "(right for a task farm). To split the records over the processes, start "
                   "sparsa with the mpirun of the MPI it was built with (`sparsa --version` "
                   "names it), or under srun with a plugin that MPI speaks (`srun --mpi=list`; "
                   "pmix for Open MPI, pmi2 for MPICH / Intel MPI builds)\n",
                   ls.size, ls.variable, ls.size);
  }
  const auto start = std::chrono::steady_clock::now();
  auto since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const bool root = comm.rank() == 0;
  EmbedSummary sum;
  if (o.inputs.empty()) throw ConfigError("no --input given");
  // The same file given twice (by any path): a warning, also with --quiet. One stat an input,
  // not one a pair (runs over thousands of CSVs).
  std::map<std::pair<dev_t, ino_t>, size_t> seen;
  for (size_t i = 0; root && i < o.inputs.size(); ++i) {
    struct stat st {};
    if (::stat(o.inputs[i].c_str(), &st) != 0) continue;  // (missing: said by the source)
    const auto [at, fresh] = seen.try_emplace({st.st_dev, st.st_ino}, i);
    if (!fresh)
      std::fprintf(stderr,
                   "[sparsa] warning: input %s is given twice (as --input %zu and %zu): its "
                   "records are embedded twice\n",
                   o.inputs[i].c_str(), at->second + 1, i + 1);
  }
  // ... and the same --region text twice (each input's record of that name embedded twice).
  for (size_t i = 0; root && i < o.regions.size(); ++i)
    if (const auto first =
            std::find(o.regions.begin(), o.regions.begin() + (std::ptrdiff_t)i, o.regions[i]);
        first != o.regions.begin() + (std::ptrdiff_t)i)
      std::fprintf(stderr,
                   "[sparsa] warning: --region %s is given twice (as --region %zu and %zu): it "
                   "is embedded twice\n",
                   o.regions[i].c_str(), (size_t)(first - o.regions.begin()) + 1, i + 1);
  // Several ranks: all use a GPU or none does. With --device auto, ranks that chose by
  // themselves mixed bf16 GPU rows with float32 CPU rows in one file (and a split record's GPU
  // ranks waited for the CPU ranks in NCCL's set-up until the watchdog).
  // (Before the --resume check below: the manifest names the backend the ranks agree on.)
  bool no_gpu_somewhere = false;
  [[maybe_unused]] double missing = 0;  // ranks without a usable GPU
#ifdef SPARSA_HAVE_CUDA
  if (comm.size() > 1 && o.device != "cpu") {
    missing = cuda_available(nullptr) ? 0.0 : 1.0;
    comm.allreduce_sum(&missing, 1);
    // (none has one: the usual CPU run; --device cuda is refused here, before --force would
    // set the old output aside)
    no_gpu_somewhere = missing > 0 && missing < comm.size();
    if (missing > 0 && o.device == "cuda")
      throw ConfigError("--device cuda: " + std::to_string((int64_t)missing) + " of " +
                        std::to_string(comm.size()) +
                        " ranks have no usable GPU (a node without one, or a GPU that failed); "
                        "give every rank a GPU, or use --device cpu");
    if (no_gpu_somewhere && root)
      std::fprintf(stderr,
                   "[sparsa] warning: %lld of %d ranks have no usable GPU, so every rank uses "
                   "its CPU (one backend a run: its rows are alike); give every rank a GPU to "
                   "use them\n",
                   (long long)missing, comm.size());
  }
#endif
  // One rank: --device cuda without a GPU is refused before --force sets the old output aside
  // (several ranks: refused above).
#ifdef SPARSA_HAVE_CUDA
  if (std::string why; comm.size() == 1 && o.device == "cuda" && !cuda_available(&why))
    throw ConfigError("--device cuda: no usable GPU: " + why);
#else
  if (o.device == "cuda")
    throw ConfigError("--device cuda: this sparsa was built without CUDA (nvcc was not found)");
#endif
  const int64_t host_memory_limit = env_bytes("SPARSA_HOST_MEMORY");  // (a bad value: said now)
  EmbedOptions chosen = o;
  if (no_gpu_somewhere) {
    chosen.device = "cpu";
    chosen.device_note = "some ranks have no GPU, so every rank uses its CPU";
  }
  // Under an address-space limit (`ulimit -v`) every CPU thread must map OpenBLAS's 128 MB buffer
  // and a stack: where one cannot, OpenBLAS retries forever (a hang that no signal ends), so a
  // run that would meet that is refused now. Collective: the largest shortfall of any rank.
  if (resolved_backend(chosen) == "cpu fp32") {
    const int64_t room = address_space_room(), threads = omp_get_max_threads();
    constexpr int64_t kBase = int64_t{256} << 20;  // the first thread's arena, the model, HDF5
    constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();
    // the largest shortfall, and the least room of a rank under a limit (kUnlimited: none is)
    int64_t v[2] = {
        room < 0 ? std::numeric_limits<int64_t>::min() : threads * kBlasThreadBytes + kBase - room,
        room < 0 ? -kUnlimited : -room};
    if (comm.size() > 1) comm.allreduce_max(v, 2);
    if (v[0] > 0) {
      const int64_t least = -v[1];
      const int64_t fit = std::max<int64_t>(0, (least - kBase) / kBlasThreadBytes);
      throw SystemError(
          "an address-space limit (ulimit -v) leaves " +
          std::string(comm.size() > 1 ? "a rank " : "this process ") + human_bytes((double)least) +
          " to map, and the CPU backend's " + std::to_string(threads) +
          (threads == 1 ? " thread needs" : " threads need") + " about " +
          human_bytes((double)(threads * kBlasThreadBytes + kBase)) +
          " (OpenBLAS maps a 128 MB buffer for each, and waits forever where it cannot): raise "
          "the limit (ulimit -v unlimited; under Slurm, the job's memory)" +
          (fit > 0 && fit < threads ? " or use at most --threads " + std::to_string(fit)
                                    : std::string()));
    }
  }
  if (check_paths(o)) {
    // --resume on a complete output: done if this same run made it (its run_manifest; a file
    // from before run_manifest existed: the same model, pooling and dtype).
    const std::string sha = sha256_file(o.model);
    const std::string now = manifest_for(chosen, sha);
    std::string why;
    {
      h5::File f = h5::File::open_read(o.output);
      if (f.has_attr("/", "run_manifest")) {
        why = first_difference(now, normalized_manifest(f.attr_string("/", "run_manifest")));
        // The same run by its options; by its records too: each one's input_sha256 against the
        // input as it is now (the manifest names the inputs by path alone), read by rank 0.
        if (why.empty()) {
          if (root) why = records_differ(o, f);
          int64_t len = (int64_t)why.size();
          comm.broadcast(&len, sizeof len, 0);
          why.resize(len);
          if (len) comm.broadcast(why.data(), len, 0);
        }
      } else {
        const std::string dtype = o.f16 ? "float16" : "float32";
        for (auto [name, want] : {std::pair<const char*, std::string>{"model_sha256", sha},
                                  {"pool", o.pool.text()},
                                  {"dtype", dtype}})
          if (why.empty() && (!f.has_attr("/", name) || f.attr_string("/", name) != want))
            why = std::string("its ") + name + " is not this run's";
      }
    }
    if (why.empty()) {
      sum.already_complete = true;
      return sum;
    }
    if (!o.force)
      throw ConfigError("--resume: " + o.output + " is complete but was made by a different run (" +
                        why +
                        "); use the same model, inputs and options, or --force to replace it");
    if (root && !o.quiet)
      std::fprintf(stderr,
                   "[sparsa] --force: %s was made by a different run (%s); making it anew\n",
                   o.output.c_str(), why.c_str());
  }
  // --force: the old output is set aside in the journal folder (OUT.parts/PREVIOUS_OUTPUT) once
  // the checkpoint is loaded and the inputs checked (regions against the indexes, CSVs read for
  // the estimate), so that a run that fails after that (a bad record, a full disk) leaves nothing
  // at the path that could be taken for its result (spec 5), yet loses nothing the user had
  // there; a run refused before (a typo in a region, a bad CSV) or by the free-space check leaves
  // it where it was, as a refused command line does. It lives and dies with the journal: the run
  // that finishes the output (this one, or a later one of the journal: --resume) removes it with
  // the folder; the journal's clearing spares it.
  const std::string previous = o.output + ".parts/" + Journal::kPreviousOutput;
  struct SetAside {
    std::string from, to;
    bool kept = false;  // this run set it aside and has not finished
    ~SetAside() {
      if (kept)
        std::fprintf(stderr,
                     "[sparsa] the previous %s is kept as %s until a run of this command finishes "
                     "the output (which removes it); to keep it instead: mv %s %s\n",
                     from.c_str(), to.c_str(), to.c_str(), from.c_str());
    }
  } aside;
  // The checkpoint's SHA-256 (provenance, the journal's manifest) is computed while the model is
  // loaded and the device set up: ~0.25 s for dna-base's 100 MB, a share of a job's fixed cost.
  // The GPU's context is made meanwhile too (cuda::warm_up_device; SPARSA_EARLY_DEVICE=0: not).
  std::atomic<bool> sha_cancel{false};
  std::future<std::string> sha =
      std::async(std::launch::async, [&] { return sha256_file(o.model, &sha_cancel); });
  // Declared after the future, so destroyed before it: a run that fails while the hash runs
  // (a bad checkpoint) stops the hash instead of waiting for it in the future's destructor.
  struct CancelOnExit {
    std::atomic<bool>& flag;
    ~CancelOnExit() { flag = true; }
  } cancel_sha{sha_cancel};
  std::future<void> device_ready;
#ifdef SPARSA_HAVE_CUDA
  const char* early = std::getenv("SPARSA_EARLY_DEVICE");
  if (chosen.device != "cpu" && !(early && early[0] == '0'))
    device_ready = std::async(std::launch::async, cuda::warm_up_device, comm.size() == 1);
#endif
  // Several ranks, all with a GPU (NCCL not switched off): the NCCL communicator of split
  // records is made on a helper thread from now on, its ~0.5 s under the checkpoint's loading
  // and the set-up (before: inside the first split record's forward).
  NcclFuture nccl_early;
  bool gpu_shared = false;  // two ranks on one GPU: NCCL refuses them, exchanges go through MPI
#ifdef SPARSA_HAVE_CUDA
  if (comm.size() > 1 && o.device != "cpu" && nccl_enabled_by_env()) {
    if (missing == 0) {
      const int device = cuda::select_device(-1);
      const std::string shared = shared_gpu(comm, device);
      gpu_shared = !shared.empty();
      if (!gpu_shared)
        nccl_early = NcclComm::start(comm, device);
      else if (root)
        std::fprintf(stderr,
                     "[sparsa] warning: %s: NCCL needs a GPU of its own for each rank, so a "
                     "record split over ranks exchanges its rows through the host over MPI "
                     "(slower, the same results); start as many ranks a node as it has GPUs\n",
                     shared.c_str());
    }
  }
#endif
  const ModelWeights w = load_checkpoint(o.model);
  const ModelConfig& c = w.config;
  if (root && !w.unused.empty()) {
    std::string list;
    for (size_t i = 0; i < w.unused.size() && i < 5; ++i) list += (i ? ", " : "") + w.unused[i];
    if (w.unused.size() > 5) list += ", ... (" + std::to_string(w.unused.size()) + " in all)";
    std::fprintf(stderr,
                 "[sparsa] warning: %s holds objects the model does not use, ignored: %s (biases "
                 "or a head exported with the weights? sparsa's layers have none: "
                 "docs/formats.md lists the datasets it reads)\n",
                 o.model.c_str(), list.c_str());
  }
  const double checkpoint_s = since_start();
  // --region/--regions under several ranks: a missing faidx index is built by rank 0 alone
  // before the others load it (ranks that built it at once read each other's half-written .fai);
  // the others then only load it. The wait allows for reading the inputs (the build's pass).
  const bool regions = c.kind == ModelKind::kDna && (!o.regions.empty() || !o.regions_bed.empty());
  if (comm.size() > 1 && regions) {
    const int64_t bytes = root_input_bytes(o.inputs, comm);
    Watched waiting(comm, "a wait for rank 0, which builds the inputs' faidx indexes", 4 * bytes);
    on_root(comm, [&] {
      for (const std::string& in : o.inputs)
        if (std::error_code ec; fs::is_regular_file(in, ec))
          FaidxFetcher index(in, DnaReadOptions{o.invalid_as_n});
    });
  }
  RecordSource source(o, c, comm.size() == 1 || root);
  source.set_warnings(root);
  source.share_from_root(comm);  // time series: rank 0 alone reads the CSVs
  Progress progress = Progress::for_stderr(o.quiet || !root);
  int64_t expected_records = 0;
  bool expected_exact = false;
  {
    // Made by rank 0 (which reads a time series' CSVs for it) and told to the others.
    OutputEstimate est;
    {
      Watched waiting(comm,
                      "a wait for rank 0, which reads the time-series CSVs for the output estimate",
                      source.shared_input_bytes());
      on_root(comm, [&] { est = estimate_output(o, c, source); });
    }
    // Every rank is past check_paths, which looked at it (the broadcasts before do not say so:
    // rank 0 may return from one before the others receive it); an error here is every rank's.
    comm.barrier();
    if (o.force)
      on_root(comm, [&] {
        std::error_code ec;
        if (!fs::exists(fs::symlink_status(o.output, ec))) return;
        // (Another live run's folder is not touched: its lock stops this run later anyway, and
        // its finish would take the old output with its folder.)
        if (const std::string why = Journal::in_use_by_another_run(o.output + ".parts");
            !why.empty())
          throw ConfigError(why);
        if (fs::exists(fs::symlink_status(previous, ec)))
          throw ConfigError(o.output + " exists and so does " + previous +
                            ", an earlier --force run's previous output; remove one of them (or "
                            "mv " +
                            previous + " somewhere to keep it)");
        fs::create_directories(o.output + ".parts", ec);
        fs::rename(o.output, previous, ec);
        if (ec)
          throw SystemError(o.output + ": --force cannot set the old output aside as " + previous +
                            " (" + ec.message() +
                            "); remove it yourself or choose another --output");
        aside.from = o.output;
        aside.to = previous;
        aside.kept = true;
        // (Also with --quiet: a killed run says nothing more, so this is where the file is told.)
        std::fprintf(stderr, "[sparsa] --force: the old %s is kept as %s until this run finishes\n",
                     o.output.c_str(), previous.c_str());
      });
    int64_t e[4] = {est.bytes, est.final_bytes, est.records, est.exact_records};
    if (comm.size() > 1) comm.broadcast(e, sizeof e, 0);
    est = {e[0], e[1], e[2], e[3] != 0};
    expected_records = est.records;
    expected_exact = est.exact_records;
    // A resumed run's journal is on disk already: only the rest of it and the final file (about
    // half the estimate: the parts and the final file hold the same rows) are still to come.
    int64_t need = est.bytes;
    if (o.resume) {  // (listed by rank 0: an NFS listing may lag on another node)
      int64_t journal_bytes = 0;
      if (root) {
        std::error_code ec;
        for (fs::recursive_directory_iterator it(o.output + ".parts", ec), end; !ec && it != end;
             it.increment(ec))
          if (std::error_code e2;
              it->is_regular_file(e2) && it->path().filename() != Journal::kPreviousOutput) {
            const auto bytes = it->file_size(e2);
            if (!e2) journal_bytes += (int64_t)bytes;
          }
      }
      if (comm.size() > 1) comm.broadcast(&journal_bytes, sizeof journal_bytes, 0);
      need = std::max(need - journal_bytes, need / 2);
    }
    // Judged by rank 0 alone, which set the previous output aside (a rank that judged the room
    // without it would stop a run that rank 0 made room for); its error is every rank's.
    on_root(comm, [&] {
      std::error_code ec;
      auto space = fs::space(fs::absolute(o.output).parent_path(), ec);
      // A run refused here has done no work: the previous output goes back to its path (and the
      // journal folder made for it, where it is empty now, goes), as a refused command line
      // leaves it.
      auto refuse = [&](const std::string& why) {
        if (aside.kept) {
          std::error_code e2;
          fs::rename(previous, o.output, e2);
          if (e2)  // (rare: the advice to rm OUT would name a path where it is not)
            throw SystemError(why + ". The previous " + o.output + " could not be put back (" +
                              e2.message() + "): it is " + previous + "; mv it back");
          aside.kept = false;
          fs::remove(o.output + ".parts", e2);  // (only where empty)
        }
        throw SystemError(why);
      };
      const bool check = !env_on("SPARSA_SKIP_SPACE_CHECK");
      // /proc, /sys and the like: no blocks at all, so no file can be written there
      if (!ec && check && space.capacity == 0)
        refuse(o.output + ": its folder " + fs::absolute(o.output).parent_path().string() +
               " is on a file system that stores no files (no blocks, like /proc or /sys); "
               "write the output elsewhere");
      // Too little room to keep the previous output aside as well: refused, not removed (a bad
      // record or a full disk later on would leave the user with neither file); the user removes
      // it where it may go.
      std::error_code ec_prev;
      if (!ec && check && aside.kept && (int64_t)space.available < need) {
        const auto old_bytes = fs::file_size(previous, ec_prev);
        if (!ec_prev && (int64_t)(space.available + old_bytes) >= need)
          refuse("not enough free space for " + o.output +
                 " beside the previous one: the run needs about " + human_bytes((double)need) +
                 " (journal and final file), " + human_bytes((double)space.available) +
                 " are free, " + human_bytes((double)(space.available + old_bytes)) +
                 " with the previous " + o.output +
                 " gone. --force keeps the old file until the new one is complete, so that a "
                 "bad record or a full disk does not leave you with neither; where it may go, "
                 "remove it first (rm " +
                 o.output + "), then run again");
      }
      if (!ec && check && (int64_t)space.available < need)
        refuse("not enough free space for " + o.output + ": the run needs about " +
               human_bytes((double)need) + " (journal and final file), " +
               human_bytes((double)space.available) +
               " are free. (An estimate from the inputs' sizes and a sample of their "
               "records; SPARSA_SKIP_SPACE_CHECK=1 runs anyway, and a disk that fills "
               "up stops the run with its finished records kept for --resume)");
      // The final file, the largest written, under a file-size limit: found here, not after
      // every record is embedded.
      if (const int64_t limit = file_size_limit(); limit >= 0 && est.final_bytes > limit && check)
        refuse(o.output + ": the output will be about " + human_bytes((double)est.final_bytes) +
               ", but " + file_size_limit_text(limit) +
               " (raise it, e.g. `ulimit -f unlimited`; an estimate from the inputs' "
               "sizes and a sample of their records: SPARSA_SKIP_SPACE_CHECK=1 runs "
               "anyway)");
      if (!ec)
        progress.log("output about " + human_bytes((double)need) + " (journal + final), " +
                     human_bytes((double)space.available) + " free");
    });
  }
  std::shared_ptr<void> backend_state;
  const double input_s = since_start();
  if (device_ready.valid()) device_ready.wait();
  RcPairFn rc_pair;
  std::function<void(NcclFuture&&, Comm&)> adopt_nccl;
  std::function<std::pair<ForwardFn, RcPairFn>()> make_worker;
  PackedFn packed;
  ForwardFn fn = choose_backend(chosen, w, progress, root, backend_state, rc_pair, adopt_nccl,
                                make_worker, packed, gpu_shared);
  if (nccl_early.valid() && adopt_nccl) adopt_nccl(std::move(nccl_early), comm);
  const double backend_s = since_start();
  const std::string model_sha = sha.get();
  const std::string manifest = manifest_for(chosen, model_sha);  // the journal's and the file's
  const std::vector<std::string> compute = ranks_compute(comm, compute_of(chosen));
  Journal journal(o.output, manifest, o.resume, o.force, comm, compute);
  if (!journal.compute_note().empty())
    std::fprintf(stderr,
                 "[sparsa] warning: --resume: the journal's records were computed with %s: the "
                 "file will hold records of both, which may differ in the last bits "
                 "(docs/model.md; keep a job on one node type)\n",
                 journal.compute_note().c_str());
  if (!journal.discarded().empty())
    progress.log("--force: discarded the journal of a different run in " + journal.dir() + " (" +
                 journal.discarded() + ")");
  progress.expect_records(expected_records - journal.n_done(), expected_exact);
  if (journal.n_done() > 0)
    progress.log("resuming: " + count_of(journal.n_done(), "record") + " already in " +
                 journal.dir());
  const int64_t align = o.pool.kind == PoolSpec::kBin    ? o.pool.bin
                        : o.pool.kind == PoolSpec::kMean ? kMeanBlock
                                                         : 1;
  // Parallel HDF5 where the build has it; SPARSA_HDF5_SERIAL=1 forces the serial fallback (rank 0
  // gathers and writes), which is what builds with serial HDF5 always do. Tests run both.
  const char* serial = std::getenv("SPARSA_HDF5_SERIAL");  // set and not "0"
  const bool parallel_h5 = h5::File::parallel_available() && comm.size() > 1 &&
                           !(serial && *serial && std::string(serial) != "0");
  if (comm.size() > 1)
    progress.log(parallel_h5 ? "output: parallel HDF5, every rank writes its rows"
                             : "output: serial HDF5, rank 0 gathers and writes");
  EmbedRun run{o,       comm, w, journal, progress, align, parallel_h5, fn,
               rc_pair, {},   8, {},      false,    {},    false};
  run.cpu_backend = resolved_backend(chosen) == "cpu fp32";
  run.host_memory_limit = host_memory_limit;
  const double setup_s = since_start();
  std::unique_ptr<Comm> self = make_single_comm();

  // Short records a rank holds go side by side (EmbedRun::SidePipe), on the CPU backend
  // with several threads a record a thread, in batches of up to 8 a thread; on a GPU over 8
  // models of it, in batches of 128; either way up to 256K tokens a batch. One rank gathers them
  // here; several ranks, from each batch spread over them (flush_batch).
  // SPARSA_SIDE_BY_SIDE=0: one after another (A/B runs; the same bits); =N: N models on a GPU.
  const int threads = omp_get_max_threads();
  if (side_env >= 0) run.gpu_workers = side_env;
  const bool off = side_env == 0;
  if (!off) run.make_worker = make_worker;
  // A GPU packs a batch's records into one pass (SPARSA_PACKED=0: models side by side instead).
  run.packed.release = packed.release;
  if (!off && side_env < 0) run.packed = packed;
  const bool side_by_side =
      !off && (run.packed.run || (run.make_worker ? run.gpu_workers > 1 : threads > 1));
  const int64_t side_records = run.packed.run    ? 4096
                               : run.make_worker ? 16 * run.gpu_workers
                                                 : 8 * threads;
  constexpr int64_t kSideBySideTokens = 16384, kSideTokens = int64_t{1} << 18;
  // Short records are gathered into a batch and spread whole over the ranks; a long record is
  // split over all ranks. Every rank reads the same records in the same order.
  std::vector<Item> batch;
  int64_t batch_tokens = 0;
  const int64_t batch_budget = std::max<int64_t>(o.split_min, 1) * comm.size();
  auto flush_batch = [&]() {
    if (batch.empty()) return;
    std::vector<int64_t> lengths;
    for (auto& it : batch) lengths.push_back(it.rec.n_tokens());
    // Every rank must hold the same batch: the records' owners come from their lengths, and a
    // rank that read other records (another copy of an input) would embed or skip the wrong
    // ones. Their indices, names and lengths against rank 0's.
    if (comm.size() > 1) {
      Sha256 h;
      h.update_field("sparsa-batch 1");
      for (const Item& it : batch) {
        const int64_t nums[2] = {it.index, it.rec.n_tokens()};
        h.update(nums, sizeof nums);
        h.update_field(it.rec.name);
      }
      if (const int64_t r = rank_that_differs(comm, h.hex()); r >= 0)
        throw InputError("records " + std::to_string(batch.front().index) + " to " +
                         std::to_string(batch.back().index) + " (from '" + batch.front().rec.name +
                         "' of " + batch.front().rec.source + "): rank " + std::to_string(r) +
                         " read other records from the inputs than rank 0 (names or lengths "
                         "differ). " +
                         kSameInputs);
    }
    const std::vector<int> owner = assign_by_length(lengths, comm.size());
    // Rank 0's share of the batch done stands for the batch's in its progress line, until the
    // batch's end says how many every rank finished.
    if (root) {
      int64_t all_tokens = 0, own_records = 0, own_tokens = 0;
      for (size_t i = 0; i < batch.size(); ++i) {
        all_tokens += lengths[i];
        if (owner[i] == comm.rank()) ++own_records, own_tokens += lengths[i];
      }
      progress.batch_share((int64_t)batch.size(), all_tokens, own_records, own_tokens);
    }
    std::exception_ptr error;
    int64_t failed = 0;
    // This rank's short records side by side, in chunks as flush_side makes them, through a
    // SidePipe (a chunk's forwards while the chunk before is written); then its others one at a
    // time.
    // (Its records and tokens are counted for the whole batch below.)
    EmbedRun::SidePipe share(run, *self, root);
    try {
      std::vector<const Item*> chunk, others;
      int64_t chunk_tokens = 0;
      auto run_chunk = [&]() {
        if (chunk.empty()) return;
        if (stop_requested()) throw Interrupted(kResumeAdvice);
        share.push(std::move(chunk), {});
        chunk_tokens = 0;
      };
      for (size_t i = 0; i < batch.size(); ++i) {
        if (owner[i] != comm.rank()) continue;
        const int64_t n = batch[i].rec.n_tokens();
        if (!side_by_side || n > kSideBySideTokens) {
          others.push_back(&batch[i]);
          continue;
        }
        chunk.push_back(&batch[i]);
        chunk_tokens += n;
        if ((int64_t)chunk.size() >= side_records || chunk_tokens >= kSideTokens) run_chunk();
      }
      run_chunk();
      share.drain();
      for (const Item* it : others) {
        if (stop_requested()) throw Interrupted(kResumeAdvice);
        run.embed_record_or_retry(*it, *self, root);
      }
    } catch (const Interrupted&) {
      // The chunk made before the stop is written too (a chunk with a failed record never waits
      // in the pipe: push writes it at once, and after any failure in push none waits).
      failed = 2;
      try {
        share.drain();
      } catch (const Interrupted&) {
      } catch (...) {
        error = std::current_exception();
        failed = 1;
      }
    } catch (...) {
      error = std::current_exception();
      failed = 1;
      // An error from elsewhere (a record of `others`, memory): a chunk waiting is kept too.
      try {
        share.drain();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[sparsa] %s\n", e.what());
      }
    }
    // A batch that ends well leaves this rank's group part open: it goes into the journal by
    // its time and size (Journal::write_grouped), so a rank makes a part every few seconds, not
    // one a batch (10^8 reads over 64 ranks: ~1.5 M parts at a batch's end each). Its time is
    // checked here too, before this rank waits for the others' shares. A rank that failed or
    // stopped moves its group at once, before it tells the others (which finish their share
    // first); then on a failure or a stop anywhere every rank's group goes into the journal
    // before any rank goes on: rank 0 then decides whether to keep the journal, and a rank may
    // abort the job.
    int64_t bad = 0;
    auto move_group = [&](bool if_due) {
      try {
        if (if_due)
          journal.flush_group_if_due();
        else
          journal.flush_group();
      } catch (...) {
        if (!error) error = std::current_exception();
        bad = 1;
      }
    };
    move_group(failed == 0 && !stop_requested());
    if (bad > 0) failed = 1;
    int64_t fs[2] = {failed, stop_signal()};
    comm.allreduce_max(fs, 2);
    int64_t f = fs[0];
    if (f > 0 || fs[1] > 0) {
      move_group(false);
      comm.allreduce_max(&bad, 1);
      if (bad > 0) f = 1;
    }
    if (fs[1] > 0) adopt_stop_signal((int)fs[1]);
    if (error) std::rethrow_exception(error);
    if (f == 1) throw Error("another rank failed (see its message above)");
    // (The reduced signal, not this rank's own flag: one that lands after the reduction is
    // taken at the next safe point by every rank together.)
    if (f == 2 || fs[1] > 0) throw Interrupted(kResumeAdvice);
    for (auto& it : batch) sum.tokens += it.rec.n_tokens();
    sum.records += (int64_t)batch.size();
    if (root) progress.batch_done(sum.records, sum.tokens);  // every rank's, not rank 0's own
    batch.clear();
    batch_tokens = 0;
  };
  // On a stop or an error: the records this rank finished go into the journal too (unless
  // writing them is what failed, which is then said besides the error that ends the run).
  auto keep_group = [&]() {
    try {
      journal.flush_group();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[sparsa] %s\n", e.what());
    }
  };
  // One rank's short records: gathered in `side`, then through a SidePipe (a batch's forwards
  // while the batch before is written). The pipe's comm is not the world's: several threads use it.
  std::vector<Item> side;
  int64_t side_tokens = 0;
  EmbedRun::SidePipe pipe(run, *self, root);
  // drain: also write the batch just made (before a record of another kind, at the end).
  // (Several ranks never gather here: `side` stays empty and this returns at once, so no
  // collective runs on the way.)
  auto flush_side = [&](bool drain) {
    if (side.empty() && !(drain && pipe.pending())) return;
    auto count = [&](std::pair<int64_t, int64_t> written) {
      sum.records += written.first;
      sum.tokens += written.second;
    };
    if (!side.empty()) {
      count(pipe.push({}, std::move(side)));
      side_tokens = 0;
    }
    if (drain) count(pipe.drain());
    run.check_stop(comm);
  };
  // On a stop or an error elsewhere (a bad record further on in the input): the records waiting
  // for their batch are embedded and kept, as they would have been one after another.
  // (Not after an error in writing a batch, its own records' included: pipe.failed().)
  auto finish_side = [&]() {
    if (pipe.failed()) return;
    try {
      flush_side(true);
    } catch (const Interrupted&) {  // their rows are written; the stop is handled already
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[sparsa] %s\n", e.what());
    }
  };
  // On a stop or an error (rank 0): "N finished records are kept in DIR" and what to do.
  auto say_kept = [&](const char* then) {
    const int64_t kept = journal.count_records();
    std::fprintf(stderr, "[sparsa] %s %s kept in %s%s\n", count_of(kept, "finished record").c_str(),
                 kept == 1 ? "is" : "are", journal.dir().c_str(), then);
  };
  int64_t index = 0, redone = 0;
  try {
    run.check_stop(comm);  // a stop asked for during the set-up: no record is begun
    Record rec;
    while (source.next(rec)) {
      ++index;
      const int64_t n = rec.n_tokens();
      if (n == 0) throw InputError(rec.source + ": record '" + rec.name + "' is empty");
      std::string fp;  // the record's fingerprint, where resume needed it
      if (journal.done(index)) {
        fp = record_fingerprint(rec);
        if (journal.same_record(index, fp)) {
          ++sum.resumed;
          continue;
        }
        // The first few by name; a record inserted or removed before many others changes each
        // of theirs (records are matched by their place in the input), so the rest are counted.
        if (++redone <= 3)
          progress.log("record " + std::to_string(index) + " '" + rec.name + "' of " + rec.source +
                       (journal.unreadable(index)
                            ? ": its part in " + journal.dir() +
                                  " cannot be read (damaged by a crash?) or holds no "
                                  "fingerprint: embedding it again"
                            : " is not the one in " + journal.dir() +
                                  (rec.region.empty() ? " (the input changed)"
                                                      : " (the input or the region list changed)") +
                                  ": embedding it again") +
                       (redone == 3 ? " (any more are counted, not named; records are matched by "
                                      "their place in the input)"
                                    : ""));
        journal.redo(index);
      }
      if (side_by_side && comm.size() == 1 && n <= kSideBySideTokens) {
        side.push_back(Item{index, std::move(rec), std::move(fp)});
        side_tokens += n;
        if ((int64_t)side.size() >= side_records || side_tokens >= kSideTokens) flush_side(false);
        continue;
      }
      flush_side(true);
      if (comm.size() == 1 || n >= o.split_min) {
        if (comm.size() > 1) run.drop_workers();  // a split record: its GPU memory, on every rank
        run.embed_record_or_retry(Item{index, std::move(rec), std::move(fp)}, comm, root);
        run.check_stop(comm);
        ++sum.records;
        sum.tokens += n;
        continue;
      }
      batch.push_back(Item{index, std::move(rec), std::move(fp)});
      batch_tokens += n;
      if (batch_tokens >= batch_budget || batch.size() >= 4096) flush_batch();
    }
    flush_batch();
    // Every rank's inputs end at the same record (a rank whose copy is longer or shorter would
    // otherwise wait in another collective).
    if (comm.size() > 1) {
      Sha256 h;
      h.update_field("sparsa-end 1");
      h.update(&index, sizeof index);
      if (const int64_t r = rank_that_differs(comm, h.hex()); r >= 0)
        throw InputError("the inputs end after record " + std::to_string(index) + " on rank 0, " +
                         "but rank " + std::to_string(r) +
                         " read other records from them (more, fewer, or other names or "
                         "lengths). " +
                         kSameInputs);
    }
    flush_side(true);
    journal.flush_group();
    if (index == 0) throw InputError("the inputs hold no records");
  } catch (const Interrupted&) {
    // SPARSA_TEST_STOP_DELAY_MS (tests): the stop's own work made that long, so that a second
    // signal surely comes while it runs (a record's work now stops within milliseconds).
    if (const char* e = std::getenv("SPARSA_TEST_STOP_DELAY_MS"); e && *e)
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(e)));
    finish_side();
    keep_group();  // the journal is the point of stopping: keep it, finished records too
    if (root) {    // say what is kept (a record is kept whole or not at all)
      if (journal.count_parts() == 0) {
        if (comm.size() == 1) {
          journal.remove_but_previous_output();
          std::fprintf(stderr,
                       "[sparsa] no record had finished here, so none is kept (a record is kept "
                       "once it is whole)\n");
          throw Interrupted("nothing was kept; run the same command again to start over");
        }
        // Nothing to resume: a rerun need not pass --resume (an old output set aside by --force
        // stays; above). Several ranks: the folder's listing can lag on NFS and miss another
        // rank's part, so only a single process removes the journal.
        std::fprintf(stderr,
                     "[sparsa] no record had finished here, so none is kept (a record is kept "
                     "once it is whole); the journal stays (several ranks): rerun with --resume\n");
      } else {
        say_kept("");
      }
    }
    throw;
  } catch (...) {
    finish_side();
    keep_group();
    if (root && !aside.kept && journal.holds_previous_output())  // set aside by an earlier run
      std::fprintf(stderr, "[sparsa] the old %s an earlier --force run set aside is still in %s\n",
                   o.output.c_str(), previous.c_str());
    // A journal with no finished record holds nothing worth keeping; one with finished records
    // is kept so that a rerun with --resume (after fixing the input) does not redo them.
    // Several ranks: the others move their groups into the journal after the same error (an
    // input's, which every rank reads) as rank 0 does; rank 0 waits for that before it counts the
    // records kept and aborts the job, at most 1 s (the others abort 1.5 s after their error,
    // src/cli/main.cpp: rank 0 says it first; a rank that failed alone, or not at all, is then
    // aborted with its group unwritten, as a kill would be).
    if (root && comm.size() > 1) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      while (std::chrono::steady_clock::now() < until && journal.parts_open())
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (root) {
      if (journal.count_parts() > 0)
        say_kept("; fix the problem and rerun with --resume, or use --force to start over");
      else if (comm.size() > 1 && journal.parts_open())
        std::fprintf(stderr,
                     "[sparsa] other ranks' finished records may still be going into %s; fix the "
                     "problem and rerun with --resume, or use --force to start over\n",
                     journal.dir().c_str());
      else
        journal.remove_but_previous_output();
    }
    throw;
  }
  // Every part is on disk before rank 0 assembles, and rank 0 knows where the other ranks put
  // their records (from them: a listing of the folder can lag on NFS).
  journal.forget_found();
  journal.gather_sources(comm);
  comm.barrier();
  if (root) {
    if (redone >= 3)  // (the first three were named)
      progress.log(std::to_string(redone) +
                   " records of the journal did not match the input and were embedded again");
    // A shortened input (a copy cut short, a file left out) would leave the journal's later
    // records out of the file without a word. (Also with --quiet: records are dropped.)
    if (const int64_t past = journal.n_done_after(index); past > 0)
      std::fprintf(stderr,
                   "[sparsa] warning: the journal holds %s past the input's last (record %lld): "
                   "the input now has %s, fewer than the run that made the journal; the file "
                   "holds these %lld, and the others go with the journal once it is written (an "
                   "input cut short, or one left out?)\n",
                   count_of(past, "finished record").c_str(), (long long)index,
                   count_of(index, "record").c_str(), (long long)index);
    progress.log("writing " + o.output + " (" + count_of(index, "record") + ")");
    FileAttrs a{sparsa_version(),
                model_sha,
                w.config_toml,
                o.command_line,
                utc_now(),
                o.pool.text(),
                o.f16 ? "float16" : "float32",
                manifest,
                [] {
                  std::error_code e;
                  return fs::current_path(e).string();
                }(),
                [&] {
                  std::string all;  // each kind that computed the records (the journal's runs' too)
                  for (const std::string& x : journal.computes())
                    all += (all.empty() ? "" : "; ") + x;
                  return all;
                }()};
    int64_t copied = 0;
    const std::string what = "writing " + o.output + ", records";
    try {
      journal.assemble(a, index, o.output, [&](int64_t bytes) {
        comm.heartbeat(bytes);
        progress.steps(what, std::min(copied++, index), index);  // (a last tick before closing)
      });
    } catch (const SystemError& e) {  // (an unwritable folder, say: the records are not lost)
      const std::string said = e.what();
      if (said.find("--resume") != std::string::npos || said.find("--force") != std::string::npos)
        throw;  // (it says what to do: a damaged journal is started over with --force)
      throw SystemError(said + "; the journal (" + journal.dir() +
                        ") keeps every record: once that is fixed, run the same command with "
                        "--resume to write the file");
    }
    aside.kept = false;  // the new output is in place; the old one went with the journal
  }
  // Copying many records into the output can outlast the watchdog's 30 minutes, so the others
  // wait from one heartbeat of rank 0 to the next: if it hangs meanwhile (or dies where the
  // launcher does not end the others), the watchdog ends them. Rank 0 aborts every rank itself if
  // assembling fails.
  comm.wait_for_root();
  sum.seconds = progress.seconds();
  if (env_on("SPARSA_PROFILE") || env_on("SPARSA_TIMES"))  // TIMES: this line alone (cli.md)
    std::fprintf(stderr,
                 "# rank %d: set-up %.2f s (checkpoint %.2f, input %.2f, device %.2f, checksum "
                 "and journal %.2f), forward %.2f s, pooling and writing %.2f s, total %.2f s\n",
                 comm.rank(), setup_s, checkpoint_s, input_s - checkpoint_s, backend_s - input_s,
                 setup_s - backend_s, run.forward_s, run.write_s, since_start());
  if (env_on("SPARSA_COMM_STATS")) {
    // Measurement for docs/parallel.md: what this rank sent, against the model's count.
    std::fprintf(stderr,
                 "[sparsa] rank %d: sent %lld bytes point-to-point (halos), %lld bytes in "
                 "collectives\n",
                 comm.rank(), (long long)comm.bytes_sent_p2p,
                 (long long)comm.bytes_sent_collective);
  }
  return sum;
}

}  // namespace sparsa
