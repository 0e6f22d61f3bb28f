// sparsa command line: a thin layer that parses options, calls the library and maps errors to
// exit codes. See docs/cli.md.
#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "cli/bench.hpp"
#include "cli/inspect.hpp"
#include "cli/version.hpp"
#include "core/build.hpp"
#include "core/config.hpp"
#include "core/edit_distance.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/paths.hpp"
#include "core/progress.hpp"
#include "core/signals.hpp"
#include "core/utf8.hpp"
#include "dist/comm.hpp"
#include "dist/cpu_share.hpp"
#ifdef SPARSA_HAVE_CUDA
#include "dist/comm_nccl.hpp"
#endif
#include "io/dna.hpp"
#include "io/h5.hpp"
#include "model/weights.hpp"
#include "pipelines/embed/embed.hpp"

using namespace sparsa;

namespace {

const char* kDescription =
    "sparsa: embeddings of very long sequences (DNA, time series) with DeepSeek-style sparse\n"
    "attention: a local window around every token plus a few routed global tokens.\n"
    "\n"
    "Typical use:\n"
    "  sparsa init --config configs/dna-tiny.toml --output model.h5 --seed 1\n"
    "  sparsa embed --model model.h5 --input genome.fa.gz --output emb.h5 --pool bin:128\n"
    "  sparsa inspect emb.h5\n"
    "  mpirun -np 4 sparsa embed ...     (one record split over 4 ranks)\n"
    "  sparsa embed ... --device cuda    (a GPU per rank; bf16, --precision for fp32)\n"
    "\n"
    "Weights from `init` are random until training lands: embeddings are deterministic\n"
    "functions of the input, not yet biologically or financially meaningful.\n"
    "Environment variables (SPARSA_PROFILE, SPARSA_NCCL, ...): docs/cli.md.\n"
    "Exit status: 0 done; 1 bad input, I/O or numerics (the file, record and position named);\n"
    "2 a usage or config error; 75 stopped by a signal (embed: finish with --resume); 130 a\n"
    "second Ctrl-C (stopped at once).";

const char* kEmbedFooter =
    "Examples:\n"
    "  sparsa embed -m model.h5 -i genome.fa.gz -o emb.h5 --pool bin:128\n"
    "  sparsa embed -m model.h5 -i hg38.fa.bgz -r chr1:1-5000000 -o chr1.h5  (faidx region)\n"
    "  sparsa embed -m ts.h5 -i prices.csv --columns close -o prices.h5 --pool mean\n"
    "  sparsa embed -m ts.h5 -i panel.csv --id-column ticker --time-column date --columns close\n"
    "               -o panel.h5 --pool bin:20  (long format: one record per ticker)\n"
    "  mpirun -np 4 sparsa embed -m model.h5 -i chr1.fa.gz -o chr1.h5 --device cuda\n"
    "\n"
    "Time series: a causal model (configs/ts-base.toml) is not point-in-time: each channel's\n"
    "scale and the router's global set are taken over the whole record, so later rows change\n"
    "earlier rows' embeddings. To backtest without look-ahead, embed each history prefix as its\n"
    "own record (docs/model.md). The file keeps each channel's scale (ts_scale) and, for bins,\n"
    "the time at each bin's first and last row (timestamps, timestamps_end).\n"
    "\n"
    "Memory: a GPU rank holds about 4 x d_model + 48 bytes a token of its part of a record\n"
    "(dna-base: about 2 GB per million tokens) besides buffers of fixed size (dna-base: ~6 GB);\n"
    "a CPU rank about 16 x d_model bytes a token (dna-base: about 8 GB per million). A record\n"
    "longer than one GPU holds is split over the ranks (--split-min). With --pool none the rows\n"
    "of a record that one GPU holds go into the output piece by piece; a split record's rank, a\n"
    "CPU rank and --rc-average without GPU room for both strands hold their rows in host memory\n"
    "(2 x d_model bytes a token with --dtype f16, 4 x d_model with f32). A record that does not\n"
    "fit stops the run with a message that says how many GPUs it needs.\n"
    "Files written besides OUT.h5: OUT.h5.parts/ (the journal --resume continues; removed when\n"
    "the run finishes) and, for --region(s), the faidx index FILE.fai (and FILE.gzi for bgzip) "
    "beside\n"
    "an input that has none (in ~/.cache/sparsa/faidx where its folder is not writable, or in\n"
    "SPARSA_INDEX_DIR).\n"
    "Exit status: 0 done; 1 an error (input, I/O, numerics, memory); 2 bad usage or config;\n"
    "75 stopped by a signal at a safe point (--resume continues); 130 a second Ctrl-C.\n"
    "Global options may follow the command: sparsa embed ... --threads 8.\n"
    "Output layout and provenance: docs/formats.md; every option and variable: docs/cli.md.";

std::string join_argv(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) {
    if (i) s += ' ';
    s += shell_quote(argv[i]);  // the command can be pasted back into a shell
  }
  return s;
}

