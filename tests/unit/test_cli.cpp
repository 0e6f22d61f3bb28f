// End-to-end tests of the sparsa command line: real processes, real files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <random>
#include <regex>
#include <thread>

#include "compare_h5.hpp"
#include "core/paths.hpp"
#include "dist/comm.hpp"
#include "dist/cpu_share.hpp"
#include "io/h5.hpp"
#include "model/weights.hpp"
#include "test_util.hpp"

using namespace sparsa::testing;
namespace h5 = sparsa::h5;
using sparsa::cpu_sharers;
using sparsa::CpuClaim;
using sparsa::this_process_cpus;

namespace {

std::string tiny_config() { return source_dir() + "/configs/dna-tiny.toml"; }
std::string lambda() { return source_dir() + "/examples/lambda_virus.fa.gz"; }

// A model shared by the tests of this file (init is deterministic, so one is enough).
const std::string& tiny_model() {
  static TempDir dir;
  static std::string path = dir / "tiny.h5";
  if (!exists(path)) {
    auto r = run(binary() + " init --config " + tiny_config() + " --output " + path + " --seed 3");
    EXPECT_EQ(r.code, 0) << r.output;
  }
  return path;
}

std::string embed_cmd(const std::string& input, const std::string& out,
                      const std::string& extra = "") {
  return binary() + " embed -q --model " + tiny_model() + " --input " + input + " --output " + out +
         " " + extra;
}

std::string first_key(const h5::File& f) { return "/records/" + f.list("/records").at(0); }

// A small causal time-series model (log returns, 64 bins) at t/ts.h5, for the CSV tests; window,
// G's spacing and the channel count are theirs to choose. Returns its path ("" if init failed).
std::string init_ts_model(const TempDir& t, int window, int global_every, int channels) {
  write_file(t / "ts.toml",
             "[model]\nkind = \"timeseries\"\nd_model = 32\nn_layers = 2\n"
             "n_heads = 2\nd_ff = 64\nwindow = " +
                 std::to_string(window) +
                 "\ncausal = true\nglobal_every = " + std::to_string(global_every) +
                 "\nglobal_max = 16\nrouter_hidden = 8\nchannels = " + std::to_string(channels) +
                 "\nts_bins = 64\nts_clip = 4.0\nts_transform = \"log_return\"\n");
  return run(binary() + " init --config " + t / "ts.toml" + " --output " + t / "ts.h5").code == 0
             ? t / "ts.h5"
             : "";
}

// Every dataset of every record, as floats / ints, for exact comparison.
std::vector<float> embedding(const std::string& path, int rec = 0) {
  auto f = h5::File::open_read(path);
  return f.read_f32("/records/" + f.list("/records").at(rec) + "/embedding");
}

// Runs a command that must fail: non-zero exit, nothing at `out`, message mentions `needle`.
void expect_failure(const std::string& cmd, const std::string& out, const std::string& needle) {
  auto r = run(cmd);
  EXPECT_NE(r.code, 0) << cmd << "\n" << r.output;
  EXPECT_FALSE(exists(out)) << "a file was left at " << out;
  EXPECT_FALSE(exists(out + ".tmp")) << "a temporary file was left at " << out << ".tmp";
  EXPECT_NE(r.output.find(needle), std::string::npos) << "message lacks '" << needle << "':\n"
                                                      << r.output;
}

}  // namespace

// An empty value (an unset shell variable: --regions "$BED") is a usage error, never read as the
// option not given: --regions '' embedded the whole genome, -i '' gave a raw exception.
TEST(Cli, EmptyOptionValuesAreRefused) {
  TempDir t;
  for (const std::string& extra : {"--regions ''", "-r ''", "--input ''", "--columns ''"}) {
    auto r = run(embed_cmd(lambda(), t / "e.h5", extra));
    EXPECT_EQ(r.code, 2) << extra << "\n" << r.output;
    EXPECT_NE(r.output.find("must not be empty"), std::string::npos) << extra << "\n" << r.output;
    EXPECT_FALSE(exists(t / "e.h5")) << extra;
    EXPECT_FALSE(exists(t / "e.h5.parts")) << extra;
  }
  // Every option that takes a path, in every command; and `--opt=` with nothing after the '='
  // (CLI11 would take the next word as the value: `--output= --force` wrote a file "--force").
  const std::string init = binary() + " init --config " + tiny_config() + " ";
  const std::string embed =
      binary() + " embed -q --model " + tiny_model() + " --input " + lambda() + " --device cpu ";
  for (const std::string& cmd :
       {init + "--output ''", binary() + " init --config '' --output " + (t / "e.h5"),
        embed + "--output ''",
        binary() + " embed --model '' -i " + lambda() + " -o " + (t / "e.h5"),
        binary() + " inspect ''", binary() + " bench --what model --config ''",
        "cd " + t.str() + " && " + embed + "--output= --force",
        "cd " + t.str() + " && " + init + "--output= --seed 3",
        "cd " + t.str() + " && " + embed + "-o --force",
        "cd " + t.str() + " && " + embed + "--output --force",
        "cd " + t.str() + " && " + embed + "-o=e.h5"}) {
    auto r = run(cmd);
    EXPECT_EQ(r.code, 2) << cmd << "\n" << r.output;
    EXPECT_TRUE(r.output.find("must not be empty") != std::string::npos ||
                r.output.find("--output=: an empty value (an unset shell variable?)") !=
                    std::string::npos ||
                r.output.find("--output: took the option --force as its value") !=
                    std::string::npos ||
                r.output.find("--output: took '=e.h5' as its value; a short option takes its "
                              "value after a blank") != std::string::npos)
        << cmd << "\n"
        << r.output;
    EXPECT_FALSE(exists(t / "e.h5")) << cmd;
    EXPECT_FALSE(exists(t / "--force")) << cmd;
    EXPECT_FALSE(exists(t / "--seed")) << cmd;
    EXPECT_FALSE(exists(t / "=e.h5")) << cmd;
  }
}

// A file of the wrong kind for its option: the message says which option takes what.
TEST(Cli, WrongKindOfFileNamesTheOption) {
  TempDir t;
  write_file(t / "m.fa", ">r1 a b c\nACGT\n");
  std::filesystem::create_directory(t / "dir");
  expect_failure(binary() + " embed -q --model " + (t / "m.fa") + " --input " + lambda() +
                     " --output " + (t / "e.h5"),
                 t / "e.h5", "--model takes a checkpoint: the file that `sparsa init` writes");
  // A PyTorch file (torch.save: a zip archive; older ones pickle data) is named as one.
  write_file(t / "m.pt", std::string("PK\x03\x04"
                                     "archive/data.pkl"));
  write_file(t / "old.pt", std::string("\x80\x02\x8a\x0alz"));
  for (const char* pt : {"m.pt", "old.pt"})
    expect_failure(binary() + " embed -q --model " + (t / pt) + " --input " + lambda() +
                       " --output " + (t / "e.h5"),
                   t / "e.h5", "torch.save");
  expect_failure(binary() + " init --config " + tiny_model() + " --output " + (t / "x.h5"),
                 t / "x.h5", "an HDF5 file (a sparsa checkpoint?), not a TOML config");
  expect_failure(embed_cmd(t / "m.fa", t / "e.h5", "--regions " + (t / "m.fa")), t / "e.h5",
                 "--regions " + (t / "m.fa") + ": line 1: a FASTA/FASTQ header, not a BED line");
  expect_failure(embed_cmd(t / "m.fa", t / "e.h5", "--regions " + (t / "dir")), t / "e.h5",
                 "--regions " + (t / "dir"));
  // An output "folder" that is a file is said as such (not "does not exist").
  expect_failure(embed_cmd(t / "m.fa", t / "m.fa/e.h5"), t / "m.fa/e.h5",
                 "output folder " + (t / "m.fa") + " is not a folder (a file of that name)");
  expect_failure(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                     (t / "m.fa/x.h5"),
                 t / "m.fa/x.h5", "is not a folder (a file of that name)");
  // A folder on a pseudo file system (no blocks) is named as such, not as "0 B are free".
  if (std::filesystem::space("/proc").capacity == 0 && ::access("/proc", W_OK) == 0)
    expect_failure(embed_cmd(t / "m.fa", "/proc/sparsa-test-out.h5"), "/proc/sparsa-test-out.h5",
                   "its folder /proc is on a file system that stores no files");
  if (std::filesystem::space("/proc").capacity == 0 && ::access("/proc", W_OK) == 0)
    expect_failure(binary() + " init --config " + tiny_config() + " --output /proc/sparsa-t.h5",
                   "/proc/sparsa-t.h5", "(/proc is on a file system that stores no files");
  // A CSV row short of cells is not told to quote its commas.
  write_file(t / "short.csv", "date,close\n2020-01-01,1.5\n2020-01-02\n");
  {
    auto r = run(binary() + " init --config " + source_dir() + "/configs/ts-base.toml --output " +
                 (t / "ts.h5"));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  const std::string said =
      "line 3: 1 cell, but the header has 2 (a missing value is an empty "
      "cell: keep its comma)";
  expect_failure(binary() + " embed -q --model " + (t / "ts.h5") + " --input " + (t / "short.csv") +
                     " --output " + (t / "ts-out.h5"),
                 t / "ts-out.h5", said);
}

// Threads of a process that knows no MPI world: the CPUs it may run on, divided by the node's
// tasks, unless srun gave the task its own (-c N: SLURM_CPUS_PER_TASK equals its CPUs); the
// device line says how many.
TEST(Cli, ThreadsFollowTheTasksCpus) {
  cpu_set_t mask;
  ASSERT_EQ(sched_getaffinity(0, sizeof mask, &mask), 0);
  const int n_cpus = CPU_COUNT(&mask);  // the process's (a container's, taskset's) CPUs
  if (n_cpus < 2) GTEST_SKIP() << "one CPU: nothing to divide";
  TempDir t;
  const std::string cpus = std::to_string(n_cpus);
  auto line = [&](const std::string& env) {
    const auto r = run("env -u OMP_NUM_THREADS " + env + " " + binary() +
                       " embed --device cpu --model " + tiny_model() + " --input " + lambda() +
                       " --pool mean --force --output " + (t / "th.h5"));
    EXPECT_EQ(r.code, 0) << r.output;
    const size_t a = r.output.find("device: CPU");
    return a == std::string::npos ? r.output : r.output.substr(a, r.output.find('\n', a) - a);
  };
  EXPECT_NE(line("").find(", " + cpus + " threads"), std::string::npos) << line("");
  // Two ranks on the node: half each; srun -c giving each task all of them: all.
  const std::string half = "SLURM_NTASKS_PER_NODE=2";
  const int h = std::max(1, n_cpus / 2);
  EXPECT_NE(line(half).find(", " + std::to_string(h) + (h == 1 ? " thread" : " threads")),
            std::string::npos)
      << line(half);
  EXPECT_NE(line(half + " SLURM_CPUS_PER_TASK=" + cpus).find(", " + cpus + " threads"),
            std::string::npos)
      << line(half + " SLURM_CPUS_PER_TASK=" + cpus);
  // srun without --ntasks-per-node: the step's tasks on this node (2 on node 1 here).
  const std::string step = "SLURM_STEP_TASKS_PER_NODE=1,2 SLURM_NODEID=1";
  EXPECT_NE(line(step).find(", " + std::to_string(h) + (h == 1 ? " thread (" : " threads (") +
                            "this task's " + cpus + " CPUs, shared by 2 tasks)"),
            std::string::npos)
      << line(step);
  EXPECT_EQ(sparsa::slurm_step_tasks_here("2(x3),1", "0"), 2);
  EXPECT_EQ(sparsa::slurm_step_tasks_here("2(x3),1", "2"), 2);
  EXPECT_EQ(sparsa::slurm_step_tasks_here("2(x3),1", "3"), 1);
  EXPECT_EQ(sparsa::slurm_step_tasks_here("1,4(x2)", nullptr), 4);  // no node id: the most
  EXPECT_EQ(sparsa::slurm_step_tasks_here("1,4(x2)", "9"), 4);
  EXPECT_EQ(sparsa::slurm_step_tasks_here("8", "0"), 8);
  for (const char* bad : {"", "x", "2(x", "2(x0)", "2;3", "-1"})
    EXPECT_EQ(sparsa::slurm_step_tasks_here(bad, "0"), 0) << bad;
  EXPECT_EQ(sparsa::slurm_step_tasks_here(nullptr, "0"), 0);
}

// The ranks dividing a rank's CPUs: those on its node whose masks overlap its own.
TEST(Cli, CpuSharersAreTheOverlappingMasksOfTheHost) {
  auto claim = [](const char* host, std::vector<uint64_t> cpus) { return CpuClaim{host, cpus}; };
  // srun -c 4 / --map-by slot:PE=4: four ranks of 4 CPUs each, disjoint: each alone.
  std::vector<CpuClaim> own = {claim("a", {0xF}), claim("a", {0xF0}), claim("a", {0xF00}),
                               claim("a", {0xF000})};
  for (int r = 0; r < 4; ++r) EXPECT_EQ(cpu_sharers(own, r), 1) << r;
  // --bind-to none: every rank of the node shares its mask; other nodes do not count.
  std::vector<CpuClaim> none = {claim("a", {0xFF}), claim("a", {0xFF}), claim("b", {0xFF}),
                                claim("a", {0xFF})};
  EXPECT_EQ(cpu_sharers(none, 0), 3);
  EXPECT_EQ(cpu_sharers(none, 2), 1);
  // Two sockets bound to two ranks each; a mask past 64 CPUs (word 1).
  std::vector<CpuClaim> sockets = {claim("a", {0xFF, 0}), claim("a", {0xFF}), claim("a", {0, 0xFF}),
                                   claim("a", {0, 0x1})};
  EXPECT_EQ(cpu_sharers(sockets, 0), 2);
  EXPECT_EQ(cpu_sharers(sockets, 2), 2);
  // A mask not known overlaps every mask of its host.
  std::vector<CpuClaim> unknown = {claim("a", {}), claim("a", {0x1}), claim("a", {0x2})};
  EXPECT_EQ(cpu_sharers(unknown, 0), 3);
  EXPECT_EQ(cpu_sharers(unknown, 1), 2);
  // This process's own claim names its host and at least the CPU it runs on.
  const CpuClaim me = this_process_cpus();
  EXPECT_FALSE(me.node.empty());
  const int cpu = sched_getcpu();
  ASSERT_GE(cpu, 0);
  ASSERT_GT(me.cpus.size(), (size_t)cpu / 64);
  EXPECT_NE(me.cpus[cpu / 64] & (uint64_t{1} << (cpu % 64)), 0u);
}

// A CUDA build loads cuBLASLt when a GPU model is made (or --version asks its version), not at
// start: a process that links it holds ~210 MB more from its start, which a CPU run would pay
// for nothing. The dynamic loader's own log (LD_DEBUG=libs) says what a process loaded.
TEST(Cli, CpuRunLeavesCublasLtUnloaded) {
  TempDir t;
  auto r = run("LD_DEBUG=libs " + binary() + " --version");
  ASSERT_EQ(r.code, 0) << r.output;
  if (r.output.find("cuBLASLt") == std::string::npos)
    GTEST_SKIP() << "a build without the CUDA backend: no cuBLASLt to leave unloaded";
  EXPECT_NE(r.output.find("calling init: "), std::string::npos) << "no loader log:\n" << r.output;
  EXPECT_NE(r.output.find("libcublasLt.so"), std::string::npos) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("cuBLASLt [0-9]{5,}"))) << r.output;
  // (auto: where no GPU is usable; a GPU machine loads it for auto, as it should)
  const bool gpu = run(embed_cmd(lambda(), t / "probe.h5", "--device cuda --pool mean")).code == 0;
  for (const char* device : {"cpu", "auto"}) {
    if (gpu && std::string(device) == "auto") continue;
    const std::string out = t / (std::string(device) + ".h5");
    r = run("LD_DEBUG=libs " +
            embed_cmd(lambda(), out, "--pool mean --device " + std::string(device)));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("calling init: "), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("libcublasLt"), std::string::npos) << device;
    EXPECT_TRUE(exists(out));
  }
}

