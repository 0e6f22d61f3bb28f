// Split records on GPUs: `mpirun -np P sparsa embed --device cuda` must give bit for bit the file
// of one rank (bf16 mode), through the paths a split record takes in the CUDA backend: the edge
// windows, halos from one or two neighbours, shards without interior rows, the global rows' K/V
// projected from x, causal and bidirectional, --rc-average pooled on the device, and per-token
// float16 rows averaged over both strands and converted on the device, gathered by rank 0 when
// HDF5 is serial (each rank's rows are its shard's, so no rank sees the others'). The exchanges go
// through the host (SPARSA_NCCL=0), so every rank may share one GPU; NCCL needs a GPU per rank
// (scripts/device-e2e.sh checks that on a 4-GPU machine). Skipped without a usable GPU.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <random>

#include "../unit/test_util.hpp"
#include "mpi_test_util.hpp"
#ifdef SPARSA_HAVE_CUDA
#include "backends/cuda/cuda_backend.hpp"
#endif

using namespace sparsa::testing;

namespace {

bool gpu_usable(std::string* why) {
#ifdef SPARSA_HAVE_CUDA
  return sparsa::cuda_available(why);
#else
  *why = "built without CUDA";
  return false;
#endif
}

#define SKIP_WITHOUT_GPU()                                           \
  do {                                                               \
    std::string why;                                                 \
    if (!gpu_usable(&why)) GTEST_SKIP() << "no usable GPU: " << why; \
  } while (0)

// Host staging, and the library path of a carried build, on every rank.
std::string mpirun_host_staged(int np) {
  std::string cmd = mpirun(np) + "-x SPARSA_NCCL=0 ";
  if (std::getenv("LD_LIBRARY_PATH")) cmd += "-x LD_LIBRARY_PATH ";
  return cmd;
}

// head_dim 64 (the tensor-core kernels), window 256: lambda's shards have interior rows; the
// 700-token records split 3 ways (~233 rows a shard) have none and take halo rows from 2 peers.
std::string model(const TempDir& t, const std::string& name, bool causal) {
  return make_model(t, name,
                    std::string("[model]\nkind = \"dna\"\nd_model = 128\nn_layers = 2\n"
                                "n_heads = 2\nd_ff = 256\nwindow = 256\nglobal_every = 128\n"
                                "global_max = 256\nrouter_hidden = 16\ncausal = ") +
                        (causal ? "true" : "false") + "\n");
}

std::string short_records(const TempDir& t) {
  std::mt19937 g(3);
  std::string fa;
  for (int rec = 0; rec < 2; ++rec) {
    fa += ">short" + std::to_string(rec) + "\n";
    for (int i = 0; i < 700; ++i) fa += "ACGT"[g() % 4];
    fa += "\n";
  }
  write_file(t / "short.fa", fa);
  return t / "short.fa";
}

// `count` reads of 1 to 200 bases, every tenth up to 900; some with N.
std::string reads(int count, unsigned seed) {
  std::mt19937 g(seed);
  std::string fa;
  for (int i = 0; i < count; ++i) {
    const int n = 1 + (int)(g() % (i % 10 == 0 ? 900 : 200));
    fa += ">read" + std::to_string(i) + " sample " + std::to_string(i % 3) + "\n";
    for (int j = 0; j < n; ++j) fa += "ACGTN"[g() % (i % 7 == 0 ? 5 : 4)];
    fa += "\n";
  }
  return fa;
}
void same_on_ranks(const TempDir& t, const std::string& args, std::vector<int> ranks) {
  expect_same_on_ranks(
      t, "g", binary() + " embed -q --force --device cuda " + args + " --split-min 100 --output ",
      ranks, mpirun_host_staged);
}

}  // namespace

TEST(MpiGpu, SplitRecordsBitIdenticalToOneRank) {
  SKIP_WITHOUT_GPU();
  TempDir t;
  const std::string bi = model(t, "bi", false), ca = model(t, "ca", true);
  const std::string inputs =
      "--input " + source_dir() + "/examples/lambda_virus.fa.gz --input " + short_records(t);
  same_on_ranks(t, "--model " + bi + " " + inputs + " --dtype f32 --pool none", {2, 3});
  same_on_ranks(t, "--model " + ca + " " + inputs + " --dtype f32 --pool none", {3});
  same_on_ranks(t, "--model " + bi + " " + inputs + " --dtype f32 --rc-average --pool bin:100",
                {2});
  same_on_ranks(t, "--model " + bi + " " + inputs + " --dtype f16 --rc-average --pool none", {2});
}