// The whole of `s` as an integer in [lo, hi] into *out; false for anything else.
bool whole_int(std::string_view s, long long lo, long long hi, long long* out) {
  const auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return err == std::errc() && end == s.data() + s.size() && *out >= lo && *out <= hi;
}

// "a,b,c" -> {a, b, c}; an empty item ("a,,b", "a,") is refused: it is a typo, not a choice.
std::vector<std::string> split_commas(const std::string& s, const char* option) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t e = s.find(',', start);
    if (e == std::string::npos) e = s.size();
    if (e == start)
      throw ConfigError(std::string(option) + " '" + s + "': an empty item; give a,b,c");
    out.push_back(s.substr(start, e - start));
    start = e + 1;
  }
  return out;
}

// Usage lines name the program: "Usage: sparsa embed [OPTIONS]", not "Usage: embed ...".
class SparsaFormatter : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App* app, std::string name) const override {
    if (app->get_parent() != nullptr && name.rfind("sparsa ", 0) != 0) name = "sparsa " + name;
    return CLI::Formatter::make_usage(app, name);
  }
};

// "did you mean --pool?" for a word like an option of `app` (an edit or two away, or a prefix
// of one option alone), else "".
std::string option_suggestion(const CLI::App& app, const std::string& word) {
  if (word.rfind("--", 0) != 0 || word.size() < 4) return "";
  const std::string w =
      word.substr(2, word.find('=') == std::string::npos ? std::string::npos : word.find('=') - 2);
  std::string best, prefixed;
  size_t best_d = 3, prefixes = 0;
  for (const CLI::Option* o : app.get_options())
    for (const std::string& name : o->get_lnames()) {
      const size_t dist = edit_distance(w, name);
      if (dist < best_d) best_d = dist, best = name;
      if (name.rfind(w, 0) == 0) ++prefixes, prefixed = name;
    }
  if (best.empty() && prefixes == 1) best = prefixed;
  return best.empty() ? "" : "did you mean --" + best + "?";
}

// Words no option took (CLI11's extras), up to 8 of them, and what they likely are: the option
// of `sub` (the command given, or null) or of `app` a misspelled one is like, else a guess.
struct Unexpected {
  std::string words, why;
};
Unexpected unexpected_words(const CLI::App& app, const CLI::App* sub,
                            const std::vector<std::string>& extra) {
  Unexpected u;
  for (size_t i = 0; i < extra.size() && i < 8; ++i) u.words += (i ? " " : "") + extra[i];
  for (size_t i = 0; i < extra.size() && u.why.empty(); ++i) {
    if (sub) u.why = option_suggestion(*sub, extra[i]);
    if (u.why.empty() && sub != &app) u.why = option_suggestion(app, extra[i]);
  }
  if (u.why.empty())
    u.why = !extra.empty() && extra.front().rfind("-", 0) == 0 ? "a misspelled option?"
                                                               : "a value without its option?";
  return u;
}

// Under mpirun or srun every rank parses the same line: the first rank alone says what is wrong
// in it (before MPI is started, the launcher's variables say which rank this is).
// (SLURM_PROCID alone is not MPI: a task farm's tasks each say their own errors.)
bool first_rank_to_speak() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (const char* r = std::getenv(v); r && std::string(r) != "0") return false;
  return true;
}

}  // namespace

// Where the model presets are: beside an installed binary (PREFIX/bin/sparsa:
// PREFIX/share/sparsa/configs, as CMake's install folders place them) or in the checkout a build
// folder sits in (BUILD/sparsa: BUILD/../configs); "" where neither holds them.
static std::string presets_dir() {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (const fs::path& d :
       {exe.parent_path() / SPARSA_PRESETS_FROM_BIN, exe.parent_path().parent_path() / "configs"})
    if (fs::exists(d / "dna-tiny.toml", ec)) return d.lexically_normal().string();
  return "";
}

// OpenBLAS (Debian's default build, libopenblas0-pthread) starts a pool of worker threads when
// it loads, before main, each mapping a 128 MB buffer. sparsa calls BLAS single-threaded from
// its own OpenMP threads, so the pool only costs address space; under a limit on it (`ulimit
// -v`, a Slurm VSizeFactor) a worker's buffer fails to map and OpenBLAS retries forever: the
// process hangs, deaf to SIGTERM, even for --version. Where such a limit is set, the process
// runs itself again with one BLAS thread (OPENBLAS_NUM_THREADS, which OpenBLAS reads as it
// loads); without a limit nothing changes.
static void one_blas_thread_under_a_limit(char** argv) {
  if (address_space_room() < 0) return;  // no limit
  const char* now = std::getenv("OPENBLAS_NUM_THREADS");
  if (now && std::string(now) == "1") return;
  if (setenv("OPENBLAS_NUM_THREADS", "1", 1) != 0) return;
  // The words as the kernel started the process (/proc/self/cmdline): started through the
  // dynamic loader (`ld.so sparsa ...`), /proc/self/exe is the loader and main's argv lacks it.
  std::vector<std::string> words;
  {
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    for (std::string w; std::getline(in, w, '\0');) words.push_back(w);
  }
  std::vector<char*> args;
  for (std::string& w : words) args.push_back(w.data());
  args.push_back(nullptr);
  execv("/proc/self/exe", words.empty() ? argv : args.data());
  // (returns only where it failed: go on as we are)
}