// On the CPU a record whose part needs more host memory than the process may take is refused
// before the model runs, naming the record and the numbers (the kernel's OOM killer would end the
// process without a word); SPARSA_HOST_MEMORY sets what is available, as a job's limit would.
TEST(Cli, RecordPastTheHostMemoryIsRefused) {
  TempDir t;
  const std::string out = t / "m.h5";
  // lambda: 48,502 tokens x 16 x 64 bytes = 47.4 MiB with dna-tiny
  auto r = run("SPARSA_HOST_MEMORY=40M " + embed_cmd(lambda(), out, "--device cpu --pool mean"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find(lambda()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("gi|9626243|ref|NC_001416.1|"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("out of memory before the model: this rank's part needs about 47.4 MiB "
                          "of host memory on the CPU"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("40.0 MiB are available"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".parts"));
  EXPECT_EQ(
      run("SPARSA_HOST_MEMORY=48M " + embed_cmd(lambda(), out, "--device cpu --pool mean")).code,
      0);
  std::filesystem::remove(out);
  r = run("SPARSA_HOST_MEMORY=40M SPARSA_SKIP_MEMORY_CHECK=1 " +
          embed_cmd(lambda(), out, "--device cpu --pool mean"));
  EXPECT_EQ(r.code, 0) << r.output;
  // A bad value is said before anything is made or set aside.
  write_file(t / "x.h5", "an earlier output");
  r = run("SPARSA_HOST_MEMORY=lots " + embed_cmd(lambda(), t / "x.h5", "--device cpu --force"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("SPARSA_HOST_MEMORY=lots: not a number of bytes"), std::string::npos)
      << r.output;
  EXPECT_EQ(read_file(t / "x.h5"), "an earlier output");
  EXPECT_FALSE(exists(t / "x.h5.parts"));
}

TEST(Cli, HelpTeachesAndVersionWorks) {
  TempDir t;
  auto r = run(binary() + " --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("Typical use"), std::string::npos);
  r = run(binary() + " embed --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("--pool"), std::string::npos);
  EXPECT_NE(r.output.find("--rc-average"), std::string::npos);
  EXPECT_NE(r.output.find("Examples:"), std::string::npos);
  EXPECT_NE(r.output.find("GB per million tokens"), std::string::npos);
  r = run(binary() + " bench --help");  // no GPU needed for the help
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("Examples:"), std::string::npos);
  EXPECT_NE(r.output.find("bench/torch_reference.py"), std::string::npos);
  r = run(binary() + " --version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("sparsa "), std::string::npos);
  for (const char* lib :
       {"MPI:", "HDF5:", "htslib:", "zlib:", "BLAS:   OpenBLAS ", "; OpenMP ", "build:  ", "CUDA:"})
    EXPECT_NE(r.output.find(lib), std::string::npos) << lib << "\n" << r.output;
  // A missing --model file is a usage error (exit 2) naming it, with the other options given.
  r = run(binary() + " embed --model " + t / "nope.h5" + " --input " + lambda() + " --output " +
          t / "nope-out.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("nope.h5"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(t / "nope-out.h5"));
  // No command: the usage; an unknown one is named with the list; parse errors as other errors.
  r = run(binary());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("Typical use"), std::string::npos) << r.output;
  r = run(binary() + " embedd -m x.h5");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("sparsa: error: unknown command 'embedd'; the commands are init, embed"),
            std::string::npos)
      << r.output;
  r = run(binary() + " -t 4 bogus");  // after a global option too
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("unknown command 'bogus'"), std::string::npos) << r.output;
  r = run(binary() + " --threads 2 embed --help");  // a known one after a global option
  EXPECT_EQ(r.code, 0) << r.output;
  r = run(binary() + " -m x.h5 embed");  // a subcommand's option first: the parser names it
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.output.find("unknown command"), std::string::npos) << r.output;
  r = run(binary() + " embed --threads abc --model x.h5");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.output.rfind("sparsa: error: --threads: 'abc' is not a whole number of threads "
                           "(1 to 1024)",
                           0),
            0u)
      << r.output;
  // A k/M/G count whose fraction is not whole is said as the number it is.
  for (const auto& [option, said] :
       {std::pair{"--pool bin:1.5001k",
                  "--pool 'bin:1.5001k': 1.5001k is 1500.1, not a whole "
                  "number of tokens"},
        {"--split-min 2.0000001M", "2.0000001M is 2000000.1, not a whole number of tokens"}}) {
    r = run(binary() + " embed " + option + " --model " + tiny_model() + " -i " + lambda() +
            " -o " + t / "y.h5");
    EXPECT_EQ(r.code, 2) << option;
    EXPECT_NE(r.output.find(said), std::string::npos) << r.output;
  }
  for (const std::string n : {"0", "99999999999999999999"}) {
    r = run(binary() + " embed --threads " + n + " --model x.h5");
    EXPECT_EQ(r.code, 2);
    EXPECT_EQ(r.output.rfind("sparsa: error: --threads: " + n + " threads: must be 1 to 1024", 0),
              0u)
        << r.output;
  }
  // A misspelled option or a value without its option is named, not hidden behind "--model is
  // required"; a command alone prints its usage; `-o -` (standard output) is refused.
  r = run(binary() + " embed --modle x.h5 -i " + lambda() + " -o " + t / "typo.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unexpected argument(s): --modle x.h5 (did you mean --model?"),
            std::string::npos)
      << r.output;
  // ... also where every required option is there (CLI11 said "arguments were not expected:
  // mean --pol"), with the likely option; a word like none is called a misspelled option.
  for (const auto& [typo, want] : std::vector<std::pair<std::string, std::string>>{
           {"--pol mean", "unexpected argument(s): --pol mean (did you mean --pool?)"},
           {"--rc-averge", "unexpected argument(s): --rc-averge (did you mean --rc-average?)"},
           {"--thread 2", "(did you mean --threads?)"},
           {"--zzzzzz", "unexpected argument(s): --zzzzzz (a misspelled option?)"}}) {
    r = run(embed_cmd(lambda(), t / "typo.h5", typo));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(want), std::string::npos) << typo << "\n" << r.output;
    EXPECT_FALSE(exists(t / "typo.h5"));
  }
  r = run(binary() + " embed -m " + lambda() + " " + lambda() + " -o " + t / "typo.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unexpected argument(s): " + lambda() + " (a value without its option?"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(exists(t / "typo.h5"));
  r = run(binary() + " embed -m " + lambda() + " -i " + lambda() + " " + t / "typo.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--input took '" + t / "typo.h5" + "' as an input too"),
            std::string::npos)
      << r.output;
  // An option of one value given twice: said plainly (CLI11: "At Most 1 required but received 2").
  r = run(embed_cmd(lambda(), t / "typo.h5", "--model " + tiny_model()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--model given 2 times; it takes one value: give it once"),
            std::string::npos)
      << r.output;
  // --split-min takes a count as regions write it (2k), and nothing that is not one.
  for (const std::string& bad : {"0", "1.5", "-3", "2x"}) {
    r = run(embed_cmd(lambda(), t / "typo.h5", "--split-min " + bad));
    EXPECT_EQ(r.code, 2) << bad << ": " << r.output;
    EXPECT_NE(r.output.find("must be a whole number of tokens, at least 1"), std::string::npos)
        << bad << ": " << r.output;
  }
  r = run(embed_cmd(lambda(), t / "typo.h5", "--split-min 2k"));
  EXPECT_EQ(r.code, 0) << r.output;
  std::filesystem::remove(t / "typo.h5");
  // An option at the end of the line with no value: named, with the form it takes.
  for (const std::string& opt : {"--pool", "--threads"}) {
    r = run(embed_cmd(lambda(), t / "typo.h5", opt));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("sparsa: error: " + opt + " needs a value after it (" + opt + " VALUE"),
              std::string::npos)
        << r.output;
  }
  EXPECT_FALSE(exists(t / "typo.h5"));
  r = run(binary() + " embed -m " + lambda() + " -o embed");  // the command's name as a value
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--input is required"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("-i,--input"), std::string::npos) << r.output;  // no usage
  r = run(binary() + " embed");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("Usage: sparsa embed [OPTIONS]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--model is required"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("-i,--input"), std::string::npos) << r.output;
  for (const std::string& cmd :
       {binary() + " embed -m " + lambda() + " -i " + lambda() + " -o -",
        binary() + " init -c " + source_dir() + "/configs/dna-tiny.toml -o -"}) {
    r = run("cd " + t.str() + " && " + cmd);
    EXPECT_EQ(r.code, 2) << cmd << "\n" << r.output;
    EXPECT_NE(r.output.find("--output -: sparsa writes HDF5, which cannot go to standard output"),
              std::string::npos)
        << r.output;
    EXPECT_FALSE(exists(t / "-"));
  }
  r = run(binary() + " init --help");
  EXPECT_NE(r.output.find("Example: sparsa init --config configs/dna-tiny.toml"),
            std::string::npos);
  r = run(binary() + " inspect --help");
  EXPECT_NE(r.output.find("Exit status: 0 for a checkpoint or a complete embeddings file"),
            std::string::npos);
}

TEST(Cli, ThreadsRangeAndProgressOfManyReads) {
  TempDir t;
  // --threads outside 1..1024 is a usage error (0 was taken silently, 100000 crashed OpenMP).
  for (const char* n : {"0", "-3", "100000"})
    expect_failure(embed_cmd(lambda(), t / "o.h5", std::string("--threads ") + n), t / "o.h5",
                   "--threads");
  EXPECT_FALSE(exists(t / "o.h5.parts"));
  // So is OMP_NUM_THREADS outside it (3000 started 3001 threads; 0 was ignored); a list's first
  // item counts, and --threads wins over it.
  for (const char* n : {"0", "3000", "two", "4x"})
    expect_failure(std::string("OMP_NUM_THREADS=") + n + " " + embed_cmd(lambda(), t / "o.h5"),
                   t / "o.h5", std::string("OMP_NUM_THREADS=") + n + ": not a number of threads");
  // SPARSA_COMM_TIMEOUT read by atof made "abc" a 1-second watchdog that killed healthy jobs.
  for (const char* v : {"abc", "30m", "0.5"})
    expect_failure(std::string("SPARSA_COMM_TIMEOUT=") + v + " " + embed_cmd(lambda(), t / "o.h5"),
                   t / "o.h5",
                   std::string("SPARSA_COMM_TIMEOUT=") + v + ": not a number of seconds");
  auto ok = run("OMP_NUM_THREADS=' +2 ,1' " + embed_cmd(lambda(), t / "a.h5"));
  EXPECT_EQ(ok.code, 0) << ok.output;
  ok = run("OMP_NUM_THREADS=3000 " + embed_cmd(lambda(), t / "b.h5", "--threads 2"));
  EXPECT_EQ(ok.code, 0) << ok.output;
  // 300 short reads: a few progress lines (rate-limited), not two per read; the summary last.
  std::string fq;
  uint64_t s = 5;
  for (int i = 0; i < 300; ++i) {
    fq += "@read" + std::to_string(i) + "\n";
    for (int j = 0; j < 150; ++j) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      fq += "ACGT"[(s >> 33) & 3];
    }
    fq += "\n+\n" + std::string(150, 'I') + "\n";
  }
  write_file(t / "reads.fq", fq);
  auto r = run(binary() + " embed --threads 1 --pool mean --model " + tiny_model() + " --input " +
               t / "reads.fq" + " --output " + t / "reads.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_LT(std::count(r.output.begin(), r.output.end(), '\n'), 12) << r.output;
  EXPECT_NE(r.output.find("done: 300 records"), std::string::npos) << r.output;
  // The free-space estimate counts the records (it counted one row per input file): at least the
  // final file (it covers the journal too), at most a few times it.
  const size_t at = r.output.find("output about ");
  ASSERT_NE(at, std::string::npos) << r.output;
  double est = std::stod(r.output.substr(at + 13));
  const std::string unit = r.output.substr(r.output.find(' ', at + 13) + 1, 3);
  est *= unit == "GiB" ? 1073741824.0 : unit == "MiB" ? 1048576.0 : unit == "KiB" ? 1024.0 : 1.0;
  const double got = (double)std::filesystem::file_size(t / "reads.h5");
  EXPECT_GE(est, got) << r.output;
  EXPECT_LE(est, 8 * got) << r.output;
}

// One input given twice (by two paths) with a region: the error names the input given twice, not
// "record 'chr1' is in both g.fa and g.fa" after a warning that said the same file twice.
TEST(Cli, InputGivenTwiceWithARegionIsSaidSo) {
  TempDir t;
  write_file(t / "g.fa", ">chr1\nACGTACGTACGT\n");
  const std::string cmd = "cd " + t.str() + " && " + binary() + " embed -q --threads 1 --model " +
                          tiny_model() + " -i g.fa -i ./g.fa -r chr1:1-10 -o o.h5";
  expect_failure(cmd, t / "o.h5", "input ./g.fa is given twice (as --input 1 and 2)");
  EXPECT_EQ(run(cmd).output.find("embed them in separate runs"), std::string::npos);
}

// Regions of one input beside a plain-gzip input that no region names: the gzip file (which
// faidx cannot index) is warned about as adding nothing, not an error that stops the run; a
// region naming one of its records gets the bgzip advice.
TEST(Cli, RegionsBesideAPlainGzipInputTheyDoNotName) {
  TempDir t;
  write_file(t / "g.fa", ">chr1\nACGTACGTACGTACGT\n");
  write_file(t / "o.fa", ">other\nACGTAAAA\n");
  ASSERT_EQ(run("gzip '" + t / "o.fa" + "'").code, 0);
  auto cmd = [&](const std::string& region, const std::string& out) {
    return binary() + " embed --threads 1 --model " + tiny_model() + " -i " + t / "g.fa" + " -i " +
           t / "o.fa.gz" + " -r " + region + " -o " + out;
  };
  auto r = run(cmd("chr1:1-10", t / "a.h5"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("o.fa.gz: no region names one of its records"), std::string::npos)
      << r.output;
  EXPECT_EQ(h5::File::open_read(t / "a.h5").list("/records").size(), 1u);
  expect_failure(cmd("other:1-4", t / "b.h5"), t / "b.h5",
                 "is gzip-compressed but not bgzip-compressed");
}

// The output-size estimate charges a token a base: the same reads as FASTQ (a quality line as long
// as each read) and as FASTA with long names estimate alike. Charged as text, a FASTQ's estimate
// was twice the FASTA's, and runs that fit on the disk were refused.
TEST(Cli, OutputEstimateCountsBasesNotQualitiesOrNames) {
  TempDir t;
  std::string fa, fq;
  uint64_t s = 9;
  for (int i = 0; i < 40; ++i) {
    std::string seq;
    for (int j = 0; j < 1000; ++j) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      seq += "ACGT"[(s >> 33) & 3];
    }
    fa += ">read" + std::to_string(i) + " " + std::string(300, 'd') + "\n" + seq + "\n";
    fq += "@read" + std::to_string(i) + "\n" + seq + "\n+\n" + std::string(1000, 'I') + "\n";
  }
  write_file(t / "r.fa", fa);
  write_file(t / "r.fq", fq);
  auto estimate = [&](const std::string& in, const std::string& out) {
    auto r = run(binary() + " embed --threads 1 --pool none --dtype f32 --model " + tiny_model() +
                 " --input " + in + " --output " + out);
    EXPECT_EQ(r.code, 0) << r.output;
    const size_t at = r.output.find("output about ");
    if (at == std::string::npos) return -1.0;
    double est = std::stod(r.output.substr(at + 13));
    const std::string unit = r.output.substr(r.output.find(' ', at + 13) + 1, 3);
    return est * (unit == "GiB"   ? 1073741824.0
                  : unit == "MiB" ? 1048576.0
                  : unit == "KiB" ? 1024.0
                                  : 1.0);
  };
  const double a = estimate(t / "r.fa", t / "a.h5"), q = estimate(t / "r.fq", t / "q.h5");
  EXPECT_NEAR(q, a, 0.02 * a);
  // the journal and the final file: about twice the output, not four times
  EXPECT_GE(q, (double)std::filesystem::file_size(t / "q.h5"));
  EXPECT_LE(q, 2.5 * (double)std::filesystem::file_size(t / "q.h5"));
}

TEST(Cli, InitIsDeterministicAndSeedMatters) {
  TempDir t;
  for (auto [name, seed] : {std::pair{"a.h5", 5}, {"b.h5", 5}, {"c.h5", 6}}) {
    // A second apart: the file holds no creation times (HDF5 keeps them unless told not to).
    if (std::string(name) == "b.h5") std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    auto r = run(binary() + " init --config " + tiny_config() + " --output " + t / name +
                 " --seed " + std::to_string(seed));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  // The same seed and config give the same bytes, so the same model_sha256 in every output.
  EXPECT_EQ(read_file(t / "a.h5"), read_file(t / "b.h5"));
  auto a = sparsa::load_checkpoint(t / "a.h5"), b = sparsa::load_checkpoint(t / "b.h5"),
       c = sparsa::load_checkpoint(t / "c.h5");
  EXPECT_EQ(a.layers[1].wq, b.layers[1].wq);
  EXPECT_EQ(a.embed[0], b.embed[0]);
  EXPECT_NE(a.layers[1].wq, c.layers[1].wq);
  EXPECT_EQ(a.seed, "5");  // the checkpoint's seed attribute: how to make it again
  EXPECT_EQ(c.seed, "6");
  EXPECT_EQ(h5::File::open_read(t / "c.h5").attr_string("/", "seed"), "6");
  // Seeds are whole numbers of 64 bits: no wrap-around of -1, no silent clamping of larger ones
  // (two different seeds would give the same model); leading zeros are the same number.
  for (const char* bad : {"-1", "18446744073709551616", "99999999999999999999999", "1.5", "x"}) {
    auto r = run(binary() + " init --config " + tiny_config() + " --output " + t / "bad.h5" +
                 " --seed " + bad);
    EXPECT_EQ(r.code, 2) << bad << ": " << r.output;
    EXPECT_NE(r.output.find("whole number from 0 to 18446744073709551615"), std::string::npos)
        << r.output;
    EXPECT_FALSE(exists(t / "bad.h5"));
  }
  for (const char* ok : {"18446744073709551615", "010", "005"}) {  // decimal: 010 is ten
    auto r = run(binary() + " init --config " + tiny_config() + " --output " + t / "ok.h5" +
                 " --force --seed " + ok);
    EXPECT_EQ(r.code, 0) << ok << ": " << r.output;
  }
  EXPECT_EQ(sparsa::load_checkpoint(t / "ok.h5").layers[1].wq, a.layers[1].wq);  // 005 is 5
  auto r10 = run(binary() + " init --config " + tiny_config() + " --output " + t / "ten.h5" +
                 " --seed 010");
  EXPECT_NE(r10.output.find("seed 10)"), std::string::npos) << r10.output;  // not octal 8
  // -q: the same file, no line.
  auto rq = run(binary() + " init -q --config " + tiny_config() + " --output " + t / "q.h5" +
                " --seed 5");
  EXPECT_EQ(rq.code, 0) << rq.output;
  EXPECT_EQ(rq.output, "");
  EXPECT_EQ(read_file(t / "q.h5"), read_file(t / "a.h5"));
  // An existing file is not replaced without --force.
  auto r = run(binary() + " init --config " + tiny_config() + " --output " + t / "a.h5");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--force"), std::string::npos);
}

// A --config that is not there: the error names the presets' folder (beside the binary: the
// checkout's configs/ for a build folder in it, share/sparsa/configs once installed).
TEST(Cli, MissingConfigNamesThePresets) {
  TempDir t;
  const auto presets =
      (std::filesystem::canonical(binary()).parent_path().parent_path() / "configs")
          .lexically_normal();
  if (!std::filesystem::exists(presets / "dna-tiny.toml"))
    GTEST_SKIP() << "a build folder outside the checkout: no presets beside the binary";
  auto r = run(binary() + " init --config " + t / "dna-tiny.toml --output " + t / "m.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("File does not exist: " + t / "dna-tiny.toml (the presets: " +
                          presets.string() + "/dna-tiny.toml, dna-base.toml, ts-base.toml)"),
            std::string::npos)
      << r.output;
  r = run(binary() + " init --help");
  EXPECT_NE(r.output.find("this one's: "), std::string::npos) << r.output;
}

TEST(Cli, InitRefusesBadConfigs) {
  TempDir t;
  const std::string base = "[model]\nkind = \"dna\"\nd_model = 32\nn_heads = 4\n";
  struct Case {
    std::string text, needle;
  } cases[] = {
      {base + "colour = 3\n", "unknown key 'colour'\n"},  // (nothing near it: no hint)
      {base + "windw = 3\n", "unknown key 'windw'; did you mean 'window'?"},
      {"[model]\nkind = \"dna\"\nd_model = 30\nn_heads = 4\n", "divisible"},
      {base + "window = -1\n", "window"},
      {base + "global_min = -1\n", "global_min"},
      {base + "d_ff = \"big\"\n", "d_ff"},
      {"[model]\nkind = \"protein\"\n", "kind"},
      {"[model\nkind = 1", "cfg.toml"},
      {base + "[extra]\n", "unknown table"},
      {base + "ts_bins = 12\n", "time-series"},
      {base + "d_ff = 2000000\n", "'d_ff': must be <= 1048576"},
      {base + "n_layers = 5000\n", "'n_layers': must be <= 4096"},
  };
  for (const auto& c : cases) {
    write_file(t / "cfg.toml", c.text);
    auto r = run(binary() + " init --config " + t / "cfg.toml" + " --output " + t / "m.h5");
    EXPECT_EQ(r.code, 2) << c.text << r.output;
    EXPECT_FALSE(exists(t / "m.h5"));
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.text << "\n" << r.output;
  }
  // A folder as the output is said to be one at once, as embed says it (not "pass --force").
  const std::string config = source_dir() + "/configs/dna-tiny.toml";
  std::filesystem::create_directory(t / "dd");
  auto r = run(binary() + " init --config " + config + " --output " + t / "dd");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("is a folder"), std::string::npos) << r.output;
}

// An exported checkpoint with objects the model does not use (a PyTorch Linear's bias, a head):
// embed warns naming them and runs; inspect lists them with the file's SHA-256 (an embeddings
// file's model_sha256) and how it was made.
TEST(Cli, CheckpointObjectsTheModelDoesNotUseAreNamed) {
  TempDir t;
  std::filesystem::copy_file(tiny_model(), t / "m.h5");
  {
    auto f = h5::File::open_rw(t / "m.h5");
    const std::vector<float> bias(64, 0.5f);
    f.write_f32("/layers/0/bq", {64}, bias.data());
    f.write_f32("/head", {64}, bias.data());
  }
  auto r = run(binary() + " embed -q --model " + t / "m.h5" + " --input " + lambda() +
               " --pool mean --output " + t / "e.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + t / "m.h5" +
                          " holds objects the model does not use, ignored: /head, /layers/0/bq"),
            std::string::npos)
      << r.output;
  r = run(binary() + " inspect " + t / "m.h5");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("not used by the model (ignored): /head /layers/0/bq"), std::string::npos)
      << r.output;
  EXPECT_NE(
      r.output.find("sha256 " + h5::File::open_read(t / "e.h5").attr_string("/", "model_sha256") +
                    "; seed "),
      std::string::npos)
      << r.output;
  r = run(binary() + " inspect " + tiny_model());
  EXPECT_EQ(r.output.find("not used by the model"), std::string::npos) << r.output;
  // An exporter's own integer seed is read as its number, not refused.
  h5::File::open_rw(t / "m.h5").set_attr("/", "seed", int64_t{42});
  r = run(binary() + " inspect " + t / "m.h5");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("; seed 42\n"), std::string::npos) << r.output;
}