// Two ranks on one GPU (here by showing both only GPU 0): NCCL would refuse them ("Duplicate GPU
// detected") at the first split record; sparsa finds them first, says so once, and exchanges
// through the host: the same file as one rank.
TEST(MpiGpu, RanksSharingAGpuExchangeThroughTheHost) {
  SKIP_WITHOUT_GPU();
  TempDir t;
  const std::string bi = model(t, "bi", false);
  const std::string embed = binary() + " embed -q --force --device cuda --split-min 100 --model " +
                            bi + " --input " + source_dir() +
                            "/examples/lambda_virus.fa.gz --dtype f32 --pool bin:100 --output ";
  auto r = run("CUDA_VISIBLE_DEVICES=0 " + embed + t / "one.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  std::string cmd = mpirun(2) + "-x CUDA_VISIBLE_DEVICES=0 ";
  if (std::getenv("LD_LIBRARY_PATH")) cmd += "-x LD_LIBRARY_PATH ";
  r = run(cmd + embed + t / "two.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(count_in(r.output, "ranks 0 and 1 share GPU "), 1u) << r.output;
  EXPECT_NE(r.output.find("through the host over MPI"), std::string::npos) << r.output;
  expect_same_contents(t / "one.h5", t / "two.h5");
}

// Ranks that disagree on having a GPU (here rank 1 is shown none): with --device auto every rank
// uses its CPU, said once, and the file is the one-rank CPU file (no mix of bf16 GPU rows and
// float32 CPU rows); with --device cuda the run is refused on every rank (exit 2).
TEST(MpiGpu, RanksWithoutAGpuMakeEveryRankUseItsCpu) {
  SKIP_WITHOUT_GPU();
  TempDir t;
  const std::string bi = model(t, "bi", false);
  const std::string embed = binary() + " embed -q --force --split-min 100 --model " + bi +
                            " --input " + source_dir() + "/examples/lambda_virus.fa.gz --input " +
                            short_records(t) + " --dtype f32 --pool bin:100 --output ";
  auto r = run(embed + t / "cpu.h5" + " --device cpu");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string ld = std::getenv("LD_LIBRARY_PATH") ? "-x LD_LIBRARY_PATH " : "";
  auto mixed = [&](const std::string& out, const std::string& device) {
    const std::string e = embed + out + " --device " + device;
    return run(mpirun(1) + "-x CUDA_VISIBLE_DEVICES=0 " + ld + e + " : -np 1 " +
               "-x CUDA_VISIBLE_DEVICES= " + ld + e);
  };
  r = mixed(t / "auto.h5", "auto");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(count_in(r.output, "1 of 2 ranks have no usable GPU, so every rank uses its CPU"), 1u)
      << r.output;
  expect_same_contents(t / "cpu.h5", t / "auto.h5");
  // Resumed the same way, the output is this run's (every rank's manifest names the CPU)
  r = mixed(t / "auto.h5", "auto --resume");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("is already complete"), std::string::npos) << r.output;
  r = mixed(t / "cuda.h5", "cuda");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--device cuda: 1 of 2 ranks have no usable GPU"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(t / "cuda.h5"));
}

// Short records on a GPU go through packed passes (CudaModel::forward_packed); each record's
// output is the one it gets alone: SPARSA_PACKED=0 (models side by side) and SPARSA_SIDE_BY_SIDE=0
// (one after another) give the same file, and so does packing only reads of up to 150 bases
// (SPARSA_PACKED_MAX), with and without --rc-average, rows or bins, bidirectional and causal; 2
// ranks (the records spread whole, each rank packing its share) too.
TEST(MpiGpu, PackedShortRecordsAreTheRecordsAlone) {
  SKIP_WITHOUT_GPU();
  TempDir t;
  const std::string bi = model(t, "bi", false), ca = model(t, "ca", true);
  write_file(t / "reads.fa", reads(400, 5));
  const std::vector<std::pair<std::string, std::string>> runs = {
      {bi, "--pool mean --dtype f32"},
      {bi, "--pool none --dtype f16"},
      {bi, "--rc-average --pool bin:50 --dtype f32"},
      {bi, "--rc-average --pool none --dtype f16"},
      {ca, "--pool bin:64 --dtype f32"}};
  int k = 0;
  for (const auto& [m, args] : runs) {
    SCOPED_TRACE(args);
    const std::string embed = binary() + " embed --force --device cuda --model " + m + " --input " +
                              t / "reads.fa" + " " + args + " --output ";
    const std::string tag = "p" + std::to_string(k++);
    auto r = run(embed + t / (tag + "packed.h5"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("short records: packed"), std::string::npos) << r.output;
    r = run("SPARSA_PACKED=0 " + embed + t / (tag + "side.h5"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output.find("short records: packed"), std::string::npos) << r.output;
    r = run("SPARSA_SIDE_BY_SIDE=0 " + embed + t / (tag + "alone.h5"));
    ASSERT_EQ(r.code, 0) << r.output;
    // Reads of more than 150 bases one at a time among the packed ones (as on GPUs that pack
    // shorter records than an H200)
    r = run("SPARSA_PACKED_MAX=150 " + embed + t / (tag + "mixed.h5"));
    ASSERT_EQ(r.code, 0) << r.output;
    expect_same_contents(t / (tag + "packed.h5"), t / (tag + "side.h5"));
    expect_same_contents(t / (tag + "packed.h5"), t / (tag + "alone.h5"));
    expect_same_contents(t / (tag + "packed.h5"), t / (tag + "mixed.h5"));
  }
  expect_same_on_ranks(t, "ranks",
                       binary() + " embed -q --force --device cuda --model " + bi + " --input " +
                           t / "reads.fa" + " --rc-average --pool bin:50 --output ",
                       {2}, mpirun_host_staged);
}

// A packed pass that does not fit on the GPU (here SPARSA_GPU_MEMORY makes the GPU as small as
// 96 MB: a model's weights and buffers fit, a pass of 2,000 reads, ~270,000 rows, does not) is
// said, and the records go one model at a time: the same file. A bad SPARSA_GPU_MEMORY is a usage
// error.
TEST(MpiGpu, PackThatDoesNotFitFallsBackToTheSameFile) {
  SKIP_WITHOUT_GPU();
  TempDir t;
  const std::string bi = model(t, "bi", false);
  write_file(t / "reads.fa", reads(2000, 7));
  const std::string embed = binary() + " embed --force --device cuda --model " + bi + " --input " +
                            t / "reads.fa" + " --pool mean --dtype f32 --output ";
  auto r = run(embed + t / "packed.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("short records: packed"), std::string::npos) << r.output;
  r = run("SPARSA_GPU_MEMORY=96M " + embed + t / "small.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("short records: one pass over many did not fit on the GPU (CUDA out "
                          "of memory: "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("SPARSA_GPU_MEMORY's 100663296"), std::string::npos) << r.output;
  expect_same_contents(t / "packed.h5", t / "small.h5");
  r = run("SPARSA_GPU_MEMORY=lots " + embed + t / "bad.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("SPARSA_GPU_MEMORY=lots: not a number of bytes"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(t / "bad.h5"));
}

// A packed run stopped (SIGTERM once its first records are in the journal) exits 75 and keeps
// them; --resume finishes it, and the file is the uninterrupted run's.
TEST(MpiGpu, PackedRunStoppedResumesToTheSameFile) {
  SKIP_WITHOUT_GPU();
  TempDir t;
  const std::string bi = model(t, "bi", false);
  write_file(t / "reads.fa", reads(12000, 11));
  std::vector<std::string> a = {binary(),  "embed",   "--device",     "cuda",   "--model",
                                bi,        "--input", t / "reads.fa", "--pool", "bin:40",
                                "--dtype", "f32",     "--output"};
  const std::string cmd = [&] {
    std::string c;
    for (const auto& x : a) c += x + " ";
    return c;
  }();
  auto r = run(cmd + t / "whole.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");
  a.push_back(t / "out.h5");
  const pid_t pid = spawn(a, t / "log");
  ASSERT_TRUE(wait_for_parts(t / "out.h5.parts", 1, pid)) << read_file(t / "log");
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 75) << read_file(t / "log");
  const std::string log = read_file(t / "log");
  EXPECT_NE(log.find("short records: packed"), std::string::npos) << log;
  const int kept = count_parts(t / "out.h5.parts");
  EXPECT_GT(kept, 0);
  EXPECT_FALSE(std::filesystem::exists(t / "out.h5"));
  r = run(cmd + t / "out.h5 --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_contents(t / "whole.h5", t / "out.h5");
}