int main(int argc, char** argv) {
  // Standard input, output and error closed by the caller (`2>&-`, a daemon): /dev/null there, so
  // that the first file sparsa opens (the journal's LOCK) is not taken for them and written to.
  for (int fd = 0; fd <= 2; ++fd)
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      const int got = open("/dev/null", O_RDWR);
      if (got >= 0 && got != fd) close(got);  // (fd is the lowest free one: got == fd)
    }
  one_blas_thread_under_a_limit(argv);
  hold_early_stops();  // a job's USR1 or TERM before embed's handlers: held, not fatal
#ifdef SPARSA_HAVE_CUDA
  nccl_env_defaults();  // first: setenv before MPI, OpenMP or any thread of ours starts
#endif
  ignore_file_size_signal();  // past `ulimit -f`: an error that names the limit, not a silent kill
  CLI::App app{kDescription, "sparsa"};
  app.set_version_flag("--version", std::function<std::string()>([] {
                         return version_text(sparsa_version().c_str());
                       }),
                       "The version and the libraries this binary runs with (MPI, HDF5, htslib, "
                       "zlib, CUDA, NCCL)");
  app.require_subcommand(1);
  app.fallthrough();  // global options (--threads) may follow the subcommand
  app.formatter(std::make_shared<SparsaFormatter>());
  app.get_formatter()->column_width(34);
  int threads = 0;
  app.add_option(
         "-t,--threads", threads,
         "CPU threads, 1 to 1024 (default: OMP_NUM_THREADS, else the CPUs this rank may run on, "
         "shared with the node's ranks that may run on them too)")
      ->check(CLI::Validator(
          [](const std::string& v) -> std::string {
            long long n = 0;
            const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec == std::errc::result_out_of_range && end == v.data() + v.size())
              return v + " threads: must be 1 to 1024";
            if (ec != std::errc() || end != v.data() + v.size())
              return "'" + v + "' is not a whole number of threads (1 to 1024)";
            return n >= 1 && n <= 1024 ? "" : v + " threads: must be 1 to 1024";
          },
          "INT in [1 - 1024]"));

  // Every option's spellings ("--output", "-o"), filled once all are defined. An option's value
  // that is one of them is refused: `-o $OUT --force` with OUT unset took --force as the output.
  // So is one that starts with '=': `-o=x.h5` gives -o the value "=x.h5".
  std::set<std::string> option_words;
  const CLI::Validator not_an_option(
      [&option_words](const std::string& v) {
        if (option_words.count(v))
          return "took the option " + v + " as its value (an unset shell variable before it?)";
        if (!v.empty() && v.front() == '=')
          return "took '" + v + "' as its value; a short option takes its value after a blank " +
                 "(-o x.h5), a long one after '=' (--output=x.h5)";
        return std::string();
      },
      "");

  // An empty value is refused rather than read as "not given": `--regions "$BED"` with BED unset
  // must not embed the whole input.
  const CLI::Validator not_empty(
      [](const std::string& v) { return v.empty() ? std::string("must not be empty") : ""; },
      "");  // (no name: the help shows the option's type alone)

  // init
  auto* init = app.add_subcommand("init", "Write a new checkpoint with seeded random weights");
  std::string init_config, init_output;
  std::string seed_text = "1";  // decimal, read here (CLI11 would take a leading 0 as octal)
  bool init_force = false;
  const std::string presets = presets_dir();
  init->add_option("-c,--config", init_config, "Model config (TOML, a [model] table; see configs/)")
      ->required()
      ->check(not_empty)
      ->check(CLI::Validator(
          [presets](const std::string& v) -> std::string {
            if (const std::string e = CLI::ExistingFile(v); !e.empty())
              return presets.empty() ? e
                                     : e + " (the presets: " + presets +
                                           "/dna-tiny.toml, dna-base.toml, ts-base.toml)";
            return "";
          },
          "FILE"));
  init->add_option("-o,--output", init_output, "Checkpoint to write (HDF5)")
      ->required()
      ->check(not_empty);
  init->add_option("--seed", seed_text, "Random seed; the same seed gives the same file contents")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](const std::string& v) {  // uint64 parsing wraps "-1" around, clamps 1e30
            const bool digits =
                v.find_first_not_of("0123456789") == std::string::npos && !v.empty();
            const std::string d = v.substr(std::min(v.find_first_not_of('0'), v.size()));
            const bool fits = d.size() < 20 || (d.size() == 20 && d <= "18446744073709551615");
            return digits && fits
                       ? std::string()
                       : "the seed must be a whole number from 0 to 18446744073709551615";
          },
          "", "unsigned"))
      ->type_name("UINT");
  init->add_flag("--force", init_force, "Replace an existing output file");
  bool init_quiet = false;
  init->add_flag("-q,--quiet", init_quiet, "No line on success (errors are still printed)");
  init->footer(
      "A config is a TOML file with a [model] table (docs/model.md lists its keys); sparsa has\n"
      "three presets: dna-tiny.toml (68K parameters, CPU-sized), dna-base.toml (25M, for GPUs)\n"
      "and ts-base.toml (time series), in configs/ of the source tree and share/sparsa/configs\n"
      "of an installed sparsa" +
      (presets.empty() ? std::string(".") : " (this one's: " + presets + ").") +
      "\nExample: sparsa init --config configs/dna-tiny.toml --output model.h5 --seed 1\n"
      "Exit status: 0 written; 1 an I/O error; 2 a usage or config error (the output exists\n"
      "without --force, a bad key or value in the config).");

  // embed
  auto* embed =
      app.add_subcommand("embed", "Embed records of FASTA/FASTQ or time-series CSV files");
  embed->footer(kEmbedFooter);
  EmbedOptions eo;
  std::string pool = "none", dtype = "f16", columns;
  embed
      ->add_option("-m,--model", eo.model,
                   "Checkpoint: written by `sparsa init`, or your trained weights exported to "
                   "HDF5 in the layout of docs/formats.md (`sparsa inspect` checks one)")
      ->required()
      ->check(not_empty)
      ->check(CLI::ExistingFile);
  embed
      ->add_option("-i,--input", eo.inputs,
                   "Input file(s): FASTA/FASTQ (plain, gzip, bgzip) or CSV; repeat for more")
      ->required()
      ->check(not_empty);
  embed->add_option("-o,--output", eo.output, "Embeddings file to write (HDF5)")
      ->required()
      ->check(not_empty);
  embed
      ->add_option("-r,--region", eo.regions,
                   "Region chr:start-end (1-based, inclusive, as samtools; {name}:start-end for "
                   "a name holding ':'); repeatable")
      ->check(not_empty);
  embed->add_option("--regions", eo.regions_bed, "BED file of regions (0-based, half-open)")
      ->check(not_empty);
  embed->add_option("-p,--pool", pool, "none (a row per token), bin:N (mean of N tokens), mean")
      ->capture_default_str();
  embed->add_option("--dtype", dtype, "Embedding type in the file: f16 or f32")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->capture_default_str();
  embed->add_flag("--rc-average", eo.rc_average,
                  "DNA: average with the reverse-complement strand (2x the work)");
  embed->add_flag("--invalid-as-n", eo.invalid_as_n,
                  "DNA: read invalid sequence characters as N instead of failing");
  embed
      ->add_option("--columns", columns,
                   "Time series: channel columns a,b,c, by header name or number (1 = "
                   "first; default: all but the time and id columns)")
      ->check(not_empty);
  embed->add_option("--time-column", eo.time_column,
                    "Time series: time column, by name or number (default: the first named "
                    "timestamp, date, time or datetime, an exact name first)");
  embed->add_option("--id-column", eo.id_column,
                    "Time series: long format, one record per distinct value of this column");
  embed
      ->add_option("--device", eo.device,
                   "auto (CUDA where a usable GPU is present, else the CPU), cpu, or cuda (an "
                   "error without a GPU)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  std::string precision = "bf16";
  embed
      ->add_option("--precision", precision,
                   "CUDA only: bf16 (tensor cores; the default on a GPU) or fp32 (validation "
                   "against the CPU); the CPU computes in float32, so leave it out there")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  embed->add_flag("--force", eo.force,
                  "Replace an existing output file (kept in OUTPUT.parts/ until the run finishes; "
                  "a disk without room for both refuses the run: remove the old file yourself "
                  "then) and discard an earlier run's journal");
  embed->add_flag("--resume", eo.resume,
                  "Continue an interrupted run from its journal OUTPUT.parts/ (same options)");
  std::string split_min = std::to_string(eo.split_min);
  embed
      ->add_option("--split-min", split_min,
                   "Under MPI: records of at least this many tokens are split over all ranks; "
                   "shorter ones go whole to one rank (at least 1; k, M, G suffixes as in "
                   "regions: 2M is 2,000,000)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](const std::string& v) {
            int64_t n = 0;
            if (parse_token_count(v, n) && n >= 1) return std::string();
            if (const std::string f = fractional_count(v); !f.empty())
              return v + " is " + f + ", not a whole number of tokens";
            return std::string(
                "must be a whole number of tokens, at least 1 (e.g. 1048576, 500k, 2M)");
          },
          "TOKENS", "tokens"));
  embed->add_flag("-q,--quiet", eo.quiet, "No progress output");

  // inspect
  auto* insp = app.add_subcommand("inspect", "Summarise a checkpoint or an embeddings file");
  std::vector<std::string> insp_paths;
  bool insp_all = false;
  insp->add_option("file", insp_paths,
                   "HDF5 file(s): embeddings files, checkpoints of `sparsa init` or ones you "
                   "exported (every dataset checked against the layout of docs/formats.md)")
      ->required()
      ->check(not_empty);
  insp->add_flag("--all", insp_all,
                 "List every record (without it: the first 20; all are checked)");
  insp->footer(
      "Exit status: 0 for a checkpoint or a complete embeddings file; 1 for a file that is not\n"
      "a result (an embeddings file without complete = 1, a journal part) or not sparsa's, so\n"
      "scripts can test a file with `sparsa inspect FILE > /dev/null`. Several files: each\n"
      "under a '== FILE' line, exit 1 if any is not a result.\n"
      "Examples: sparsa inspect emb.h5 --all\n"
      "          sparsa inspect out/*.h5 > /dev/null || echo 'some are not finished'");

  // bench
  auto* bench =
      app.add_subcommand("bench", "Time the CUDA backend: attention, one layer, the model");
  BenchOptions bo;
  std::string bench_n;
  bool bench_fp32 = false;
  bench
      ->add_option("--what", bo.what,
                   "attention-local, attention-global, attention, layer, model, or gemm (the MLP "
                   "up projection of --config: cuBLASLt, GELU pass, our fused GEMM)")
      ->check(CLI::IsMember(
          {"attention-local", "attention-global", "attention", "layer", "model", "gemm"}))
      ->capture_default_str();
  bench->add_option("-n,--n", bench_n,
                    "Token counts, comma separated, each 1 to 2^34 (default "
                    "65536,131072,262144,524288,1048576)");
  bench->add_option("--heads", bo.heads, "Attention: heads, 1 to 256")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  bench->add_option("--head-dim", bo.head_dim, "Attention: head dimension, even, 2 to 256")
      ->check(CLI::Range(2, 256))
      ->check(CLI::Validator(
          [](std::string& v) {
            // read as CLI11 reads the number (strtoll, base 0: +3, 0x3, 010); Range above has
            // said what is not a number in range
            char* end = nullptr;
            const long long x = std::strtoll(v.c_str(), &end, 0);
            return end != v.c_str() && *end == 0 && x % 2 != 0 ? "must be even" : "";
          },
          "EVEN"))
      ->capture_default_str();
  bench->add_option("--window", bo.window, "Attention: window w, 0 to 2^20")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  bench->add_option("--global", bo.global, "Attention: global tokens G, 0 to 2^20")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  bench->add_flag("--causal", bo.causal, "Attention: causal");
  bench->add_flag("--fp32", bench_fp32, "fp32 mode (default bf16)");
  bench->add_option("--iters", bo.iters, "Timed runs, 1 to 100000; the median is printed")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  bench->add_option("-c,--config", bo.config, "Layer, model, gemm: model config (TOML)")
      ->capture_default_str()
      ->check(not_empty);
  bench->add_option("--output", bo.output, "Layer/model: output y to host, pooled or device")
      ->check(CLI::IsMember({"host", "pooled", "device"}))
      ->capture_default_str();
  bench->footer(
      "Prints the median time, useful TFLOP/s (the band's 2w+1 keys and the global set only),\n"
      "tokens/s and the GPU memory the run holds, then the GPU's power draw and SM clock over\n"
      "the timed runs (NVML); layer and model add a per-stage profile.\n"
      "Examples:\n"
      "  sparsa bench --what model --config configs/dna-base.toml --n 1048576 --iters 3\n"
      "  sparsa bench --what attention --n 1048576 --global 4096 --iters 20\n"
      "The same model in PyTorch, to run beside it: python3 bench/torch_reference.py\n"
      "(docs/benchmarks.md has the numbers and the machines).\n"
      "Needs a CUDA GPU (exit 2 without one); the CPU's numbers come from whole runs:\n"
      "bench/cpu-benchmarks.sh. --config is a path from the current folder (run from the\n"
      "source tree for configs/...).");

  for (CLI::App* a : {&app, init, embed, insp, bench})
    for (CLI::Option* opt : a->get_options()) {
      for (const std::string& name : opt->get_lnames()) option_words.insert("--" + name);
      for (const std::string& name : opt->get_snames()) option_words.insert("-" + name);
      if (opt->get_type_size() != 0 && !opt->get_lnames().empty()) opt->check(not_an_option);
    }

  // No command: the usage, as samtools and minimap2 print it; an unknown command is named.
  if (argc == 1) {
    std::fprintf(stderr, "%s", app.help().c_str());
    return kExitUsage;
  }
  // The command: the first argument that is neither an option nor the value of -t/--threads.
  // (Only the global options are skipped; any other option before the command stops the scan
  // and is left to the parser, which names it.)
  int at = 1;
  bool scan = true;
  while (scan && at < argc && argv[at][0] == '-') {
    const std::string a = argv[at];
    if (a == "-t" || a == "--threads")
      at += 2;
    else if (a.rfind("--threads=", 0) == 0 || (a.rfind("-t", 0) == 0 && a.size() > 2) ||
             a == "-h" || a == "--help" || a == "--version")
      at += 1;
    else
      scan = false;
  }
  if (scan && at < argc) {
    const std::string cmd = argv[at];
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) known = known || sub->get_name() == cmd;
    if (!known) {
      std::fprintf(stderr,
                   "sparsa: error: unknown command '%s'; the commands are init, embed, inspect "
                   "and bench (sparsa --help)\n",
                   cmd.c_str());
      return kExitUsage;
    }
  }
  // `--output=$OUT` with OUT unset: CLI11 would take the next word as the value (`--output=
  // --force` wrote a file named --force).
  // (Only the names of sparsa's options, before a "--".)
  for (int i = 1; i < argc && std::string_view(argv[i]) != "--"; ++i) {
    const std::string_view a = argv[i];
    if (a.size() > 3 && a.back() == '=' &&
        option_words.count(std::string(a.substr(0, a.size() - 1)))) {
      if (first_rank_to_speak())
        std::fprintf(stderr,
                     "sparsa: error: %s: an empty value (an unset shell variable?); give it a "
                     "value\n",
                     argv[i]);
      return kExitUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (!first_rank_to_speak()) return e.get_exit_code() == 0 ? 0 : kExitUsage;
    if (e.get_exit_code() != 0) std::fprintf(stderr, "sparsa: error: ");  // as other errors
    // "--model is required" where the line has `--modle m.h5` or a value without its flag: the
    // stray words are the mistake, so they are said first (CLI11 checks requirements first).
    if (dynamic_cast<const CLI::RequiredError*>(&e)) {
      const CLI::App* sub = nullptr;
      for (const CLI::App* a : app.get_subcommands()) sub = a;
      const std::vector<std::string> extra = app.remaining(true);  // (the command's too)
      // `sparsa [-t N] embed`: its usage (the command's name first met as the last word, not a
      // value such as `-o embed`)
      int first = 1;
      while (sub && first < argc && sub->get_name() != argv[first]) ++first;
      if (sub && first == argc - 1) {
        std::fprintf(stderr, "%s\n%s", e.what(), sub->help().c_str());
        return kExitUsage;
      }
      // `-i in.fa out.h5` without -o: --input took the output's name as a second input
      const std::string what = e.what();
      if (what.find("--output is required") != std::string::npos && eo.inputs.size() > 1 &&
          eo.inputs.back().size() > 3 &&
          eo.inputs.back().compare(eo.inputs.back().size() - 3, 3, ".h5") == 0) {
        std::fprintf(stderr,
                     "%s: --input took '%s' as an input too (it takes every word up to the next "
                     "option); give it as --output %s\n",
                     what.c_str(), eo.inputs.back().c_str(), eo.inputs.back().c_str());
        return kExitUsage;
      }
      if (!extra.empty()) {
        const Unexpected u = unexpected_words(app, sub, extra);
        std::fprintf(stderr, "unexpected argument(s): %s (%s; %s)\n", u.words.c_str(),
                     u.why.c_str(), e.what());
        std::fprintf(stderr, "Run with --help for more information.\n");
        return kExitUsage;
      }
    }
    // Words no option took, all required options given: say which, and the option a
    // misspelled one is likely to be.
    if (dynamic_cast<const CLI::ExtrasError*>(&e)) {
      const CLI::App* sub = &app;
      for (const CLI::App* a : app.get_subcommands()) sub = a;
      const std::vector<std::string> extra = app.remaining(true);
      if (!extra.empty()) {
        const Unexpected u = unexpected_words(app, sub, extra);
        std::fprintf(stderr, "unexpected argument(s): %s (%s)\n", u.words.c_str(), u.why.c_str());
        std::fprintf(stderr, "Run with --help for more information.\n");
        return kExitUsage;
      }
    }
    // An option given twice that takes one value: CLI11's "--model: At Most 1 required but
    // received 2" said plainly.
    if (dynamic_cast<const CLI::ArgumentMismatch*>(&e)) {
      const std::string what = e.what(), said = ": At Most 1 required but received ";
      const std::string option = what.substr(0, what.find(": "));  // CLI11 names it first
      if (const size_t pos = what.find(said); pos != std::string::npos) {
        std::fprintf(stderr, "%s given %s times; it takes one value: give it once\n",
                     option.c_str(), what.substr(pos + said.size()).c_str());
        return kExitUsage;
      }
      // "--pool: 1 required TEXT missing": the option ended the line (or came before another)
      if (what.find(": 1 required ") != std::string::npos && what.ends_with(" missing")) {
        std::fprintf(stderr,
                     "%s needs a value after it (%s VALUE; the options and their values: "
                     "--help)\n",
                     option.c_str(), option.c_str());
        return kExitUsage;
      }
    }
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  if (!*embed) release_early_stops();  // (only embed stops at safe points)
  std::unique_ptr<Comm> comm;
  int code = kExitOk;
  std::string error_text;
  try {
    comm = make_world_comm();
    // The ranks that share this rank's CPUs (every rank gathers, whatever its options say: a
    // collective).
    const int sharers = ranks_sharing_my_cpus(*comm);
    // Threads: --threads, else OMP_NUM_THREADS, else the CPUs shared among the ranks that may
    // run on them (P ranks on one node must not each start one thread per core).
    if (threads > 0) {
      omp_set_num_threads(threads);
    } else if (const char* env = std::getenv("OMP_NUM_THREADS"); env && *env) {
      // The first of OpenMP's list (nested levels), in --threads' range: 3000 started 3001
      // threads; 0 or a word was ignored by the OpenMP runtime without a word.
      // (blanks and a '+' as libgomp takes them)
      std::string_view first = trim_blanks(std::string_view(env).substr(0, std::strcspn(env, ",")));
      if (!first.empty() && first.front() == '+') first.remove_prefix(1);
      if (long long n = 0; !whole_int(first, 1, 1024, &n))
        throw ConfigError("OMP_NUM_THREADS=" + std::string(env) +
                          ": not a number of threads from 1 to 1024 (--threads' range); unset it "
                          "or give --threads");
    } else {
      // The CPUs this process may run on (its affinity mask), divided among the ranks whose
      // masks overlap it: all of them under srun -c N or mpirun --map-by slot:PE=N, a share
      // under --bind-to none or a socket's mask. Tasks that know no MPI world (srun without
      // PMI) divide by the node's tasks unless srun gave them their own (SLURM_CPUS_PER_TASK
      // CPUs, their mask).
      const int local = local_rank_count(), procs = omp_get_num_procs();
      const char* per_task = std::getenv("SLURM_CPUS_PER_TASK");
      const bool own = per_task && std::atoi(per_task) == procs;
      const int share = comm->size() > 1 ? sharers : (own ? 1 : local);
      if (share > 1) {
        omp_set_num_threads(std::max(1, procs / share));
        eo.threads_note = std::string(comm->size() > 1 ? "this rank's " : "this task's ") +
                          std::to_string(procs) + (procs == 1 ? " CPU" : " CPUs") + ", shared by " +
                          std::to_string(share) + (comm->size() > 1 ? " ranks" : " tasks");
      }
      // A rank an MPI launcher bound to one core where the node has more for each rank: said
      // once, with the cure (mpirun binds each rank to a core when it starts 2 ranks or fewer).
      const long online = sysconf(_SC_NPROCESSORS_ONLN);
      if (*embed && !eo.quiet && comm->rank() == 0 && launched_by_mpi() && procs == 1 &&
          online > local)
        std::fprintf(stderr,
                     "[sparsa] this rank may use 1 CPU: the launcher bound it to one core (the "
                     "node has %ld for %d rank(s)); start it with `mpirun --bind-to none`, "
                     "`--map-by slot:PE=N` or `srun -c N`, or give --threads\n",
                     online, local);
    }
    if (*init) {
      namespace fs = std::filesystem;
      std::string taken_by;
      if (output_path_taken(init_output, "--output", &taken_by) && !init_force)
        throw output_exists_error(init_output, taken_by);
      std::error_code ec;
      for (const std::string& ours : {init_output, init_output + ".tmp"})
        if (fs::equivalent(init_config, ours, ec))
          throw ConfigError("--config " + init_config + " is where sparsa writes " +
                            (ours == init_output ? "the checkpoint" : "it while it is made") +
                            "; choose another --output");
      const fs::path folder = fs::absolute(init_output).parent_path();
      if (!fs::is_directory(folder))
        throw ConfigError(init_output + ": the output folder " + folder.string() +
                          " does not exist");  // (a file there: output_path_taken said so)
      if (access(folder.c_str(), W_OK) != 0)
        throw ConfigError(init_output + ": the output folder " + folder.string() +
                          " is not writable");
      check_scratch_path(init_output + ".tmp", init_output, init_force, [](const std::string& p) {
        return h5::is_sparsa_scratch(p, "sparsa-model");
      });
      refuse_named_fifo(init_config, "--config");
      ModelConfig c = load_model_config(init_config);
      uint64_t seed = 0;  // the validator let only decimal digits that fit through
      std::from_chars(seed_text.data(), seed_text.data() + seed_text.size(), seed, 10);
      if (comm->rank() == 0) {
        save_checkpoint(init_model(c, seed), init_output);
        if (!init_quiet)
          std::fprintf(stderr, "[sparsa] wrote %s (%s model, seed %llu)\n", init_output.c_str(),
                       to_string(c.kind), (unsigned long long)seed);
      }
    } else if (*embed) {
      eo.pool = parse_pool(pool);
      parse_token_count(split_min, eo.split_min);  // (checked above)
      eo.f16 = dtype == "f16";
      eo.cuda_fp32 = precision == "fp32";
      eo.precision_given = embed->get_option("--precision")->count() > 0;
      // The CPU backend computes in float32 only: asking it for bf16 is a contradiction.
      if (eo.precision_given && !eo.cuda_fp32 && eo.device == "cpu")
        throw ConfigError(
            "--precision bf16 needs a GPU (--device cuda or auto): the CPU backend computes in "
            "float32 only; drop --precision, or pass --precision fp32");
      // (--columns '' is an empty list, a typo as "a,": the default is to leave it out)
      if (embed->count("--columns")) eo.columns = split_commas(columns, "--columns");
      // (an empty name, as "$COL" of an unset variable gives, is not "leave it out": a panel
      // would be read as one series)
      for (const char* opt : {"--time-column", "--id-column"})
        if (embed->count(opt) && trim_blanks(embed->get_option(opt)->as<std::string>()).empty())
          throw ConfigError(std::string(opt) +
                            " '': an empty column name; leave the option out "
                            "for the default");
      eo.command_line = join_argv(argc, argv);
      const std::string journal = eo.output + ".parts/";
      install_stop_handlers(comm->rank() == 0 && !eo.quiet, journal.c_str(), comm->rank() == 0);
      EmbedSummary s = run_embed(eo, *comm);
      if (s.already_complete && comm->rank() == 0)
        std::fprintf(stderr, "[sparsa] %s is already complete; nothing to do\n", eo.output.c_str());
      else if (comm->rank() == 0 && !eo.quiet && s.records == 0 && s.resumed > 0)
        std::fprintf(stderr, "[sparsa] done: %s from the journal, none to embed, in %s -> %s\n",
                     count_of(s.resumed, "record").c_str(), human_seconds(s.seconds).c_str(),
                     eo.output.c_str());
      else if (comm->rank() == 0 && !eo.quiet)
        std::fprintf(stderr, "[sparsa] done: %s, %stokens in %s (%stok/s)%s -> %s\n",
                     count_of(s.records, "record").c_str(), human_count((double)s.tokens).c_str(),
                     human_seconds(s.seconds).c_str(),
                     human_count(s.seconds > 0 ? s.tokens / s.seconds : 0).c_str(),
                     s.resumed > 0
                         ? (", and " + count_of(s.resumed, "record") + " from the journal").c_str()
                         : "",
                     eo.output.c_str());
    } else if (*bench) {
      if (!bench_n.empty()) {
        bo.n.clear();
        for (const std::string& v : split_commas(bench_n, "--n")) {
          long long n = 0;
          if (!whole_int(v, 1, 1ll << 34, &n))
            throw ConfigError("--n '" + v + "': not a token count from 1 to 2^34 (give n,n,...)");
          bo.n.push_back(n);
        }
      }
      bo.bf16 = !bench_fp32;
      code = run_bench(bo);
    } else if (*insp) {
      // Several files: each under a "== FILE" line; one that fails is said and the rest go on
      // (exit 1 if any is not a result), as `ls` or `samtools quickcheck` do.
      const bool many = insp_paths.size() > 1;
      for (size_t i = 0; i < insp_paths.size(); ++i) {
        const std::string& path = insp_paths[i];
        if (many) std::printf("%s== %s\n", i ? "\n" : "", path.c_str());
        try {
          if (!inspect_file(path, insp_all)) code = kExitError;  // incomplete: not a result
        } catch (const std::exception& e) {
          if (!many) throw;
          std::fflush(stdout);
          std::fprintf(stderr, "sparsa: error: %s\n", e.what());
          // the worst status of the files (2 where a file's error is a usage one, as for one file)
          code =
              std::max<int>(code, dynamic_cast<const ConfigError*>(&e) ? kExitUsage : kExitError);
        }
      }
    }
  } catch (const Interrupted& e) {
    // Every rank stops at the same safe point: rank 0 says it for all.
    if (!comm || comm->rank() == 0)
      std::fprintf(stderr, "sparsa: interrupted (%s): %s\n", signal_name(stop_signal()), e.what());
    code = kExitInterrupted;
  } catch (const ConfigError& e) {
    error_text = e.what();
    code = kExitUsage;
  } catch (const std::exception& e) {
    error_text = e.what();
    code = kExitError;
  }
  if (!error_text.empty()) {  // (inspect and bench say their own failures)
    if (comm && comm->size() > 1 && comm->rank() != 0) {
      // Most errors (usage, config, inputs: every rank reads every record) come to every rank
      // alike: rank 0 says it and aborts them all, so that a job of 512 ranks logs it once. A
      // rank that fails alone says it after that wait, naming itself.
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      std::fprintf(stderr, "sparsa: error (rank %d): %s\n", comm->rank(), error_text.c_str());
    } else {
      std::fprintf(stderr, "sparsa: error: %s\n", error_text.c_str());
    }
  }
  if (code != kExitOk && code != kExitInterrupted && comm && comm->size() > 1) {
    // One rank failed: the others may wait in a collective forever. Abort them all.
    std::fflush(stderr);
    comm->abort(code);
  }
  return code;
}