// -o /dev/stdout --force with standard output sent to a file: the path is /dev's link (to
// /proc/self/fd/1, to the file), which --force would have replaced, as root, with an HDF5 file.
// Checked in-process, standard output pointed at a file for the call: nothing is written.
TEST(Cli, OutputLinkToAStreamIsRefused) {
  TempDir t;
  fflush(stdout);
  const int saved = dup(1);
  ASSERT_GE(saved, 0);
  const int fd = ::open((t / "so.h5").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(dup2(fd, 1), 1);
  ::close(fd);
  std::string msg;
  bool taken = false;
  for (const char* p : {"/dev/stdout", "/proc/self/fd/1"}) {
    try {
      taken = sparsa::output_path_taken(p, "--output");
    } catch (const sparsa::ConfigError& e) {
      msg += std::string(e.what()) + "\n";
    }
  }
  dup2(saved, 1);
  ::close(saved);
  EXPECT_FALSE(taken);
  EXPECT_NE(msg.find("--output /dev/stdout is a link to a stream (standard output or error?)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("--output /proc/self/fd/1 is a link to a stream"), std::string::npos) << msg;
}

// Standard error closed by the caller (`2>&-`): the journal's LOCK, the first file a run
// opens, took descriptor 2, and the run's messages were written into it.
TEST(Cli, ClosedStandardErrorIsNotAFileOfTheRun) {
  TempDir t;
  write_file(t / "in.fa", random_fasta(2, 300) + ">bad\nACXT\n");
  const std::string out = t / "o.h5";
  auto r = run("sh -c 'exec 2>&-; exec " + embed_cmd(t / "in.fa", out) + "'");
  EXPECT_EQ(r.code, 1) << r.output;
  ASSERT_TRUE(exists(out + ".parts/LOCK")) << r.output;
  EXPECT_EQ(read_file(out + ".parts/LOCK").find("error"), std::string::npos)
      << read_file(out + ".parts/LOCK");
}

// A --resume on another kind of node (other OpenBLAS kernels; here forced) continues the
// journal, says that its records were computed otherwise, and `compute` names both.
TEST(Cli, ResumeWithOtherKernelsIsSaid) {
  TempDir t;
  if (!prescott_kernels_differ()) GTEST_SKIP() << "this CPU's OpenBLAS kernels are Prescott's";
  write_file(t / "in.fa", random_fasta(2, 300) + ">bad\nACXT\n");
  const std::string out = t / "o.h5";
  auto r = run(embed_cmd(t / "in.fa", out));
  ASSERT_EQ(r.code, 1) << r.output;
  // Another kind resumes (and stops again at the bad record): said, and kept in the journal.
  r = run("OPENBLAS_CORETYPE=Prescott " + embed_cmd(t / "in.fa", out, "--resume"));
  ASSERT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("warning: --resume: the journal's records were computed with 'cpu fp32, "
                          "OpenBLAS "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("; this run adds 'cpu fp32, OpenBLAS "), std::string::npos) << r.output;
  // The first kind again: the journal holds it already, nothing said; each kind named once.
  r = run(embed_cmd(t / "in.fa", out, "--resume --invalid-as-n"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("computed with"), std::string::npos) << r.output;
  const std::string compute = h5::File::open_read(out).attr_string("/", "compute");
  EXPECT_EQ(count_in(compute, "cpu fp32, OpenBLAS "), 2u) << compute;
  EXPECT_NE(compute.find("; cpu fp32, OpenBLAS "), std::string::npos) << compute;
  EXPECT_GT(compute.find("Prescott"), compute.find("; ")) << compute;
  // The same kernels again: nothing said.
  r = run(embed_cmd(t / "in.fa", t / "p.h5"));
  r = run(embed_cmd(t / "in.fa", t / "p.h5", "--resume --invalid-as-n"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("computed with"), std::string::npos) << r.output;
  EXPECT_EQ(h5::File::open_read(t / "p.h5").attr_string("/", "compute").find(';'),
            std::string::npos);
}

TEST(Cli, EmbedLambdaEndToEnd) {
  TempDir t;
  auto r = run(embed_cmd(lambda(), t / "e.h5", "--dtype f32"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto f = h5::File::open_read(t / "e.h5");
  EXPECT_EQ(f.attr_string("/", "format"), "sparsa-embeddings");
  EXPECT_EQ(f.attr_int("/", "format_version"), 1);
  EXPECT_EQ(f.attr_int("/", "complete"), 1);
  EXPECT_EQ(f.attr_string("/", "pool"), "none");
  EXPECT_EQ(f.attr_string("/", "dtype"), "float32");
  EXPECT_EQ(f.attr_string("/", "model_sha256").size(), 64u);
  EXPECT_NE(f.attr_string("/", "model_config").find("d_model = 64"), std::string::npos);
  EXPECT_NE(f.attr_string("/", "command_line").find("embed"), std::string::npos);
  // The build (the version and, in a git checkout, its commit), where the command ran, and
  // what computed: a file says how to make it again.
  // (In a git checkout: the commit the sources are at, as the build saw it.)
  const std::string version = f.attr_string("/", "sparsa_version");
  EXPECT_EQ(version.rfind("0.1.0", 0), 0u);
  if (std::filesystem::exists(source_dir() + "/.git"))
    EXPECT_TRUE(std::regex_match(version, std::regex("0\\.1\\.0\\+[0-9a-f]{12}(\\.dirty)?")))
        << version;
  EXPECT_EQ(f.attr_string("/", "working_directory"), std::filesystem::current_path().string());
  EXPECT_EQ(f.attr_string("/", "compute").rfind("cpu fp32, OpenBLAS ", 0), 0u)
      << f.attr_string("/", "compute");
  const std::string g = first_key(f);
  EXPECT_EQ(f.attr_string(g, "name"), "gi|9626243|ref|NC_001416.1|");
  EXPECT_EQ(f.attr_string(g, "kind"), "dna");
  EXPECT_EQ(f.attr_int(g, "length"), 48502);
  EXPECT_EQ(f.attr_string(g, "region"), "");
  EXPECT_EQ(f.attr_string(g, "strand"), "+");
  EXPECT_EQ(f.shape(g + "/embedding"), (std::vector<int64_t>{48502, 64}));
  // G = min(128, n, max(1, ceil(48502 / 1024))) = 48 per layer, ascending, in range.
  EXPECT_EQ(f.shape(g + "/global_positions"), (std::vector<int64_t>{2, 48}));
  auto gp = f.read_i64(g + "/global_positions");
  for (int l = 0; l < 2; ++l)
    for (int j = 1; j < 48; ++j) EXPECT_LT(gp[l * 48 + j - 1], gp[l * 48 + j]);
  auto bs = f.read_i64(g + "/bin_start"), be = f.read_i64(g + "/bin_end");
  EXPECT_EQ(bs[0], 0);
  EXPECT_EQ(be[48501], 48502);
  // Final RMSNorm with unit gain: every row has mean square 1.
  auto e = f.read_f32(g + "/embedding");
  double ss = 0;
  for (int j = 0; j < 64; ++j) ss += e[1000 * 64 + j] * e[1000 * 64 + j];
  EXPECT_NEAR(ss / 64, 1.0, 1e-3);
  r = run(binary() + " inspect " + t / "e.h5");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("length=48502"), std::string::npos) << r.output;
}

TEST(Cli, PoolingAndDtype) {
  TempDir t;
  ASSERT_EQ(run(embed_cmd(lambda(), t / "none.h5", "--dtype f32")).code, 0);
  ASSERT_EQ(run(embed_cmd(lambda(), t / "bin.h5", "--dtype f32 --pool bin:1000")).code, 0);
  ASSERT_EQ(run(embed_cmd(lambda(), t / "mean.h5", "--dtype f32 --pool mean")).code, 0);
  ASSERT_EQ(run(embed_cmd(lambda(), t / "f16.h5")).code, 0);
  auto none = embedding(t / "none.h5"), bin = embedding(t / "bin.h5"),
       mean = embedding(t / "mean.h5"), half = embedding(t / "f16.h5");
  ASSERT_EQ(bin.size(), 49u * 64);  // 48 full bins + a short one of 502 tokens
  ASSERT_EQ(mean.size(), 64u);
  for (int j = 0; j < 64; j += 7) {
    double b0 = 0, last = 0, all = 0;
    for (int i = 0; i < 1000; ++i) b0 += none[i * 64 + j];
    for (int i = 48000; i < 48502; ++i) last += none[i * 64 + j];
    for (int i = 0; i < 48502; ++i) all += none[i * 64 + j];
    EXPECT_NEAR(bin[j], b0 / 1000, 1e-5);
    EXPECT_NEAR(bin[48 * 64 + j], last / 502, 1e-5);
    EXPECT_NEAR(mean[j], all / 48502, 1e-5);
  }
  auto f = h5::File::open_read(t / "bin.h5");
  auto be = f.read_i64(first_key(f) + "/bin_end");
  EXPECT_EQ(be[0], 1000);
  EXPECT_EQ(be[48], 48502);
  // float16 rows are the float32 rows rounded to half precision (to nearest even, as C's cast),
  // all 3.1 M values: several blocks of the parallel conversion, and its vector path where the
  // CPU has F16C.
  ASSERT_EQ(half.size(), none.size());
  size_t wrong = 0;
  for (size_t i = 0; i < none.size(); ++i) wrong += half[i] != (float)(_Float16)none[i];
  EXPECT_EQ(wrong, 0u);
  EXPECT_EQ(h5::File::open_read(t / "f16.h5").attr_string("/", "dtype"), "float16");
  expect_failure(embed_cmd(lambda(), t / "x.h5", "--pool bin:0"), t / "x.h5", "bin:N");
  expect_failure(embed_cmd(lambda(), t / "x.h5", "--pool bin:+8"), t / "x.h5", "bin:N");
  expect_failure(embed_cmd(lambda(), t / "x.h5", "--pool bin:1.5"), t / "x.h5", "bin:N");
  // N written as regions write counts; the file says it in digits.
  ASSERT_EQ(run(embed_cmd(lambda(), t / "k.h5", "--pool bin:2k")).code, 0);
  EXPECT_EQ(h5::File::open_read(t / "k.h5").attr_string("/", "pool"), "bin:2000");
  EXPECT_EQ(h5::File::open_read(t / "k.h5")
                .shape(first_key(h5::File::open_read(t / "k.h5")) + "/embedding")[0],
            25);  // ceil(48,502 / 2,000)
  // Datasets of up to 16 KB are compact (their data in the object header: half a short read's
  // bytes), larger ones chunked.
  auto layout = [](const std::filesystem::path& p, const std::string& name) {
    auto f = h5::File::open_read(p);
    const std::string obj = first_key(f) + "/" + name;
    const hid_t d = H5Dopen2(f.id(), obj.c_str(), H5P_DEFAULT);
    const hid_t pl = H5Dget_create_plist(d);
    const H5D_layout_t l = H5Pget_layout(pl);
    H5Pclose(pl);
    H5Dclose(d);
    return l;
  };
  for (const char* name : {"embedding", "bin_start", "bin_end", "global_positions"})
    EXPECT_EQ(layout(t / "mean.h5", name), H5D_COMPACT) << name;
  EXPECT_EQ(layout(t / "bin.h5", "embedding"), H5D_COMPACT);  // 49 rows of 64 floats: 12.5 KB
  EXPECT_EQ(layout(t / "none.h5", "embedding"), H5D_CHUNKED);
}

TEST(Cli, TwoRunsAreIdentical) {
  TempDir t;
  ASSERT_EQ(run(embed_cmd(lambda(), t / "a.h5", "--dtype f32")).code, 0);
  ASSERT_EQ(run(embed_cmd(lambda(), t / "b.h5", "--dtype f32 --threads 1")).code, 0);
  EXPECT_EQ(embedding(t / "a.h5"), embedding(t / "b.h5"));
}

// Short records go side by side (a record a thread) on the CPU backend; longer ones over all
// threads. Either way every record gets the bits it gets one record after another.
TEST(CliSlow, ShortRecordsSideBySideGiveTheSameBits) {
  TempDir t;
  // Longer than a short record in the middle: all threads, its own part.
  write_file(t / "mix.fa", random_fasta(150, 90, 21, "a") + random_fasta(1, 20000, 22, "b") +
                               random_fasta(40, 700, 23, "c"));
  for (const std::string opts : {"--pool mean", "--pool none --rc-average --dtype f32"}) {
    SCOPED_TRACE(opts);
    ASSERT_EQ(run(embed_cmd(t / "mix.fa", t / "side.h5", "--threads 2 --force " + opts)).code, 0);
    {
      ScopedEnv one_by_one("SPARSA_SIDE_BY_SIDE", "0");
      ASSERT_EQ(run(embed_cmd(t / "mix.fa", t / "one.h5", "--threads 2 --force " + opts)).code, 0);
    }
    expect_same_contents(t / "side.h5", t / "one.h5");
  }
  // Fewer records than threads: 3 at once, each over 2 threads (nested), longest first
  write_file(t / "few.fa", random_fasta(1, 900, 24, "f") + random_fasta(2, 3000, 25, "g"));
  ASSERT_EQ(run(embed_cmd(t / "few.fa", t / "fside.h5", "--threads 6 --pool none")).code, 0);
  {
    ScopedEnv one_by_one("SPARSA_SIDE_BY_SIDE", "0");
    ASSERT_EQ(run(embed_cmd(t / "few.fa", t / "fone.h5", "--threads 6 --pool none")).code, 0);
  }
  expect_same_contents(t / "fside.h5", t / "fone.h5");
  ScopedEnv bad("SPARSA_SIDE_BY_SIDE", "many");
  expect_failure(embed_cmd(t / "mix.fa", t / "bad.h5"), t / "bad.h5", "SPARSA_SIDE_BY_SIDE=many");
  EXPECT_FALSE(exists(t / "bad.h5.parts")) << "checked after the journal was made";
}

TEST(Cli, RcAverageIsStrandSymmetric) {
  // out(S)[i] = (f(S)[i] + f(rc S)[n-1-i]) / 2, so embedding rc(S) gives the same rows reversed.
  TempDir t;
  const std::string seq = "ACGTTGCANNACGGGTTTAAACCCGTGTACGATCGATCGGGCTAGCTAGGACTTT";
  std::string rc;
  for (auto it = seq.rbegin(); it != seq.rend(); ++it)
    rc += *it == 'A' ? 'T' : *it == 'T' ? 'A' : *it == 'C' ? 'G' : *it == 'G' ? 'C' : 'N';
  write_file(t / "s.fa", ">s\n" + seq + "\n");
  write_file(t / "r.fa", ">r\n" + rc + "\n");
  ASSERT_EQ(run(embed_cmd(t / "s.fa", t / "s.h5", "--dtype f32 --rc-average")).code, 0);
  ASSERT_EQ(run(embed_cmd(t / "r.fa", t / "r.h5", "--dtype f32 --rc-average")).code, 0);
  ASSERT_EQ(run(embed_cmd(t / "s.fa", t / "p.h5", "--dtype f32")).code, 0);
  auto s = embedding(t / "s.h5"), r = embedding(t / "r.h5"), plain = embedding(t / "p.h5");
  const size_t n = seq.size();
  for (size_t i = 0; i < n; ++i)
    for (int j = 0; j < 64; ++j) ASSERT_EQ(s[i * 64 + j], r[(n - 1 - i) * 64 + j]) << i;
  EXPECT_NE(s, plain);
  auto f = h5::File::open_read(t / "s.h5");
  EXPECT_EQ(f.attr_string(first_key(f), "strand"), "rc-average");
}

TEST(Cli, CrlfEqualsLf) {
  TempDir t;
  write_file(t / "lf.fa", ">a desc here\nACGTACGTNN\nGGCCTTAA\n>b\nTTTT\n");
  write_file(t / "crlf.fa", ">a desc here\r\nACGTACGTNN\r\nGGCCTTAA\r\n>b\r\nTTTT\r\n");
  ASSERT_EQ(run(embed_cmd(t / "lf.fa", t / "lf.h5", "--dtype f32")).code, 0);
  ASSERT_EQ(run(embed_cmd(t / "crlf.fa", t / "crlf.h5", "--dtype f32")).code, 0);
  for (int rec = 0; rec < 2; ++rec)
    EXPECT_EQ(embedding(t / "lf.h5", rec), embedding(t / "crlf.h5", rec));
  auto f = h5::File::open_read(t / "crlf.h5");
  EXPECT_EQ(f.attr_string(first_key(f), "description"), "desc here");
}

TEST(Cli, BadDnaInputsFailCleanly) {
  TempDir t;
  int case_no = 0;
  auto fresh = [&] { return t / ("out" + std::to_string(++case_no) + ".h5"); };
  std::string out = fresh();
  write_file(t / "inv.fa", ">chr1 x\nACGT\nACXT\n");
  expect_failure(embed_cmd(t / "inv.fa", out), out, "position 7");
  expect_failure(embed_cmd(t / "inv.fa", out), out, "chr1");
  expect_failure(embed_cmd(t / "inv.fa", out), out, t / "inv.fa");
  EXPECT_FALSE(exists(out + ".parts")) << "an empty journal was left behind";
  // --invalid-as-n accepts it, and the record says how many characters it read as N.
  EXPECT_EQ(run(embed_cmd(t / "inv.fa", out, "--invalid-as-n")).code, 0);
  {
    auto f = h5::File::open_read(out);
    EXPECT_EQ(f.attr_int(first_key(f), "invalid_as_n"), 1);
  }
  // Both of the error's hints at once: the record before the bad one is kept by the journal, and
  // --resume --invalid-as-n continues it (records finished without the flag held no invalid
  // character); the result is the run with the flag from the start. The other way is refused.
  write_file(t / "inv2.fa", ">ok\nACGTACGT\n>bad\nACXT\n");
  const std::string out2 = fresh(), whole = fresh();
  auto r = run("SPARSA_GROUP_SECONDS=0 " + embed_cmd(t / "inv2.fa", out2));
  ASSERT_EQ(r.code, 1) << r.output;
  ASSERT_NE(r.output.find("1 finished record is kept"), std::string::npos) << r.output;
  r = run(embed_cmd(t / "inv2.fa", out2, "--resume --invalid-as-n"));
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_EQ(run(embed_cmd(t / "inv2.fa", whole, "--invalid-as-n")).code, 0);
  EXPECT_EQ(embedding(out2, 0), embedding(whole, 0));
  EXPECT_EQ(embedding(out2, 1), embedding(whole, 1));
  // The same after a --force run that set an old output aside (its check compared the journal's
  // run with this one before the flag was taken as the same run).
  const std::string out4 = fresh();
  write_file(out4, "an old result");
  r = run("SPARSA_GROUP_SECONDS=0 " + embed_cmd(t / "inv2.fa", out4, "--force"));
  ASSERT_EQ(r.code, 1) << r.output;
  r = run(embed_cmd(t / "inv2.fa", out4, "--resume --invalid-as-n"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(embedding(out4, 1), embedding(whole, 1));
  write_file(t / "inv3.fa", ">ok\nACXT\n>empty\n>next\nACGT\n");
  const std::string out3 = fresh();
  r = run("SPARSA_GROUP_SECONDS=0 " + embed_cmd(t / "inv3.fa", out3, "--invalid-as-n"));
  ASSERT_EQ(r.code, 1) << r.output;
  r = run(embed_cmd(t / "inv3.fa", out3, "--resume"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("different run"), std::string::npos) << r.output;
  // A CSV after a FASTA is found before anything is embedded, not when its turn comes.
  write_file(t / "table.csv", "time,x\n1,2\n");
  out = fresh();
  expect_failure(binary() + " embed -q --model " + tiny_model() + " -i " + t / "inv.fa" + " -i " +
                     t / "table.csv" + " --invalid-as-n --output " + out,
                 out, "table.csv: line 1: not FASTA/FASTQ");
  EXPECT_FALSE(exists(out + ".parts"));
  write_file(t / "dup.fa", ">a\nACGT\n>a\nAC\n");
  out = fresh();
  expect_failure(embed_cmd(t / "dup.fa", out), out, "duplicate");
  write_file(t / "garbage.fa", std::string("\x00\x01\xff\xfe garbage", 12));
  out = fresh();
  expect_failure(embed_cmd(t / "garbage.fa", out), out, "garbage.fa");
  // Truncated gzip: the first half of the lambda genome's gzip stream.
  {
    std::ifstream in(lambda(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    write_file(t / "trunc.fa.gz", bytes.substr(0, bytes.size() / 2));
  }
  out = fresh();
  expect_failure(embed_cmd(t / "trunc.fa.gz", out), out, "trunc.fa.gz");
  out = fresh();
  expect_failure(embed_cmd(t / "missing.fa", out), out, "missing.fa");
  // An empty input, even the only one, is refused before the device and the journal are set up.
  write_file(t / "nothing.fa", "");
  out = fresh();
  expect_failure(embed_cmd(t / "nothing.fa", out), out, "nothing.fa: empty file");
  const auto quick = run(binary() + " embed --model " + tiny_model() + " --input " +
                         t / "nothing.fa" + " --output " + out);
  EXPECT_NE(quick.output.find("empty file"), std::string::npos) << quick.output;
  EXPECT_EQ(quick.output.find("device:"), std::string::npos) << quick.output;
  EXPECT_FALSE(exists(out + ".parts"));
  // A failure in a later record leaves nothing at the output either; the record that was
  // finished is kept in the journal, and the message says how to continue.
  write_file(t / "empty.fa", ">a\nACGT\n>b\n>c\nAC\n");
  out = fresh();
  expect_failure(embed_cmd(t / "empty.fa", out), out, "'b'");
  EXPECT_TRUE(exists(out + ".parts/000001.h5"));
  write_file(t / "late.fa", ">ok\nACGTACGT\n>bad\nACGT!\n");
  out = fresh();
  expect_failure(embed_cmd(t / "late.fa", out), out, "'bad'");
  expect_failure(embed_cmd(t / "late.fa", out, "--force"), out, "--resume");
}

TEST(Cli, OutOfMemoryNamesTheRecord) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan reserves terabytes of address space: a process under ulimit -v cannot "
                  "start";
#else
  // A record whose embedding cannot get its memory (dna-base's float32 residual stream alone is
  // 6,144,000,000 bytes for 3M tokens, and with the process's other mappings that passes the
  // 6,144,000,000-byte cap on the address space): exit 1, nothing at the output, and a message
  // naming the file, the record, its length and what to do. --pool mean keeps the output (and the
  // free-space check before the run) small.
  TempDir t;
  const std::string base = t / "base.h5";
  ASSERT_EQ(run(binary() + " init --config " + source_dir() + "/configs/dna-base.toml --output " +
                base + " --seed 1")
                .code,
            0);
  std::string fa = ">big long one\n";
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < 3000000; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    fa += "ACGT"[x & 3];
    if (i % 80 == 79) fa += '\n';
  }
  write_file(t / "big.fa", fa + "\n");
  const std::string out = t / "out.h5";
  const std::string cmd = "bash -c 'ulimit -v 6000000; " + binary() +
                          " embed -q --device cpu --pool mean --model " + base + " --input " +
                          t / "big.fa" + " --output " + out + "'";
  auto r = run(cmd);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".tmp"));
  for (const char* needle : {"out of memory", "record 'big'", "3000000 tokens", "big.fa"})
    EXPECT_NE(r.output.find(needle), std::string::npos) << needle << " not in:\n" << r.output;
#endif
}

// Under a tight address-space limit OpenBLAS's threads could not map their buffers and retried
// forever (a hang that SIGTERM did not end, even for --version); now the process runs with one
// BLAS thread there, and an embed whose CPU threads do not fit is refused, naming the limit.
TEST(Cli, TightAddressSpaceLimitIsRefusedNotHung) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan reserves terabytes of address space: a process under ulimit -v cannot "
                  "start";
#else
  TempDir t;
  auto limited = [&](long kb, const std::string& args) {
    return run("timeout -k 5 60 bash -c 'ulimit -v " + std::to_string(kb) + "; exec " + binary() +
               " " + args + "'");
  };
  auto r = limited(400000, "--version");
  EXPECT_EQ(r.code, 0) << r.output;
  const std::string model = t / "m.h5";
  ASSERT_EQ(run(binary() + " init -q --config " + tiny_config() + " --output " + model).code, 0);
  const std::string out = t / "out.h5";
  r = limited(1000000, "--threads 64 embed -q --device cpu --model " + model + " --input " +
                           lambda() + " --output " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("an address-space limit (ulimit -v) leaves this process"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("CPU backend's 64 threads need about"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("or use at most --threads"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".parts"));
  // With room for one thread it runs.
  r = limited(2000000, "--threads 1 embed -q --device cpu --model " + model + " --input " +
                           lambda() + " --output " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(exists(out));
#endif
}

// An output path that is a FIFO or a device is never replaced, --force or not (as root,
// `-o /dev/null --force` replaced /dev/null with an HDF5 file); a symbolic link to nothing counts
// as an existing output.
TEST(Cli, OutputThatIsNotAFileIsRefused) {
  TempDir t;
  ASSERT_EQ(run("mkfifo " + t / "fifo").code, 0);
  for (const std::string& cmd :
       {embed_cmd(lambda(), t / "fifo", "--force"),
        binary() + " init --config " + tiny_config() + " --output " + t / "fifo" + " --force"}) {
    auto r = run(cmd);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("is a FIFO (named pipe): sparsa writes its output as a new file"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(run("test -p " + t / "fifo").code, 0) << "the FIFO was replaced";
  }
  // A character device: /dev/null itself is the one every machine has; the check stops before
  // anything is written (the test never passes --force to it).
  auto r = run(embed_cmd(lambda(), "/dev/null"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("/dev/null is a character device"), std::string::npos) << r.output;
  ASSERT_EQ(run("ln -s " + t / "missing.h5" + " " + t / "link.h5").code, 0);
  r = run(embed_cmd(lambda(), t / "link.h5"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("already exists (a symbolic link to the missing"), std::string::npos)
      << r.output;
  r = run(binary() + " init --config " + tiny_config() + " --output " + t / "link.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  r = run(embed_cmd(lambda(), t / "link.h5", "--force"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(run("test -f " + t / "link.h5" + " && ! test -L " + t / "link.h5").code, 0);
  // OUT.tmp as a folder failed the run only after every record was embedded.
  std::filesystem::create_directory(t / "p.h5.tmp");
  r = run(embed_cmd(lambda(), t / "p.h5"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("p.h5.tmp exists and is not a file: sparsa writes the output there"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(exists(t / "p.h5"));
  EXPECT_FALSE(exists(t / "p.h5.parts"));
  EXPECT_TRUE(std::filesystem::is_directory(t / "p.h5.tmp"));
  // A user's file at OUT.tmp was deleted without --force: only an empty or HDF5 file there (what
  // a crashed run leaves) is sparsa's to replace; anything else is refused, kept, unless --force.
  write_file(t / "u.h5.tmp", "precious\n");
  r = run(embed_cmd(lambda(), t / "u.h5"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("u.h5.tmp exists and is not an HDF5 file"), std::string::npos)
      << r.output;
  EXPECT_EQ(read_file(t / "u.h5.tmp"), "precious\n");
  EXPECT_FALSE(exists(t / "u.h5"));
  r = run(binary() + " init -q --config " + tiny_config() + " --output " + t / "u.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(read_file(t / "u.h5.tmp"), "precious\n");
  r = run(embed_cmd(lambda(), t / "u.h5", "--force"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(exists(t / "u.h5.tmp"));
  // What a crashed run leaves: an output being assembled (a /records group, no attributes yet),
  // one cut short (HDF5's signature, then nothing HDF5 can open), an empty file.
  h5::File::create(t / "c.h5.tmp").create_group("/records");
  {
    const std::string whole = read_file(tiny_model());
    write_file(t / "s.h5.tmp", whole.substr(0, 600));
  }
  write_file(t / "e.h5.tmp", "");
  for (const char* out : {"c.h5", "s.h5", "e.h5"}) {
    r = run(embed_cmd(lambda(), t / out));
    EXPECT_EQ(r.code, 0) << out << ": " << r.output;
    EXPECT_FALSE(exists(t / (std::string(out) + ".tmp")));
  }
  // A user's own HDF5 file there (a checkpoint where an output is made, an output where a
  // checkpoint is) is kept unless --force.
  std::filesystem::copy_file(tiny_model(), t / "k.h5.tmp");
  r = run(embed_cmd(lambda(), t / "k.h5"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("k.h5.tmp is an HDF5 file that no sparsa run writes there"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(read_file(t / "k.h5.tmp"), read_file(tiny_model()));
  std::filesystem::copy_file(t / "c.h5", t / "m.h5.tmp");
  r = run(binary() + " init -q --config " + tiny_config() + " --output " + t / "m.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(read_file(t / "m.h5.tmp"), read_file(t / "c.h5"));
  std::filesystem::copy_file(tiny_model(), t / "n.h5.tmp");  // a crashed init's checkpoint
  r = run(binary() + " init -q --config " + tiny_config() + " --output " + t / "n.h5");
  EXPECT_EQ(r.code, 0) << r.output;
  r = run(embed_cmd(lambda(), t / "k.h5", "--force"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(exists(t / "k.h5.tmp"));
}

// A named FIFO where sparsa reads a small file waited for a writer forever, and SIGTERM could not
// stop it: refused (timeout 60 turns a hang into a failure). <(...) still works.
TEST(Cli, NamedFifosAreRefusedNotWaitedOn) {
  TempDir t;
  ASSERT_EQ(run("mkfifo " + t / "fifo").code, 0);
  auto r =
      run("timeout 60 " + binary() + " init --config " + t / "fifo" + " --output " + t / "m.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("is a FIFO (named pipe): opening it would wait"), std::string::npos)
      << r.output;
  r = run("timeout 60 " + binary() + " inspect " + t / "fifo");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("not a regular file"), std::string::npos) << r.output;
  r = run("timeout 60 " + embed_cmd(lambda(), t / "o.h5", "--regions " + t / "fifo"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("is a FIFO (named pipe)"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(t / "o.h5"));
  r = run("bash -c '" + binary() + " init --config <(cat " + tiny_config() + ") --output " +
          t / "p.h5" + "'");
  EXPECT_EQ(r.code, 0) << r.output;
}

TEST(Cli, ExistingOutputIsKept) {
  TempDir t;
  write_file(t / "keep.h5", "precious");
  auto r = run(embed_cmd(lambda(), t / "keep.h5"));
  EXPECT_EQ(r.code, 2);
  std::ifstream in(t / "keep.h5");
  std::string s((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(s, "precious");
  // Never the input itself, even with --force.
  write_file(t / "in.fa", ">a\nACGT\n");
  r = run(embed_cmd(t / "in.fa", t / "in.fa", "--force"));
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(exists(t / "in.fa"));
  // A user's own OUT.old is not sparsa's business (it sets the old output aside in its journal).
  write_file(t / "keep.h5.old", "mine");
  r = run(embed_cmd(lambda(), t / "keep.h5", "--force"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(exists(t / "keep.h5.parts")) << r.output;  // set aside, gone with the journal
  EXPECT_EQ(read_file(t / "keep.h5.old"), "mine");
  // --force replaces: a run that then fails leaves nothing at the path, not the old result, but
  // the old file is kept in the journal folder, and the message says where and how to get it.
  const std::string result = read_file(t / "keep.h5");
  const std::string prev = t / "keep.h5.parts/PREVIOUS_OUTPUT";
  write_file(t / "bad.fa", ">a\nAC!GT\n");
  r = run(embed_cmd(t / "bad.fa", t / "keep.h5", "--force"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_FALSE(exists(t / "keep.h5"));
  EXPECT_EQ(read_file(prev), result);
  EXPECT_NE(r.output.find("kept as " + prev + " until a run of this command finishes"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("mv " + prev + " " + (t / "keep.h5")), std::string::npos) << r.output;
  // Both at once would lose one: refused.
  write_file(t / "keep.h5", "newer");
  r = run(embed_cmd(lambda(), t / "keep.h5", "--force"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(read_file(prev), result);
  EXPECT_EQ(read_file(t / "keep.h5"), "newer");
  std::filesystem::remove(t / "keep.h5");
  // A run that did not ask for the replacement does not take it on (it would remove it).
  r = run(embed_cmd(lambda(), t / "keep.h5"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(prev + " is the old " + (t / "keep.h5") + " that an earlier --force"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(read_file(prev), result);
  // The failed --force run's command with --resume (what inspect advises), the input fixed,
  // finishes the replacement and removes the old output with the journal.
  r = run(embed_cmd(t / "bad.fa", t / "keep.h5", "--resume"));
  EXPECT_EQ(r.code, 1) << r.output;  // bad.fa is not fixed yet: refused again, nothing lost
  EXPECT_EQ(read_file(prev), result);
  write_file(t / "bad.fa", ">a\nACGT\n");
  r = run(embed_cmd(t / "bad.fa", t / "keep.h5", "--resume"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(exists(t / "keep.h5"));
  EXPECT_FALSE(exists(t / "keep.h5.parts")) << r.output;
  // A run that asks for the replacement again finishes it too.
  write_file(t / "bad.fa", ">a\nAC!GT\n");
  r = run(embed_cmd(t / "bad.fa", t / "keep.h5", "--force"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(exists(prev));
  r = run(embed_cmd(lambda(), t / "keep.h5", "--force"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(exists(t / "keep.h5.parts")) << r.output;
  // A typo in an input path with --force moves nothing: the inputs are checked with the paths,
  // before the old output is set aside (also a file that is no sparsa output).
  write_file(t / "victim.fa", ">v\nACGT\n");
  r = run(embed_cmd(t / "missing.fa", t / "victim.fa", "--force"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("missing.fa: no such file"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("-i/--input takes every word"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(t / "victim.fa"), ">v\nACGT\n");
  // An output written minimap2-style after the input (-i in.fa out.h5) is the second input:
  // the message says why.
  r = run(binary() + " embed -q -m " + tiny_model() + " -i " + lambda() + " " + t / "new.h5" +
          " -o " + t / "x.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("new.h5: no such file (input 2: -i/--input takes every word up to the "
                          "next option, so a word meant as the output goes after -o/--output)"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(exists(t / "victim.fa.parts"));
  // Never the --regions file either (--force would have removed it before reading it).
  write_file(t / "r.bed", "NC_001416.1\t0\t100\n");
  r = run(binary() + " embed -q --force --model " + tiny_model() + " --input " + lambda() +
          " --regions " + (t / "r.bed") + " --output " + (t / "r.bed"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(exists(t / "r.bed"));
  // A bad checkpoint, a region that names no record or runs past its end: refused before the old
  // output is set aside, which stays where it was, as with a refused command line.
  EXPECT_EQ(run(embed_cmd(lambda(), t / "keep.h5", "--force")).code, 0);
  const std::string kept = read_file(t / "keep.h5");
  write_file(t / "bad-model.h5", "not hdf5");
  r = run(binary() + " embed -q --force --model " + (t / "bad-model.h5") + " --input " + lambda() +
          " --output " + (t / "keep.h5"));
  EXPECT_NE(r.code, 0) << r.output;
  write_file(t / "r.fa", ">r|1\n" + std::string(100, 'A') + "\n");
  for (const char* region : {"chr9:1-10", "r|1:200-300"}) {  // unknown; starts past the end
    r = run(embed_cmd(t / "r.fa", t / "keep.h5", std::string("--force --region '") + region + "'"));
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find(region), std::string::npos) << r.output;
  }
  EXPECT_TRUE(read_file(t / "keep.h5") == kept);  // (not EXPECT_EQ: no HDF5 bytes printed)
  EXPECT_FALSE(exists(prev));
  // A run that fails after the set-aside but before its journal began (the space check, the
  // device's set-up) leaves the old output with no MANIFEST to say whose run it waits for; made
  // by hand here: inspect says so and advises --force or moving it back, not --resume, which
  // another command would also pass (slurm/embed.sbatch always does) and is refused.
  std::filesystem::create_directories(t / "keep.h5.parts");
  std::filesystem::rename(t / "keep.h5", prev);
  r = run(binary() + " inspect " + (t / "keep.h5"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("set aside by a --force run that failed before it began"),
            std::string::npos)
      << r.output;
  r = run(embed_cmd(lambda(), t / "keep.h5", "--resume"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(exists(prev));
  // Moved back as advised after a run whose journal had begun (its MANIFEST stays): a --resume
  // of the run that made the old file finds it complete.
  r = run(embed_cmd(lambda(), t / "keep.h5", "--force"));
  EXPECT_EQ(r.code, 0) << r.output;
  write_file(t / "bad.fa", ">a\nAC!GT\n");
  r = run(embed_cmd(t / "bad.fa", t / "keep.h5", "--force"));
  EXPECT_EQ(r.code, 1) << r.output;
  ASSERT_TRUE(exists(t / "keep.h5.parts/MANIFEST"));
  std::filesystem::rename(prev, t / "keep.h5");
  r = run(embed_cmd(lambda(), t / "keep.h5", "--resume"));
  EXPECT_EQ(r.code, 0) << r.output;
}

// Files the run reads must not be the ones it writes besides OUT: OUT.tmp (the final file while it
// is made) and OUT.parts (the journal); they were overwritten, renamed or deleted. A --model that
// is not a regular file is refused, and a bad checkpoint fails without waiting for its SHA-256.
TEST(Cli, InputsAreNeverTheOutputsSiblings) {
  TempDir t;
  const std::string model = t / "x.h5.tmp";
  std::filesystem::copy_file(tiny_model(), model);
  auto r = run(binary() + " embed -q --model " + model + " --input " + lambda() + " --output " +
               t / "x.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("while it is made"), std::string::npos) << r.output;
  EXPECT_TRUE(exists(model));
  EXPECT_FALSE(exists(t / "x.h5"));
  write_file(t / "w.h5.parts", ">a\nACGT\n");
  r = run(embed_cmd(t / "w.h5.parts", t / "w.h5", "--force"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("journal"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(t / "w.h5.parts"), ">a\nACGT\n");
  write_file(t / "c.h5.tmp", read_file(source_dir() + "/configs/dna-tiny.toml"));
  r = run(binary() + " init --config " + t / "c.h5.tmp" + " --output " + t / "c.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(exists(t / "c.h5.tmp"));
  // The index --region would make (FASTA.fai, and .gzi for bgzip) is not the output either, also
  // before it exists.
  write_file(t / "g.fa", ">g\nACGTACGTAC\n");
  for (const char* index : {".fai", ".gzi"}) {
    r = run(embed_cmd(t / "g.fa", t / (std::string("g.fa") + index), "--region g:1-4"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("is the index of input"), std::string::npos) << r.output;
    EXPECT_FALSE(exists(t / (std::string("g.fa") + index)));
  }
  r = run(binary() + " embed -q --model /dev/zero --input " + lambda() + " --output " + t / "d.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("not a regular file"), std::string::npos) << r.output;
  // Standard input or a pipe as an input: said so, with what to do instead.
  for (const char* in : {"-", "/dev/stdin"}) {
    r = run("echo '>a' | " + binary() + " embed -q --model " + tiny_model() + " --input " + in +
            " --output " + t / "p.h5");
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find(std::string(in) + ": standard input, a pipe or a device, not a file"),
              std::string::npos)
        << r.output;
    EXPECT_FALSE(exists(t / "p.h5"));
  }
  r = run(embed_cmd(t.str(), t / "p.h5", ""));
  EXPECT_NE(r.output.find(": a folder, not a file"), std::string::npos) << r.output;
  // 20 GB of zeros (sparse): not HDF5, refused at once, not after hashing it.
  write_file(t / "big.h5", "");
  ASSERT_EQ(truncate((t / "big.h5").c_str(), int64_t{20} << 30), 0);
  const auto start = std::chrono::steady_clock::now();
  r = run(binary() + " embed -q --model " + t / "big.h5" + " --input " + lambda() + " --output " +
          t / "e.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
}

// A checkpoint whose final gains overflow float32 (a trained model gone wrong): the error names
// the input and the record. Gains near FLT_MAX / 3 keep each strand finite: their --rc-average
// is the average (it overflowed to Inf when summed before halving), not an error.
TEST(Cli, NonFiniteOutputNamesTheRecordAndRcAverageDoesNotOverflow) {
  TempDir t;
  sparsa::ModelWeights w = sparsa::load_checkpoint(tiny_model());
  w.final_norm[0] = 3e38f;
  sparsa::save_checkpoint(w, t / "inf.h5");
  auto r = run(binary() + " embed -q --model " + t / "inf.h5" + " --input " + lambda() +
               " --output " + t / "o.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find(lambda() + ": record 'gi|9626243|ref|NC_001416.1|'"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("non-finite"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(t / "o.h5"));
  w.final_norm[0] = 1.5e38f;
  sparsa::save_checkpoint(w, t / "big.h5");
  r = run(binary() + " embed -q --model " + t / "big.h5" + " --input " + lambda() +
          " --rc-average --dtype f32 --output " + t / "rc.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  const h5::File f = h5::File::open_read(t / "rc.h5");
  const std::vector<float> y = f.read_f32(first_key(f) + "/embedding");
  float largest = 0;
  for (float v : y) {
    ASSERT_TRUE(std::isfinite(v));
    largest = std::max(largest, std::fabs(v));
  }
  EXPECT_GT(largest, 1.7e38f);  // where both strands are past FLT_MAX / 2
  // Finite in float32 but past float16's range (65504): an error (no Inf in an output), with
  // --dtype f32 as the way out, for rows per token and for bins alike.
  w.final_norm[0] = 1e5f;
  sparsa::save_checkpoint(w, t / "wide.h5");
  for (const char* pool : {"none", "bin:100", "mean"}) {
    r = run(binary() + " embed -q --model " + t / "wide.h5" + " --input " + lambda() + " --pool " +
            pool + " --output " + t / "f16.h5");
    EXPECT_EQ(r.code, 1) << pool << ": " << r.output;
    EXPECT_NE(r.output.find("past float16's range"), std::string::npos) << r.output;
    // Named by the input and record, whatever the pooling (not by a journal part).
    EXPECT_NE(r.output.find(lambda() + ": record 'gi|9626243|ref|NC_001416.1|': output row"),
              std::string::npos)
        << pool << ": " << r.output;
    EXPECT_EQ(r.output.find(".parts"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--dtype f32"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("column 0"), std::string::npos) << r.output;
    EXPECT_FALSE(exists(t / "f16.h5"));
  }
  // A record whose rows are streamed into its part (one rank, --pool none, over 16 MiB of rows).
  write_file(t / "long.fa", random_fasta(1, 140000, 3, "longrec"));
  r = run(binary() + " embed -q --model " + t / "wide.h5" + " --input " + t / "long.fa" +
          " --pool none --output " + t / "f16.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find(t / "long.fa" + ": record 'longrec0': output row "), std::string::npos)
      << r.output;
  EXPECT_FALSE(exists(t / "f16.h5"));
  r = run(binary() + " embed -q --model " + t / "wide.h5" + " --input " + lambda() +
          " --dtype f32 --output " + t / "f32.h5");
  EXPECT_EQ(r.code, 0) << r.output;
}

// A checkpoint's config attribute is written whole by init: a key missing there is damage, not a
// default (a config of only `kind` loaded with every other key defaulted).
TEST(Cli, CheckpointConfigWithAMissingKeyIsRefused) {
  TempDir t;
  std::filesystem::copy_file(tiny_model(), t / "m.h5");
  {
    h5::File f = h5::File::open_rw(t / "m.h5");
    std::string cfg = f.attr_string("/", "config");
    const size_t at = cfg.find("window = ");
    ASSERT_NE(at, std::string::npos);
    cfg.erase(at, cfg.find('\n', at) + 1 - at);
    f.set_attr("/", "config", cfg);
    f.close();
  }
  auto r = run(binary() + " embed -q --model " + t / "m.h5" + " --input " + lambda() +
               " --output " + t / "o.h5");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("window: is missing"), std::string::npos) << r.output;
  EXPECT_NE(run(binary() + " inspect " + t / "m.h5").code, 0);
}

// A checkpoint exported with h5py (weights trained elsewhere): its string attributes may be
// variable-length or fixed-length (np.bytes_: exactly the text's length, no terminator), ASCII
// or UTF-8, null- or space-padded. Only variable-length UTF-8 was read: a fixed ASCII
// "sparsa-model" came back as "sparsa-mode" (refused as another format), and an ASCII/UTF-8
// mismatch failed the read. Every form now embeds as sparsa's own checkpoint does.
TEST(Cli, CheckpointStringAttributesInEveryH5pyForm) {
  TempDir t;
  write_file(t / "x.fa", ">r\nACGTACGTACNNRYacgt\n");
  ASSERT_EQ(run(embed_cmd(t / "x.fa", t / "ref.h5", "--dtype f32")).code, 0);
  struct Form {
    const char* what;
    bool variable;
    H5T_cset_t cset;
    H5T_str_t pad;
    size_t extra;  // fixed: bytes past the text (0: exactly its length, as np.bytes_)
  };
  for (const Form& form :
       {Form{"fixed ASCII, exact length", false, H5T_CSET_ASCII, H5T_STR_NULLPAD, 0},
        Form{"fixed UTF-8, exact length", false, H5T_CSET_UTF8, H5T_STR_NULLPAD, 0},
        Form{"fixed ASCII, null-terminated", false, H5T_CSET_ASCII, H5T_STR_NULLTERM, 4},
        Form{"fixed ASCII, space-padded", false, H5T_CSET_ASCII, H5T_STR_SPACEPAD, 4},
        Form{"variable ASCII", true, H5T_CSET_ASCII, H5T_STR_NULLTERM, 0}}) {
    SCOPED_TRACE(form.what);
    const std::string m = t / "m.h5", out = t / "out.h5";
    std::filesystem::remove(m);
    std::filesystem::remove(out);
    std::filesystem::copy_file(tiny_model(), m);
    {
      h5::File f = h5::File::open_rw(m);
      for (const char* name : {"format", "config"}) {
        const std::string text = f.attr_string("/", name);
        ASSERT_GE(H5Adelete(f.id(), name), 0);
        const hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, form.variable ? H5T_VARIABLE : text.size() + form.extra);
        H5Tset_cset(type, form.cset);
        H5Tset_strpad(type, form.pad);
        const hid_t space = H5Screate(H5S_SCALAR);
        const hid_t a = H5Acreate2(f.id(), name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        std::string bytes =
            text + std::string(form.extra, form.pad == H5T_STR_SPACEPAD ? ' ' : '\0');
        const char* p = text.c_str();
        ASSERT_GE(H5Awrite(a, type, form.variable ? (const void*)&p : (const void*)bytes.data()),
                  0);
        H5Aclose(a);
        H5Sclose(space);
        H5Tclose(type);
      }
      f.close();
    }
    EXPECT_EQ(h5::File::open_read(m).attr_string("/", "format"), "sparsa-model");
    const auto r = run(binary() + " embed -q --dtype f32 --model " + m + " --input " + t / "x.fa" +
                       " --output " + out);
    ASSERT_EQ(r.code, 0) << r.output;
    const h5::File a = h5::File::open_read(t / "ref.h5"), b = h5::File::open_read(out);
    const std::string key = "/records/" + a.list("/records").at(0) + "/embedding";
    EXPECT_EQ(a.read_f32(key), b.read_f32(key));
    EXPECT_EQ(run(binary() + " inspect " + m).code, 0);
  }
}

// A damaged checkpoint is refused before any work, naming the file, the dataset (or attribute)
// and what is wrong (formats.md, "Checkpoint"): exit 1 and no output.
TEST(Cli, DamagedCheckpointsAreRefusedByName) {
  TempDir t;
  const int64_t d = h5::File::open_read(tiny_model()).shape("/final_norm").at(0);
  const auto replace_final_norm = [](h5::File& f, const std::vector<int64_t>& shape, float v) {
    ASSERT_GE(H5Ldelete(f.id(), "/final_norm", H5P_DEFAULT), 0);
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    const std::vector<float> x(n, v);
    f.write_f32("/final_norm", shape, x.data());
  };
  struct Case {
    const char* name;
    std::function<void(h5::File&)> damage;
    std::vector<std::string> said;
  };
  const std::vector<Case> cases = {
      {"missing",
       [](h5::File& f) { ASSERT_GE(H5Ldelete(f.id(), "/layers/1/wq", H5P_DEFAULT), 0); },
       {"/layers/1/wq", "dataset is missing"}},
      {"shape",
       [&](h5::File& f) { replace_final_norm(f, {d + 1}, 1.0f); },
       {"/final_norm",
        "wrong shape [" + std::to_string(d + 1) + "], expected [" + std::to_string(d) + "]"}},
      {"nan",
       [&](h5::File& f) { replace_final_norm(f, {d}, std::nanf("")); },
       {"/final_norm", "non-finite value at flat index 0"}},
      {"f64",
       [&](h5::File& f) {
         ASSERT_GE(H5Ldelete(f.id(), "/final_norm", H5P_DEFAULT), 0);
         const hsize_t dims[1] = {(hsize_t)d};
         h5::Handle space(H5Screate_simple(1, dims, nullptr), H5Sclose);
         h5::Handle ds(H5Dcreate2(f.id(), "/final_norm", H5T_IEEE_F64LE, space.id(), H5P_DEFAULT,
                                  H5P_DEFAULT, H5P_DEFAULT),
                       H5Dclose);
         const std::vector<double> ones(d, 1.0);
         H5Dwrite(ds.id(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, ones.data());
       },
       {"/final_norm", "must be float32"}},
      {"format",
       [](h5::File& f) { f.set_attr("/", "format", std::string("sparsa-tensors")); },
       {"not a sparsa checkpoint", "the file that `sparsa init` writes"}},
      {"embeddings",  // an output given as the model
       [](h5::File& f) { f.set_attr("/", "format", std::string("sparsa-embeddings")); },
       {"a sparsa embeddings file (written by sparsa embed), not a checkpoint"}},
      {"version",
       [](h5::File& f) { f.set_attr("/", "format_version", (int64_t)2); },
       {"unsupported format_version"}},
      {"config",  // damage in the file, so exit 1 like the rest (it was 2, a usage error)
       [](h5::File& f) { f.set_attr("/", "config", std::string("garbage = = =")); },
       {"(attribute config)", "the checkpoint's config must be valid TOML naming every key"}},
      {"fewer-layers",  // the config edited to one layer: the second was ignored silently
       [](h5::File& f) {
         std::string c = f.attr_string("/", "config");
         const size_t at = c.find("n_layers = 2");
         ASSERT_NE(at, std::string::npos) << c;
         f.set_attr("/", "config", c.replace(at, 12, "n_layers = 1"));
       },
       {"/layers/1", "not part of the model its config describes (n_layers = 1)"}},
      {"extra-group",
       [](h5::File& f) { f.create_group("/layers/2"); },
       {"/layers/2", "weights and config disagree"}},
  };
  for (const Case& c : cases) {
    const std::string m = t / (std::string(c.name) + ".h5"),
                      out = t / (std::string(c.name) + "-o.h5");
    std::filesystem::copy_file(tiny_model(), m);
    {
      h5::File f = h5::File::open_rw(m);
      c.damage(f);
      f.close();
    }
    auto r = run(binary() + " embed -q --model " + m + " --input " + lambda() + " --output " + out);
    EXPECT_EQ(r.code, 1) << c.name << ": " << r.output;
    for (const std::string& s : c.said)
      EXPECT_NE(r.output.find(s), std::string::npos) << c.name << ": " << r.output;
    EXPECT_NE(r.output.find(m), std::string::npos) << c.name << ": " << r.output;
    EXPECT_FALSE(exists(out)) << c.name;
    EXPECT_FALSE(exists(out + ".parts")) << c.name;
  }
}

// A read set's warnings (characters read as N, repeated read names) are said for the first three
// records, then once that more follow; every record is embedded (docs/cli.md, --invalid-as-n).
TEST(Cli, ReadWarningsStopAfterThree) {
  TempDir t;
  std::string fq;
  for (int i = 1; i <= 5; ++i)
    fq += "@r" + std::to_string(i) + "\nACXGT\n+\nIIIII\n@r1\nACGT\n+\nIIII\n";
  write_file(t / "w.fq", fq);
  auto r = run(embed_cmd(t / "w.fq", t / "w.h5", "--invalid-as-n --pool mean"));  // (-q)
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(count_in(r.output, "warning: " + t / "w.fq"), 3u) << r.output;
  EXPECT_NE(r.output.find("record 'r1': position 3: 1 invalid character read as N"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("line 5: the name repeats an earlier read's"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("warning: more records have warnings like these; not said one by one"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("warning: 10 records in all have warnings like these (the first 3 said "
                          "above) of 10 read"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(h5::File::open_read(t / "w.h5").list("/records").size(), 10u);
}

// Without a GPU (CI, a login node): --device cuda is a usage error (exit 2) naming why, with
// nothing written; --device auto runs on the CPU and says so, warning about an explicit bf16;
// `sparsa bench` says it needs a GPU and exits non-zero (docs/cli.md).
TEST(Cli, DeviceOptionsWithoutAGpu) {
  TempDir t;
  auto r = run(embed_cmd(lambda(), t / "cuda.h5", "--device cuda"));
  if (r.code == 0) GTEST_SKIP() << "a GPU is usable here";
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--device cuda: "), std::string::npos) << r.output;
  EXPECT_TRUE(r.output.find("no usable GPU") != std::string::npos ||
              r.output.find("built without CUDA") != std::string::npos)
      << r.output;
  EXPECT_FALSE(exists(t / "cuda.h5"));
  EXPECT_FALSE(exists(t / "cuda.h5.parts"));
  // A machine without a driver is said as such (the runtime calls it "insufficient").
  if (run(binary() + " --version").output.find("no CUDA driver") != std::string::npos)
    EXPECT_NE(r.output.find("no usable GPU: no CUDA driver on this machine"), std::string::npos)
        << r.output;
  // --force: the refusal comes before the old output is set aside, which stays where it was.
  write_file(t / "cuda.h5", "an earlier output");
  r = run(embed_cmd(lambda(), t / "cuda.h5", "--device cuda --force"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(read_file(t / "cuda.h5"), "an earlier output") << r.output;
  EXPECT_FALSE(exists(t / "cuda.h5.parts")) << r.output;
  r = run(embed_cmd(lambda(), t / "auto.h5", "--precision bf16"));  // (-q)
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(r.output.find("applies to a GPU; with none found the CPU computes in float32") !=
                  std::string::npos ||
              r.output.find("applies to a GPU; this sparsa was built without CUDA") !=
                  std::string::npos)
      << r.output;
  // A bad --n is a usage error naming it (it was "error: stoll", exit 1), GPU or not.
  for (const char* n : {"abc", "99999999999999999999", "0", "1024,"}) {
    r = run(binary() + " bench --what model --config " + tiny_config() + " --n " + n);
    EXPECT_EQ(r.code, 2) << n << "\n" << r.output;
    EXPECT_NE(r.output.find("--n '"), std::string::npos) << r.output;
  }
  r = run(binary() + " bench --what model --config " + tiny_config() + " --n 1024 --iters 1");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_TRUE(r.output.find("no usable CUDA device") != std::string::npos ||
              r.output.find("this build has no CUDA backend") != std::string::npos)
      << r.output;
}

// srun -n 4 without an MPI plugin: four unconnected copies. Each runs alone (a task farm with an
// output each is legitimate) and says so, with the cure for a job meant as one MPI run; copies
// that share an output meet at its journal lock (Resume.AnotherLiveRunsJournalIsRefused).
TEST(Cli, SrunWithoutPmiWarns) {
  TempDir t;
  const std::string unset = "env -u PMIX_RANK -u PMI_RANK -u PMI_SIZE -u OMPI_COMM_WORLD_SIZE ";
  auto r = run(unset + "SLURM_STEP_NUM_TASKS=4 " + embed_cmd(lambda(), t / "o.h5"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("one of 4 srun tasks"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("srun --mpi=pmix"), std::string::npos) << r.output;
  r = run(unset + "SLURM_STEP_NUM_TASKS=1 " + embed_cmd(lambda(), t / "p.h5"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("srun tasks"), std::string::npos) << r.output;
}

// A launcher whose processes this sparsa's MPI cannot join (MPICH's mpiexec, or an srun plugin
// the MPI does not speak, starting an Open MPI build): each process sees a world of 1 and runs
// alone. Said up front (right for a task farm with an --output each; not for one job); a world of
// 1 that the launcher meant says nothing.
TEST(Cli, LauncherThatTheMpiCannotJoinIsSaid) {
  TempDir t;
  // (PMI_RANK makes sparsa start MPI, as a singleton here; Open MPI keeps ~120 KB until exit,
  // which the sanitizer run's leak check would call a leak: tests/lsan.supp)
  const std::string mpich =
      "env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK "
      "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 PMI_RANK=1 ";
  auto r = run(mpich + "PMI_SIZE=4 " + embed_cmd(lambda(), t / "o.h5"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(PMI_SIZE=4) but the MPI library this sparsa was built with sees a "
                          "world of 1"),
            std::string::npos)
      << r.output;
  r =
      run("env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK "
          "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 PMI_RANK=0 "
          "PMI_SIZE=1 " +
          embed_cmd(lambda(), t / "p.h5"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("sees a world of 1"), std::string::npos) << r.output;
}

TEST(Cli, RegionsOfEcoli) {
  TempDir t;
  // The shared E. coli file is plain gzip: faidx needs bgzip; the error says so.
  const std::string ecoli = data_file("dna/ecoli_k12_mg1655.fasta.gz");
  ASSERT_FALSE(ecoli.empty()) << "the E. coli genome: ../shared/data or Debian's ragout-examples";
  ASSERT_EQ(run("cp " + ecoli + " " + t / "ecoli.fa.gz").code, 0);
  expect_failure(embed_cmd(t / "ecoli.fa.gz", t / "x.h5", "--region K-12-MG1655:1-100"), t / "x.h5",
                 "bgzip");
  ASSERT_EQ(run("zcat " + ecoli + " | bgzip > " + t / "ecoli.fa.bgz").code, 0);
  ASSERT_EQ(run("zcat " + ecoli + " > " + t / "ecoli.fa").code, 0);
  const std::string region = "K-12-MG1655:1,000,001-1,010,000";
  ASSERT_EQ(run(embed_cmd(t / "ecoli.fa.bgz", t / "bgz.h5", "--dtype f32 --region " + region)).code,
            0);
  ASSERT_EQ(run(embed_cmd(t / "ecoli.fa", t / "plain.h5", "--dtype f32 --region " + region)).code,
            0);
  write_file(t / "r.bed", "# comment\ntrack name=x\nK-12-MG1655\t1000000\t1010000\tmy\n");
  ASSERT_EQ(
      run(embed_cmd(t / "ecoli.fa", t / "bed.h5", "--dtype f32 --regions " + t / "r.bed")).code, 0);
  EXPECT_EQ(embedding(t / "bgz.h5"), embedding(t / "plain.h5"));
  EXPECT_EQ(embedding(t / "bgz.h5"), embedding(t / "bed.h5"));
  auto f = h5::File::open_read(t / "bgz.h5");
  const std::string g = first_key(f);
  EXPECT_EQ(f.attr_string(g, "name"), "K-12-MG1655");
  EXPECT_EQ(f.attr_string(g, "region"), "K-12-MG1655:1000001-1010000");
  EXPECT_EQ(f.attr_int(g, "length"), 10000);
  EXPECT_EQ(f.read_i64(g + "/bin_start")[0], 1000000);
  EXPECT_EQ(f.read_i64(g + "/bin_end")[9999], 1010000);
  // A BED line's name column is kept as region_name (a gene or feature name); a --region or a
  // BED3 line has none.
  EXPECT_FALSE(f.has_attr(g, "region_name"));
  {
    auto b = h5::File::open_read(t / "bed.h5");
    EXPECT_EQ(b.attr_string(first_key(b), "region_name"), "my");
    write_file(t / "r4.bed", "K-12-MG1655\t10\t20\t.\nK-12-MG1655\t30\t40\tthrL gene\n");
    ASSERT_EQ(run(embed_cmd(t / "ecoli.fa", t / "bed4.h5", "--regions " + t / "r4.bed")).code, 0);
    auto b4 = h5::File::open_read(t / "bed4.h5");
    const auto keys = b4.list("/records");
    ASSERT_EQ(keys.size(), 2u);
    EXPECT_FALSE(b4.has_attr("/records/" + keys[0], "region_name"));               // "." is no name
    EXPECT_EQ(b4.attr_string("/records/" + keys[1], "region_name"), "thrL gene");  // (tabs)
    const auto shown = run(binary() + " inspect " + t / "bed4.h5");
    EXPECT_EQ(shown.code, 0) << shown.output;
    EXPECT_NE(shown.output.find("region=K-12-MG1655:31-40 (thrL gene)"), std::string::npos)
        << shown.output;
  }
  expect_failure(embed_cmd(t / "ecoli.fa", t / "x.h5", "--region chrZ:1-10"), t / "x.h5", "chrZ");
  // ... naming the input it looked in and the names it has
  expect_failure(embed_cmd(t / "ecoli.fa", t / "x.h5", "--region chrZ:1-10"), t / "x.h5",
                 "ecoli.fa; its records: 'K-12-MG1655'");
  expect_failure(embed_cmd(t / "ecoli.fa", t / "x.h5", "--region K-12-MG1655:20-10"), t / "x.h5",
                 "20-10");
  // An empty record is not in the faidx index: said as empty, with its line, not as unknown.
  write_file(t / "e2.fa", ">r1\n>r2\nACGT\n");
  expect_failure(embed_cmd(t / "e2.fa", t / "x.h5", "--region r1"), t / "x.h5",
                 "e2.fa: line 1: region 'r1': record 'r1' is empty");
  // A BED line naming an unknown record is named as the file's line; a BED with no region says so.
  write_file(t / "bad.bed", "# c\nchrQ\t0\t10\n");
  expect_failure(embed_cmd(t / "ecoli.fa", t / "x.h5", "--regions " + t / "bad.bed"), t / "x.h5",
                 "region '" + t / "bad.bed" + " line 2': no record named 'chrQ'");
  // The same input twice: said (also with -q: a warning, not progress), and embedded twice.
  auto twice = run(embed_cmd(lambda(), t / "twice.h5", "--pool mean --input " + lambda()));
  EXPECT_EQ(twice.code, 0) << twice.output;
  EXPECT_NE(twice.output.find("is given twice (as --input 1 and 2)"), std::string::npos)
      << twice.output;
  EXPECT_EQ(h5::File::open_read(t / "twice.h5").list("/records").size(), 2u);
  twice = run(embed_cmd(t / "ecoli.fa", t / "twice-r.h5",
                        "--pool mean --region K-12-MG1655:1-100 --region K-12-MG1655:1-100"));
  EXPECT_EQ(twice.code, 0) << twice.output;
  EXPECT_NE(twice.output.find("--region K-12-MG1655:1-100 is given twice (as --region 1 and 2)"),
            std::string::npos)
      << twice.output;
  // With regions only the regions are embedded: an input that none names is said (with -q too).
  write_file(t / "other.fa", ">s\nACGT\n");
  auto unnamed = run(embed_cmd(t / "ecoli.fa", t / "unnamed.h5",
                               "--region K-12-MG1655:1-100 --input " + t / "other.fa"));
  EXPECT_EQ(unnamed.code, 0) << unnamed.output;
  EXPECT_NE(unnamed.output.find("warning: " + t / "other.fa" + ": no region names one of its"),
            std::string::npos)
      << unnamed.output;
  EXPECT_EQ(unnamed.output.find("ecoli.fa: no region"), std::string::npos) << unnamed.output;
  // A zero-length BED interval (legal BED: an insertion point) is skipped with a warning.
  write_file(t / "z.bed", "K-12-MG1655\t50\t50\nK-12-MG1655\t50\t60\n");
  auto zero = run(embed_cmd(t / "ecoli.fa", t / "z.h5", "--regions " + t / "z.bed"));
  EXPECT_EQ(zero.code, 0) << zero.output;
  EXPECT_NE(zero.output.find("z.bed: 1 zero-length interval (start = end) skipped: no base to "
                             "embed (line 1)"),
            std::string::npos)
      << zero.output;
  EXPECT_EQ(h5::File::open_read(t / "z.h5").list("/records").size(), 1u);
  // The same interval on two lines (a BED concatenated twice) is embedded twice, with a warning.
  write_file(t / "dup.bed",
             "K-12-MG1655\t50\t60\tg1\nK-12-MG1655\t70\t80\nK-12-MG1655\t50\t60\tg1\n");
  auto dup = run(embed_cmd(t / "ecoli.fa", t / "dup.h5", "--regions " + t / "dup.bed"));
  EXPECT_EQ(dup.code, 0) << dup.output;
  EXPECT_NE(dup.output.find("dup.bed: 1 line with the interval and name of an earlier line, each "
                            "embedded again as a record of its own: line 3 repeats line 1 "
                            "(K-12-MG1655 50 60)"),
            std::string::npos)
      << dup.output;
  EXPECT_EQ(h5::File::open_read(t / "dup.h5").list("/records").size(), 3u);
  EXPECT_EQ(zero.output.find("of an earlier line"), std::string::npos) << zero.output;
  // The same interval under two names (overlapping features) is no repeat.
  write_file(t / "two.bed", "K-12-MG1655\t50\t60\tg1\nK-12-MG1655\t50\t60\tg2\n");
  auto two = run(embed_cmd(t / "ecoli.fa", t / "two.h5", "--regions " + t / "two.bed"));
  EXPECT_EQ(two.code, 0) << two.output;
  EXPECT_EQ(two.output.find("of an earlier line"), std::string::npos) << two.output;
  EXPECT_EQ(run(binary() + " inspect " + t / "dup.h5").code, 0);
  // A BED line past a record's end (another assembly) stops the run before any region is
  // embedded: no journal is left.
  write_file(t / "past.bed", "K-12-MG1655\t0\t100\nK-12-MG1655\t9000000\t9000100\n");
  expect_failure(embed_cmd(t / "ecoli.fa", t / "x.h5", "--regions " + t / "past.bed"), t / "x.h5",
                 "region '" + t / "past.bed" + " line 2' starts after the end of the record");
  EXPECT_FALSE(exists(t / "x.h5.parts"));
  // Lines that end past the record are embedded to its end; said before the first record is
  // embedded (the first 3, then their count), not when each one's turn comes.
  {
    std::string bed;
    for (int i = 0; i < 5; ++i)
      bed += "K-12-MG1655\t" + std::to_string(4639600 + i) + "\t4639700\n";
    write_file(t / "end.bed", bed);
    auto r = run(embed_cmd(t / "ecoli.fa", t / "end.h5", "--pool mean --regions " + t / "end.bed"));
    ASSERT_EQ(r.code, 0) << r.output;
    const size_t first = r.output.find(
        "end.bed line 1' ends past record 'K-12-MG1655' (4639675 "
        "bases): embedded to its end, bases 4639601-4639675");
    EXPECT_NE(first, std::string::npos) << r.output;
    EXPECT_NE(r.output.find("line 3' ends past"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("line 4' ends past"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("5 regions in all end past their record and are embedded to its end"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(h5::File::open_read(t / "end.h5").list("/records").size(), 5u);
  }
  // A region run's output estimate counts the regions' bases, not the whole input: a 1 kb
  // region of a 4.6 Mb genome with a row a token is a few hundred KB, not hundreds of MB.
  {
    auto r = run(binary() + " embed --model " + tiny_model() + " --input " + t / "ecoli.fa" +
                 " --region K-12-MG1655:1-1000 --pool none --output " + t / "small.h5");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("output about "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(" KiB (journal + final)"), std::string::npos) << r.output;
  }
  write_file(t / "none.bed", "# nothing here\ntrack name=x\n");
  expect_failure(embed_cmd(t / "ecoli.fa", t / "x.h5", "--regions " + t / "none.bed"), t / "x.h5",
                 t / "none.bed" + ": the --regions BED file holds no regions");
}

// A causal model: rows appended after a record (missing values here, so the scale, G and the
// global set stay as they were) leave its earlier rows' bits as they were, the CPU's last tile
// included (its attention GEMMs once took the record's length as a dimension).
TEST(Cli, CausalRowsKeepTheirBitsWhenRowsAreAppended) {
  TempDir t;
  ASSERT_NE(init_ts_model(t, 64, 512, 1), "");
  std::mt19937 g(3);
  std::uniform_real_distribution<double> step(-0.02, 0.02);
  std::string head = "date,x\n", tail;
  double x = 50;
  for (int r = 0; r < 200; ++r) {
    x *= 1 + step(g);
    head += "2020-01-01T" + std::to_string(10 + r / 60) + ":" + (r % 60 < 10 ? "0" : "") +
            std::to_string(r % 60) + ":00," + std::to_string(x) + "\n";
  }
  for (int r = 0; r < 49; ++r) tail += "2020-01-02T10:" + std::to_string(10 + r) + ":00,NA\n";
  write_file(t / "short.csv", head);
  write_file(t / "long.csv", head + tail);
  for (const char* name : {"short", "long"}) {
    auto r =
        run(binary() + " embed -q --device cpu --dtype f32 --model " + t / "ts.h5" + " --input " +
            t / (std::string(name) + ".csv") + " --output " + t / (std::string(name) + ".h5"));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  auto a = h5::File::open_read(t / "short.h5"), b = h5::File::open_read(t / "long.h5");
  const std::string ga = first_key(a), gb = first_key(b);
  ASSERT_EQ(a.read_i64(ga + "/global_positions"), b.read_i64(gb + "/global_positions"));
  const std::vector<float> ya = a.read_f32(ga + "/embedding"), yb = b.read_f32(gb + "/embedding");
  ASSERT_EQ(ya.size(), 200u * 32);
  ASSERT_EQ(yb.size(), 249u * 32);
  for (size_t i = 0; i < ya.size(); ++i)
    ASSERT_EQ(ya[i], yb[i]) << "row " << i / 32 << ", column " << i % 32;
}

// Several CSV inputs in one run (the output-size estimate reads them and hands their records on,
// instead of each being parsed again): records in input order, each as embedded alone.
TEST(Cli, SeveralCsvInputsMatchEachAlone) {
  TempDir t;
  ASSERT_NE(init_ts_model(t, 8, 64, 2), "");
  std::mt19937 g(7);
  std::uniform_real_distribution<double> step(-0.01, 0.01);
  const std::vector<std::string> names = {"alpha", "beta", "gamma"};
  const std::vector<int> rows = {57, 120, 33};
  std::string all_inputs;
  for (size_t i = 0; i < names.size(); ++i) {
    std::string csv = "date,a,b\n";
    double a = 10, b = 100;
    for (int r = 0; r < rows[i]; ++r) {
      a *= 1 + step(g);
      b *= 1 + step(g);
      char line[96];
      std::snprintf(line, sizeof line, "2020-01-01T00:%02d:%02d,%.6f,%.6f\n", r / 60, r % 60, a, b);
      csv += line;
    }
    write_file(t / (names[i] + ".csv"), csv);
    all_inputs += " --input " + t / (names[i] + ".csv");
  }
  auto embed = [&](const std::string& inputs, const std::string& out) {
    return run(binary() + " embed -q --model " + t / "ts.h5" + inputs + " --output " + out +
               " --pool bin:10 --dtype f32");
  };
  auto r = embed(all_inputs, t / "all.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  auto f = h5::File::open_read(t / "all.h5");
  const std::vector<std::string> keys = f.list("/records");
  ASSERT_EQ(keys.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    EXPECT_EQ(f.attr_string("/records/" + keys[i], "name"), names[i]);
    EXPECT_EQ(f.attr_int("/records/" + keys[i], "length"), rows[i]);
    const std::string alone = t / (names[i] + ".h5");
    r = embed(" --input " + t / (names[i] + ".csv"), alone);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(f.read_f32("/records/" + keys[i] + "/embedding"), embedding(alone, 0));
  }
}

// --force with a CSV that is refused (every value is checked before any record is embedded): the
// old output stays where it was, not set aside (a nightly job's readers keep a file).
TEST(Cli, ForceLeavesTheOldOutputWhenACsvIsRefused) {
  TempDir t;
  const std::string model = init_ts_model(t, 4, 100, 1);
  ASSERT_FALSE(model.empty());
  const std::string cmd =
      binary() + " embed -q --force --model " + model + " --output " + t / "o.h5" + " --input ";
  write_file(t / "good.csv", "date,close\n2024-01-01,1\n2024-01-02,2\n2024-01-03,4\n");
  ASSERT_EQ(run(cmd + t / "good.csv").code, 0);
  const std::string kept = read_file(t / "o.h5");
  write_file(t / "bad.csv", "date,close\n2024-01-01,1\n2024-01-02,abc\n2024-01-03,4\n");
  auto r = run(cmd + t / "bad.csv");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("line 3"), std::string::npos) << r.output;
  EXPECT_TRUE(read_file(t / "o.h5") == kept);
  EXPECT_FALSE(exists(t / "o.h5.parts"));
}

// pandas' to_csv writes its index as an unnamed first column: embedded as a channel where
// --columns does not choose, with a warning; not with --columns.
TEST(Cli, UnnamedIndexColumnIsWarnedAbout) {
  TempDir t;
  const std::string model = init_ts_model(t, 4, 100, 1);
  ASSERT_FALSE(model.empty());
  write_file(t / "pd.csv", ",date,close\n5,2024-01-01,1\n6,2024-01-02,2\n7,2024-01-03,4\n");
  const std::string cmd = binary() + " embed --model " + model + " --input " + t / "pd.csv";
  auto r = run(cmd + " --output " + t / "a.h5" + " --columns 1");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("channel 1 is a column with no name in the header (pandas' index"),
            std::string::npos)
      << r.output;
  r = run(cmd + " --output " + t / "b.h5" + " --columns close");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("no name in the header"), std::string::npos) << r.output;
}

TEST(Cli, TimeSeriesEndToEnd) {
  TempDir t;
  const std::string msft = data_file("timeseries/msft_daily_ohlcv.csv");
  ASSERT_TRUE(exists(msft));
  ASSERT_NE(init_ts_model(t, 8, 64, 2), "");
  auto cmd = [&](const std::string& out, const std::string& extra) {
    return binary() + " embed -q --model " + t / "ts.h5" + " --input " + msft + " --output " + out +
           " " + extra;
  };
  auto r = run(cmd(t / "e.h5", "--columns close,volume --pool bin:10 --dtype f32"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto f = h5::File::open_read(t / "e.h5");
  const std::string g = first_key(f);
  EXPECT_EQ(f.attr_string(g, "name"), "msft_daily_ohlcv");
  EXPECT_EQ(f.attr_string(g, "kind"), "timeseries");
  EXPECT_EQ(f.attr_int(g, "length"), 249);
  EXPECT_EQ(f.shape(g + "/embedding"), (std::vector<int64_t>{25, 32}));
  EXPECT_EQ(f.shape(g + "/timestamps"), (std::vector<int64_t>{25}));
  {
    // The file's rows by hand (no quotes in this CSV): date and the close and volume columns.
    std::vector<std::string> dates;
    std::vector<std::vector<double>> ch(2);
    std::istringstream in(read_file(msft));
    std::string line;
    std::getline(in, line);  // date,open,high,low,close,volume
    while (std::getline(in, line)) {
      std::vector<std::string> cell;
      std::stringstream ls(line);
      for (std::string c; std::getline(ls, c, ',');) cell.push_back(c);
      ASSERT_EQ(cell.size(), 6u) << line;
      dates.push_back(cell[0]);
      ch[0].push_back(std::stod(cell[4]));
      ch[1].push_back(std::stod(cell[5]));
    }
    ASSERT_EQ(dates.size(), 249u);
    // Each bin's times: at its first row (timestamps) and at its last (timestamps_end).
    const auto starts = f.read_i64(g + "/bin_start"), ends = f.read_i64(g + "/bin_end");
    const auto first = f.read_strings_range(g + "/timestamps", 0, 25);
    const auto last = f.read_strings_range(g + "/timestamps_end", 0, 25);
    ASSERT_EQ(last.size(), 25u);
    for (int i = 0; i < 25; ++i) {
      EXPECT_EQ(first[i], dates[starts[i]]) << i;
      EXPECT_EQ(last[i], dates[ends[i] - 1]) << i;
    }
    EXPECT_EQ(last.back(), dates.back());
    // ts_scale: each channel's s_c, the mean |log return| over the record (spec 1, step 2).
    EXPECT_EQ(f.type_name(g + "/ts_scale"), "float64");
    const auto scale = f.read_f64(g + "/ts_scale");
    ASSERT_EQ(scale.size(), 2u);
    for (int c = 0; c < 2; ++c) {
      double sum = 0;
      for (size_t i = 1; i < ch[c].size(); ++i) sum += std::fabs(std::log(ch[c][i] / ch[c][i - 1]));
      const double want = sum / double(ch[c].size() - 1);
      EXPECT_NEAR(scale[c], want, 1e-12 * want) << c;
    }
  }
  f.close();
  r = run(binary() + " inspect " + t / "e.h5");
  EXPECT_EQ(r.code, 0) << r.output;
  // inspect says a series' time span and columns
  EXPECT_NE(r.output.find("time=2000-09-27..2001-09-27 (columns close,volume; time date)"),
            std::string::npos)
      << r.output;
  {  // a time series without its timestamps is not a result (spec 4)
    std::filesystem::copy_file(t / "e.h5", t / "nots.h5");
    h5::File w = h5::File::open_rw(t / "nots.h5");
    ASSERT_GE(H5Ldelete(w.id(), (g + "/timestamps").c_str(), H5P_DEFAULT), 0);
  }
  {  // a pooled file of an earlier version: no timestamps_end (nor ts_scale)
    std::filesystem::copy_file(t / "e.h5", t / "old.h5");
    h5::File w = h5::File::open_rw(t / "old.h5");
    ASSERT_GE(H5Ldelete(w.id(), (g + "/timestamps_end").c_str(), H5P_DEFAULT), 0);
    ASSERT_GE(H5Ldelete(w.id(), (g + "/ts_scale").c_str(), H5P_DEFAULT), 0);
  }
  r = run(binary() + " inspect " + t / "old.h5");
  EXPECT_EQ(r.code, 0) << r.output;  // accepted
  EXPECT_NE(r.output.find("time=2000-09-27..(last bin from) 2001-09-"), std::string::npos)
      << r.output;
  r = run(binary() + " inspect " + t / "nots.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("timestamps (a time series' times) is missing"), std::string::npos)
      << r.output;
  // The wrong number of columns for the model is refused, naming the fix.
  expect_failure(cmd(t / "x.h5", ""), t / "x.h5", "--columns");
  expect_failure(cmd(t / "x.h5", "--columns close,nope"), t / "x.h5", "nope");
  expect_failure(cmd(t / "x.h5", "--columns close,"), t / "x.h5", "an empty item");
  expect_failure(cmd(t / "x.h5", "--columns ''"), t / "x.h5", "--columns: must not be empty");
  // An empty --id-column (an unset "$COL") read a panel as one series; --time-column alike.
  expect_failure(cmd(t / "x.h5", "--columns close --id-column ''"), t / "x.h5",
                 "--id-column '': an empty column name");
  expect_failure(cmd(t / "x.h5", "--columns close --time-column ' '"), t / "x.h5",
                 "--time-column '': an empty column name");
  expect_failure(cmd(t / "x.h5", "--columns close --invalid-as-n"), t / "x.h5",
                 "--invalid-as-n applies to DNA models");
  // NAME.csv of `text`, embedded into NAME.h5 (quietly: warnings are said also under -q).
  auto embed_csv = [&](const std::string& name, const std::string& text,
                       const std::string& extra = "") {
    write_file(t / (name + ".csv"), text);
    return run(binary() + " embed -q --model " + t / "ts.h5" + " --input " + t / (name + ".csv") +
               extra + " --output " + t / (name + ".h5"));
  };
  // NAME.csv of three rows with these timestamps embeds, with this warning.
  auto embeds_warning = [&](const std::string& name, const std::vector<std::string>& times,
                            const std::string& warning) {
    auto res = embed_csv(
        name, "date,a,b\n" + times[0] + ",1,2\n" + times[1] + ",2,3\n" + times[2] + ",3,4\n");
    EXPECT_EQ(res.code, 0) << res.output;
    EXPECT_NE(res.output.find(warning), std::string::npos) << res.output;
  };
  // A newest-first file is embedded in file order, with a warning (also under -q); a Yahoo or
  // Excel download's US dates too.
  embeds_warning("rev", {"2020-01-03", "2020-01-02", "2020-01-01"},
                 "time goes backwards at line 3 ('2020-01-02' after '2020-01-03')");
  embeds_warning("usrev", {"01/02/2020", "12/31/2019", "12/30/2019"},
                 "time goes backwards at line 3 ('12/31/2019' after '01/02/2020')");
  // US dates oldest first: no warning.
  r = embed_csv("us", "date,a,b\n12/30/2019,1,2\n12/31/2019,2,3\n01/02/2020,3,4\n");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
  // A timestamp the order check cannot read is said, with its line, instead of switching the
  // check off without a word.
  embeds_warning("odd", {"2020-01-03", "2001/07/13", "2020-01-01"},
                 "record 'odd': time order not checked: line 3's timestamp '2001/07/13' is not "
                 "of the form and length of the rows above");
  // Across a daylight-saving change, where every row carries its UTC offset: compared in UTC
  // (09:30-04:00 is 13:30Z, after 09:30-05:00 = 14:30Z the day before).
  embeds_warning(
      "dst",
      {"2020-03-10 09:30:00-04:00", "2020-03-09 09:30:00-04:00", "2020-03-06 09:30:00-05:00"},
      "time goes backwards at line 3 ('2020-03-09 09:30:00-04:00' after "
      "'2020-03-10 09:30:00-04:00')");
  r = embed_csv("dstok",
                "date,a,b\n2020-03-06 09:30:00-05:00,1,2\n2020-03-09 09:30:00-04:00,2,3\n");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
  // Local times without an offset, back within a day: the hour daylight saving time repeats is
  // named as a likely cause (not where offsets are written).
  embeds_warning("local", {"2024-11-03 01:00", "2024-11-03 01:30", "2024-11-03 01:00"},
                 "sort it oldest first (or, an hour back on one day, local times without a UTC "
                 "offset where daylight saving time ends");
  r = embed_csv("utcback", "date,a,b\n2024-11-03 01:30Z,1,2\n2024-11-03 01:00Z,2,3\n");
  EXPECT_NE(r.output.find("time goes backwards"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("daylight"), std::string::npos) << r.output;
  // Ids with and without blanks around them: one series, said.
  r = embed_csv("wsid", "sym,date,a,b\nA,1,1,2\n A,2,2,3\n", " --id-column sym");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("record 'A': its id cell has blanks around it on one of lines 2 and 3"),
            std::string::npos)
      << r.output;
  // Two files of one name in two folders: both records 'p', said.
  std::filesystem::create_directories(t / "d1");
  std::filesystem::create_directories(t / "d2");
  write_file(t / "d1/p.csv", "date,a,b\n1,1,2\n2,2,3\n");
  write_file(t / "d2/p.csv", "date,a,b\n1,1,2\n2,2,3\n");
  r = run(binary() + " embed -q --model " + t / "ts.h5" + " --input " + t / "d1/p.csv" +
          " --input " + t / "d2/p.csv" + " --output " + t / "p2.h5");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(
      r.output.find("d2/p.csv: record 'p': " + t / "d1/p.csv" + " has a record of that name too"),
      std::string::npos)
      << r.output;
  // Negative values under log_return: embedded (the spec's math), with a warning that a fall
  // reads as a rise.
  r = embed_csv("neg", "date,a,b\n2020-01-01,-10,1\n2020-01-02,-11,2\n2020-01-03,-12,3\n");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("record 'neg': column 'a' has negative values (the first at line 2: "
                          "-10); a log return of two negative values is that of their magnitudes"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("column 'b' has"), std::string::npos) << r.output;
  {  // --pool none: every bin one row, so no timestamps_end (it would be timestamps again)
    auto nf = h5::File::open_read(t / "neg.h5");
    const std::string ng = first_key(nf);
    EXPECT_EQ(nf.type_name(ng + "/timestamps_end"), "missing");
    EXPECT_EQ(nf.type_name(ng + "/ts_scale"), "float64");
  }
  {  // a pooled panel: timestamps_end in every record, a ticker of one row (one bin of one row)
     // included, so that a reader finds it in each
    r = embed_csv("panel1", "sym,date,a,b\nA,1,1,2\nA,2,2,3\nA,3,3,4\nB,1,5,6\n",
                  " --id-column sym --pool mean");
    ASSERT_EQ(r.code, 0) << r.output;
    auto pf = h5::File::open_read(t / "panel1.h5");
    for (const char* k : {"/records/000000_A", "/records/000001_B"}) {
      ASSERT_EQ(pf.type_name(std::string(k) + "/timestamps_end"), "string") << k;
      EXPECT_EQ(pf.read_strings_range(std::string(k) + "/timestamps_end", 0, 1)[0],
                k[16] == 'A' ? "3" : "1")
          << k;
    }
  }
  // Another program's missing-value marker: the error says which markers sparsa reads.
  write_file(t / "null.csv", "date,a,b\n2020-01-01,1,2\n2020-01-02,null,3\n");
  expect_failure(binary() + " embed -q --model " + t / "ts.h5" + " --input " + t / "null.csv" +
                     " --output " + t / "null.h5",
                 t / "null.h5",
                 "line 3, column 'a': not a number: 'null' (sparsa reads a missing value as an "
                 "empty cell, NA or NaN; write this file's 'null' as one of those)");
  // Date,Time in two columns, the time taken as a channel: the count error says why.
  write_file(t / "dt2.csv", "Date,Time,a,b\n01/02/2020,09:30,1,2\n01/02/2020,09:31,2,3\n");
  expect_failure(binary() + " embed -q --model " + t / "ts.h5" + " --input " + t / "dt2.csv" +
                     " --output " + t / "dt2.h5",
                 t / "dt2.h5",
                 "choose 2 with --columns ('Time' is named like a time column; the time column is "
                 "'Date': is the time split over two columns?");
  // A panel's warnings: the first three records named, then their number in all at the end.
  {
    std::string panel = "sym,date,a,b\n";
    for (int k = 0; k < 5; ++k)
      for (int d = 3; d >= 1; --d)
        panel += "S" + std::to_string(k) + ",2020-01-0" + std::to_string(d) + ",1,2\n";
    r = embed_csv("panel5", panel, " --id-column sym");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(count_in(r.output, "time goes backwards"), 3u) << r.output;
    EXPECT_NE(r.output.find("warning: 5 records in all go backwards in time (the first 3 said "
                            "above) of 5 read"),
              std::string::npos)
        << r.output;
  }
  // Repeated times inside an --id-column record: the hint names that column, not the option.
  r = embed_csv("idrep", "sym,date,a,b\nX,2020-01-01,1,2\nX,2020-01-01,2,3\n", " --id-column sym");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("does the id column, 'sym', leave two series in one record"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("(--id-column COL)"), std::string::npos) << r.output;
  // Repeated times (a date-only column of intraday rows) and a channel with no values are
  // warned about.
  r = embed_csv("rep", "date,a,b\n2020-01-01,1,\n2020-01-01,2,\n2020-01-02,3,NA\n");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(
      r.output.find("timestamp '2020-01-01' at line 3 repeats the line before (1 such row in all)"),
      std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("column 'b': no values"), std::string::npos) << r.output;
  // A weekly column in daily rows: values, but no two neighbours, so no log return.
  r = embed_csv("weekly",
                "date,a,b\n2020-01-01,1,5\n2020-01-02,2,\n2020-01-03,3,6\n2020-01-04,4,\n");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("column 'b': no two neighbouring rows both have a value, so its log "
                          "returns are all missing"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("column 'a'"), std::string::npos) << r.output;
  // The time of day as the time column (Date,Time files): no "backwards" at midnight.
  r = embed_csv("tod",
                "Date,Time,a,b\n2020-01-01,15:58,1,2\n2020-01-01,15:59,2,3\n2020-01-02,09:30,3,4\n",
                " --time-column Time --columns a,b");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("backwards"), std::string::npos) << r.output;
  // Date,time: the default rule takes 'time' (an exact name first) and says the header names
  // 'Date' too; an explicit --time-column says nothing of it.
  r = embed_csv("dt", "Date,time,a,b\n2020-01-01,09:30,1,2\n2020-01-01,16:00,2,3\n",
                " --columns a,b");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("the time column is 'time' (an exact name first: timestamp, date, "
                          "time), though the header names 'Date' too"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("the time column is"), r.output.rfind("the time column is"));  // once
  // The other one taken as a channel: its dates are not numbers, and the error says why.
  r = embed_csv("dt3", "Date,time,a\n2020-01-01,09:30,1\n2020-01-01,16:00,2\n",
                " --columns Date,a");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("column 'Date': not a number: '2020-01-01' (the time column is 'time', "
                          "and 'Date' is named like one too: is the time split over two columns?"),
            std::string::npos)
      << r.output;
  r = embed_csv("dt2", "Date,time,a,b\n2020-01-01,09:30,1,2\n2020-01-02,16:00,2,3\n",
                " --columns a,b --time-column Date");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("the time column is"), std::string::npos) << r.output;
  // A bad value in the last record of a panel stops the run before any record is embedded: no
  // journal is left to refuse a plain rerun.
  write_file(t / "panel.csv",
             "sym,date,a,b\nA,2020-01-01,1,2\nA,2020-01-02,2,3\nB,2020-01-01,1,2\n"
             "B,2020-01-02,0,3\n");
  r = run(binary() + " embed --model " + t / "ts.h5" + " --input " + t / "panel.csv" +
          " --id-column sym --output " + t / "panel.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("record 'B': line 5, column 'a': log_return cannot take the value 0"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("record 1 "), std::string::npos) << r.output;  // none was embedded
  EXPECT_FALSE(exists(t / "panel.h5"));
  EXPECT_FALSE(exists(t / "panel.h5.parts"));
  write_file(t / "bad.csv", "date,a,b\n2020-01-01,1,2\n2020-01-02,1,zz\n");
  auto bad = binary() + " embed -q --model " + t / "ts.h5" + " --input " + t / "bad.csv" +
             " --output " + t / "x.h5";
  expect_failure(bad, t / "x.h5", "line 3");
  write_file(t / "nohdr.csv", "1,2,3\n4,5,6\n");
  expect_failure(binary() + " embed -q --model " + t / "ts.h5" + " --input " + t / "nohdr.csv" +
                     " --output " + t / "x.h5",
                 t / "x.h5", "header");
}

TEST(Cli, InspectRefusesForeignFiles) {
  TempDir t;
  write_file(t / "x.txt", "hello");
  auto r = run(binary() + " inspect " + t / "x.txt");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("x.txt"), std::string::npos);
  // An input given where a sparsa file goes (inspect, --model): said what it is.
  r = run(binary() + " inspect " + source_dir() + "/examples/lambda_virus.fa.gz");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("lambda_virus.fa.gz: not an HDF5 file, or it cannot be read (gzip-"
                          "compressed data: an input, not a sparsa file)"),
            std::string::npos)
      << r.output;
  write_file(t / "x.xz", std::string("\xFD"
                                     "7zXZ\0\0",
                                     8));
  r = run(binary() + " inspect " + t / "x.xz");
  EXPECT_NE(r.output.find("(xz-compressed data: an input, not a sparsa file)"), std::string::npos)
      << r.output;
  write_file(t / "a.fa", ">a\nACGT\n");
  r = run(binary() + " embed --model " + t / "a.fa" + " --input " + t / "a.fa" + " --output " +
          t / "o.h5");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(it begins as FASTA text does: an input, not a sparsa file)"),
            std::string::npos)
      << r.output;
  r = run(binary() + " inspect " + tiny_model());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("d_model 64"), std::string::npos);
  // A folder, and a checkpoint cut short: said what they are.
  r = run(binary() + " inspect " + t.str());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("a folder, not an HDF5 file"), std::string::npos) << r.output;
  {
    std::string bytes = read_file(tiny_model());
    write_file(t / "cut.h5", bytes.substr(0, bytes.size() / 2));
  }
  r = run(binary() + " inspect " + t / "cut.h5");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("truncated or damaged?"), std::string::npos) << r.output;
  // An embeddings file without complete = 1 is reported and fails the check.
  {
    auto f = h5::File::create(t / "partial.h5");
    f.set_attr("/", "format", std::string("sparsa-embeddings"));
    f.set_attr("/", "format_version", (int64_t)1);
    f.create_group("/records");
  }
  r = run(binary() + " inspect " + t / "partial.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("INCOMPLETE"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("sparsa: error: \n"), std::string::npos) << r.output;  // no empty line
  // A complete file whose records do not have the layout: each problem is named, exit 1; the
  // real output of a run passes.
  ASSERT_EQ(run(embed_cmd(lambda(), t / "good.h5", "--pool bin:1000")).code, 0);
  r = run(binary() + " inspect " + t / "good.h5");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("BAD"), std::string::npos) << r.output;
  // Several files: each under its name; one not a result (or not there) makes the exit 1, and
  // the files after it are still summarised.
  r = run(binary() + " inspect " + t / "good.h5" + " " + t / "partial.h5" + " " + t / "gone.h5" +
          " " + tiny_model());
  EXPECT_EQ(r.code, 1) << r.output;
  for (const std::string& f : {t / "good.h5", t / "partial.h5", t / "gone.h5", tiny_model()})
    EXPECT_NE(r.output.find("== " + f), std::string::npos) << f << "\n" << r.output;
  EXPECT_NE(r.output.find("INCOMPLETE"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("sparsa: error: " + t / "gone.h5" + ": no such file"), std::string::npos)
      << r.output;
  EXPECT_EQ(run(binary() + " inspect " + t / "good.h5" + " " + tiny_model()).code, 0);
  // Attributes that cannot be: a pool that is not one, a strand, and rows that are not the
  // pool's count for the record's length (49 of 48,502 tokens at bin:1000; 1 for mean).
  struct Bad {
    const char *obj, *attr, *value, *said;
  };
  for (const Bad& b :
       {Bad{"/", "pool", "banana", "BAD: pool 'banana' is not none, mean or bin:N"},
        Bad{"/", "pool", "bin:0", "BAD: pool 'bin:0' is not none"},
        Bad{"/", "pool", "", "BAD: pool '' is not none, mean or bin:N"},
        Bad{"", "strand", "x", "strand is 'x', not '+' or 'rc-average'"},
        Bad{"/", "pool", "mean", "embedding has 49 rows, not the 1 of length 48502"},
        Bad{"/", "pool", "bin:64", "not the 758 of length 48502 with pool bin:64"}}) {
    const std::string p = t / "attr.h5";
    std::filesystem::remove(p);
    std::filesystem::copy_file(t / "good.h5", p);
    {
      h5::File f = h5::File::open_rw(p);
      const std::string obj = *b.obj ? std::string(b.obj) : "/records/" + f.list("/records").at(0);
      ASSERT_GE(H5Adelete_by_name(f.id(), obj.c_str(), b.attr, H5P_DEFAULT), 0);
      f.set_attr(obj, b.attr, std::string(b.value));
    }
    r = run(binary() + " inspect " + p);
    EXPECT_EQ(r.code, 1) << b.value << ": " << r.output;
    EXPECT_NE(r.output.find(b.said), std::string::npos) << b.value << ": " << r.output;
  }
  // A file attribute of another type is said as itself (not blamed on the pool), the listing
  // goes on.
  for (const char* attr : {"dtype", "pool"}) {
    const std::string p = t / "type.h5";
    std::filesystem::remove(p);
    std::filesystem::copy_file(t / "good.h5", p);
    {
      h5::File f = h5::File::open_rw(p);
      ASSERT_GE(H5Adelete_by_name(f.id(), "/", attr, H5P_DEFAULT), 0);
      f.set_attr("/", attr, (int64_t)3);
    }
    r = run(binary() + " inspect " + p);
    EXPECT_EQ(r.code, 1) << attr << ": " << r.output;
    EXPECT_NE(r.output.find("BAD: " + std::string(attr) + " is not a string"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("(unreadable)"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("sparsa: error"), std::string::npos) << r.output;
  }
  // Values that cannot be: bins that do not tile the record, global positions out of order or
  // outside it; a missing name said once (as BAD, the listing going on), not also as an error.
  struct BadData {
    const char* dataset;
    void (*change)(std::vector<int64_t>&);
    const char* said;
  };
  for (const BadData& b :
       {BadData{"bin_start", [](std::vector<int64_t>& v) { v[3] = 7; },
                "bin 3 [7, 4000) does not start where bin 2 ends (3000)"},
        BadData{"bin_end", [](std::vector<int64_t>& v) { v.back() += 5; },
                "the bins cover 48507 positions, not the record's length 48502"},
        BadData{"bin_end", [](std::vector<int64_t>& v) { v[10] -= 1; },
                "bin 10 [10000, 10999) holds 999 positions, not 1000 (pool bin:1000)"},
        BadData{"global_positions", [](std::vector<int64_t>& v) { std::swap(v[0], v[1]); },
                "global_positions[0, 1] = "},
        BadData{"global_positions", [](std::vector<int64_t>& v) { v[2] = 48502; },
                "] = 48502 is outside the record (length 48502)"},
        BadData{nullptr, nullptr, "attribute 'name' is missing"}}) {
    const std::string p = t / "data.h5";
    std::filesystem::remove(p);
    std::filesystem::copy_file(t / "good.h5", p);
    {
      h5::File f = h5::File::open_rw(p);
      const std::string g = "/records/" + f.list("/records").at(0);
      if (!b.dataset) {
        ASSERT_GE(H5Adelete_by_name(f.id(), g.c_str(), "name", H5P_DEFAULT), 0);
      } else {
        const std::string obj = g + "/" + b.dataset;
        std::vector<int64_t> v = f.read_i64(obj);
        b.change(v);
        h5::Handle ds(H5Dopen2(f.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
        ASSERT_GE(H5Dwrite(ds.id(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), 0);
      }
    }
    r = run(binary() + " inspect " + p);
    EXPECT_EQ(r.code, 1) << b.said << ": " << r.output;
    EXPECT_NE(r.output.find(b.said), std::string::npos) << b.said << ": " << r.output;
    EXPECT_EQ(r.output.find("sparsa: error"), std::string::npos) << r.output;
    if (!b.dataset) EXPECT_NE(r.output.find("name=(missing)"), std::string::npos) << r.output;
  }
  // A NaN or Inf in the rows or the global scores: not a result (spec 2), named by its place;
  // float16 rows too (judged by their bits, not converted).
  ASSERT_EQ(run(embed_cmd(lambda(), t / "good16.h5", "--pool bin:1000 --dtype f16")).code, 0);
  for (const auto& [file, dataset, value, said] :
       {std::tuple{"good.h5", "embedding", NAN, "embedding[3, 5] is not finite"},
        {"good16.h5", "embedding", -INFINITY, "embedding[3, 5] is not finite"},
        {"good.h5", "global_scores", INFINITY, "global_scores[1, 2] is not finite"}}) {
    const std::string p = t / "nan.h5";
    std::filesystem::remove(p);
    std::filesystem::copy_file(t / file, p);
    {
      h5::File f = h5::File::open_rw(p);
      const std::string obj = first_key(f) + "/" + dataset;
      h5::Handle ds(H5Dopen2(f.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
      h5::Handle fs(H5Dget_space(ds.id()), H5Sclose);
      const hsize_t at[2] = {std::string(dataset) == "embedding" ? 3u : 1u,
                             std::string(dataset) == "embedding" ? 5u : 2u},
                    one[2] = {1, 1};
      h5::Handle ms(H5Screate_simple(2, one, nullptr), H5Sclose);
      ASSERT_GE(H5Sselect_hyperslab(fs.id(), H5S_SELECT_SET, at, nullptr, one, nullptr), 0);
      const float v = value;
      ASSERT_GE(H5Dwrite(ds.id(), H5T_NATIVE_FLOAT, ms.id(), fs.id(), H5P_DEFAULT, &v), 0);
    }
    r = run(binary() + " inspect " + p);
    EXPECT_EQ(r.code, 1) << said << ": " << r.output;
    EXPECT_NE(r.output.find(said), std::string::npos) << r.output;
  }
  // A later format_version is not judged a result (as a checkpoint's is refused).
  std::filesystem::copy_file(t / "good.h5", t / "v2.h5");
  h5::File::open_rw(t / "v2.h5").set_attr("/", "format_version", (int64_t)2);
  r = run(binary() + " inspect " + t / "v2.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("BAD: format_version 2, this sparsa reads version 1"), std::string::npos)
      << r.output;
  // Integer attributes must be integers: a float complete = 1.9 (or format_version = 1.0) is not
  // taken for 1 (docs/cli.md, inspect).
  for (auto [attr, value] : {std::pair{"complete", 1.9}, {"format_version", 1.0}}) {
    const std::string p = t / (std::string("float-") + attr + ".h5");
    std::filesystem::copy_file(t / "good.h5", p);
    {
      h5::File f = h5::File::open_rw(p);
      ASSERT_GE(H5Adelete(f.id(), attr), 0);
      h5::Handle s(H5Screate(H5S_SCALAR), H5Sclose);
      h5::Handle a(H5Acreate2(f.id(), attr, H5T_IEEE_F64LE, s.id(), H5P_DEFAULT, H5P_DEFAULT),
                   H5Aclose);
      ASSERT_GE(H5Awrite(a.id(), H5T_NATIVE_DOUBLE, &value), 0);
    }
    r = run(binary() + " inspect " + p);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find(std::string("attribute '") + attr + "' is not an integer"),
              std::string::npos)
        << r.output;
  }
  auto bad_file = [&](const std::string& name, auto&& fill, bool described = true) {
    auto f = h5::File::create(t / name);
    f.set_attr("/", "format", std::string("sparsa-embeddings"));
    f.set_attr("/", "format_version", (int64_t)1);
    f.set_attr("/", "dtype", std::string("float16"));
    const std::string g = "/records/000000_a";
    f.create_group("/records");
    f.create_group(g);
    for (const char* a : {"name", "source", "kind", "region"}) f.set_attr(g, a, std::string("a"));
    f.set_attr(g, "strand", std::string("+"));
    if (described) f.set_attr(g, "description", std::string("a"));
    f.set_attr(g, "length", (int64_t)4);
    const std::vector<float> rows(8, 0.5f);
    const std::vector<int64_t> bins = {0, 2, 4};  // [0, 2) and [2, 4): starts, then ends
    fill(f, g, rows, bins);
    f.set_attr("/", "complete", (int64_t)1);
  };
  bad_file("f32rows.h5", [](h5::File& f, const std::string& g, const std::vector<float>& rows,
                            const std::vector<int64_t>& bins) {
    f.write_f32(g + "/embedding", {2, 4}, rows.data());  // float32 in a "float16" file
    f.write_i64(g + "/bin_start", {2}, bins.data());
    f.write_i64(g + "/bin_end", {2}, bins.data() + 1);
  });
  r = run(binary() + " inspect " + t / "f32rows.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("embedding is float32, the file says float16"), std::string::npos)
      << r.output;
  bad_file("nobins.h5", [](h5::File& f, const std::string& g, const std::vector<float>& rows,
                           const std::vector<int64_t>&) {
    f.write_f32(g + "/embedding", {2, 4}, rows.data(), h5::Dtype::kF16);
  });
  r = run(binary() + " inspect " + t / "nobins.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("bin_start is missing"), std::string::npos) << r.output;
  // Spec 4's description attribute, and the global sets' [layers, G] against the file's model
  // (dna-tiny: d_model 64, 2 layers; G of length 4 is 1): one layer row too many is refused.
  const std::string config = read_file(tiny_config());
  for (int64_t layers : {2, 3})
    for (bool described : {true, false}) {
      const std::string name = "g" + std::to_string(layers) + (described ? "" : "-nodesc") + ".h5";
      bad_file(
          name,
          [&](h5::File& f, const std::string& g, const std::vector<float>&,
              const std::vector<int64_t>& bins) {
            f.set_attr("/", "model_config", config);
            const std::vector<float> rows(2 * 64, 0.5f);
            f.write_f32(g + "/embedding", {2, 64}, rows.data(), h5::Dtype::kF16);
            f.write_i64(g + "/bin_start", {2}, bins.data());
            f.write_i64(g + "/bin_end", {2}, bins.data() + 1);
            const std::vector<int64_t> pos(layers, 1);
            const std::vector<float> score(layers, 0.5f);
            f.write_i64(g + "/global_positions", {layers, 1}, pos.data());
            f.write_f32(g + "/global_scores", {layers, 1}, score.data());
          },
          described);
      r = run(binary() + " inspect " + t / name);
      SCOPED_TRACE(name);
      if (!described) {
        EXPECT_EQ(r.code, 1) << r.output;
        EXPECT_NE(r.output.find("attribute 'description' is missing"), std::string::npos)
            << r.output;
      } else if (layers == 3) {
        EXPECT_EQ(r.code, 1) << r.output;
        EXPECT_NE(r.output.find("global_positions is [3, 1], not [2, 1]"), std::string::npos)
            << r.output;
      } else {
        EXPECT_EQ(r.code, 0) << r.output;
      }
    }
}

TEST(Cli, DocsSnippetReadsWithH5py) {
  TempDir t;
  ASSERT_EQ(run(embed_cmd(lambda(), t / "e.h5", "--pool bin:128")).code, 0);
  // The snippet of docs/formats.md, run as written with the file name substituted.
  std::ifstream doc(source_dir() + "/docs/formats.md");
  std::string text((std::istreambuf_iterator<char>(doc)), {});
  const auto a = text.find("```python\n"), b = text.find("```", a + 10);
  ASSERT_NE(a, std::string::npos) << "docs/formats.md has no python snippet";
  std::string code = text.substr(a + 10, b - a - 10);
  for (size_t p; (p = code.find("embeddings.h5")) != std::string::npos;)
    code.replace(p, 13, t / "e.h5");
  write_file(t / "snippet.py", code);
  // Debian's python3 (the one python3-h5py installs into), not a python first on PATH.
  auto r = run("/usr/bin/python3 " + t / "snippet.py");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(379, 64) float16"), std::string::npos) << r.output;
  // A time series: its timestamps read as text.
  ASSERT_NE(init_ts_model(t, 4, 100, 1), "");
  ASSERT_EQ(run(binary() + " embed -q --model " + t / "ts.h5" + " --input " +
                data_file("timeseries/msft_daily_ohlcv.csv") + " --columns close --pool bin:10" +
                " --output " + t / "ts-e.h5")
                .code,
            0);
  for (size_t p; (p = code.find(t / "e.h5")) != std::string::npos;)
    code.replace(p, (t / "e.h5").size(), t / "ts-e.h5");
  write_file(t / "snippet.py", code);
  r = run("/usr/bin/python3 " + t / "snippet.py");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("msft_daily_ohlcv 249 (25, 32) float16"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2000-09-27 2001-09-"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("b'"), std::string::npos) << r.output;  // text, not bytes
}

// What a stopped run leaves, given to inspect: OUT.h5.tmp (an HDF5 file without sparsa's
// attributes: it said "not one of sparsa's"), a journal part's .tmp, and the journal folder
// itself ("a folder, not an HDF5 file"): each is said to be a stopped run's, with what the
// journal's MANIFEST says of the run, and exit 1.
TEST(Cli, InspectSaysWhatAStoppedRunLeft) {
  TempDir t;
  { h5::File::create(t / "out.h5.tmp"); }
  auto r = run(binary() + " inspect " + t / "out.h5.tmp");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("a file that a sparsa run was writing when it stopped, not a result"),
            std::string::npos)
      << r.output;
  // ... also one cut short where it stopped (it does not open as HDF5), and one with the file's
  // attributes but no complete = 1 yet.
  write_file(t / "cut.h5.tmp", std::string("\x89HDF\r\n\x1a\n", 8) + "cut");
  r = run(binary() + " inspect " + t / "cut.h5.tmp");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("was writing when it stopped"), std::string::npos) << r.output;
  {
    auto f = h5::File::create(t / "attrs.h5.tmp");
    f.set_attr("/", "format", std::string("sparsa-embeddings"));
  }
  r = run(binary() + " inspect " + t / "attrs.h5.tmp");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("was writing when it stopped"), std::string::npos) << r.output;
  // A journal: a run that failed at its last record keeps the others.
  write_file(t / "in.fa", random_fasta(3, 300) + ">bad\nAC!T\n");
  r = run(embed_cmd(t / "in.fa", t / "out.h5", "--pool mean"));
  ASSERT_EQ(r.code, 1) << r.output;
  ASSERT_TRUE(std::filesystem::is_directory(t / "out.h5.parts"));
  for (const std::string& dir : {t / "out.h5.parts", t / "out.h5.parts/"}) {
    r = run(binary() + " inspect " + dir);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find(t / "out.h5.parts: the journal (a folder) of a sparsa run that has "
                                "not finished " +
                            t / "out.h5 (inputs " + t / "in.fa" + "; pool mean; dtype f16; "),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  }
  r = run(binary() + " inspect " + t / "out.h5");
  EXPECT_NE(r.output.find("has not finished it (inputs " + t / "in.fa"), std::string::npos)
      << r.output;
  // A --force run that failed after its journal began: the old file's place is said too.
  ASSERT_EQ(run(embed_cmd(lambda(), t / "old.h5", "--pool mean")).code, 0);
  r = run(embed_cmd(t / "in.fa", t / "old.h5", "--pool mean --force"));
  ASSERT_EQ(r.code, 1) << r.output;
  r = run(binary() + " inspect " + t / "old.h5");
  EXPECT_NE(r.output.find("(the old file, set aside by --force, is " + t / "old.h5.parts" +
                          "/PREVIOUS_OUTPUT until then)"),
            std::string::npos)
      << r.output;
  { h5::File::create(t / "out.h5.parts/000009.h5.tmp"); }
  r = run(binary() + " inspect " + t / "out.h5.parts/000009.h5.tmp");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("a journal part that a sparsa run was writing when it stopped"),
            std::string::npos)
      << r.output;
}

// A name repeated within a FASTA is refused; across inputs both records are embedded, and now a
// warning names the two files (it went without a word). Reads of two FASTQ files (mates) are
// not checked.
TEST(Cli, SameNameInTwoInputsIsWarned) {
  TempDir t;
  write_file(t / "a.fa", ">dup\nACGTACGT\n>x\nACGT\n");
  write_file(t / "b.fa", ">y\nACGT\n>dup\nACGTAA\n");
  auto r = run(embed_cmd(t / "a.fa", t / "ab.h5", "--pool mean --input " + t / "b.fa"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + t / "b.fa" + ": record 'dup': " + t / "a.fa" +
                          " has a record of that name too"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(count_in(r.output, "has a record of that name too"), 1u) << r.output;
  EXPECT_EQ(h5::File::open_read(t / "ab.h5").list("/records").size(), 4u);
  write_file(t / "r1.fq", "@p1\nACGT\n+\nIIII\n");
  write_file(t / "r2.fq", "@p1\nTTGA\n+\nIIII\n");
  r = run(embed_cmd(t / "r1.fq", t / "fq.h5", "--pool mean --input " + t / "r2.fq"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("has a record of that name too"), std::string::npos) << r.output;
}
