// Sequence parallelism: `mpirun -np P sparsa embed` must give bit-for-bit the same file contents
// (every dataset of every record) as one process, for P = 2, 3, 4 and uneven shards.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "../unit/compare_h5.hpp"
#include "../unit/test_util.hpp"
#include "io/h5.hpp"
#include "mpi_test_util.hpp"

using namespace sparsa::testing;
namespace h5 = sparsa::h5;

namespace {

struct Scenario {
  std::string model, inputs, extra;
};

void check_invariance(const TempDir& t, const Scenario& s, std::vector<int> ranks) {
  expect_same_on_ranks(t, "p",
                       binary() + " embed -q --force --threads 1 --dtype f32 --model " + s.model +
                           " " + s.inputs + " " + s.extra + " --output ",
                       ranks, mpirun);
}

std::string tiny(int window = 16, bool causal = false) {
  return "[model]\nkind = \"dna\"\nd_model = 32\nn_layers = 2\nn_heads = 2\nd_ff = 64\n"
         "global_every = 512\nglobal_max = 64\nrouter_hidden = 8\nwindow = " +
         std::to_string(window) + "\ncausal = " + (causal ? "true" : "false") + "\n";
}

}  // namespace

TEST(MpiInvariance, LambdaAllPoolsAndRc) {
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  const std::string lambda = "--input " + source_dir() + "/examples/lambda_virus.fa.gz";
  // --split-min 1000: lambda (48,502 tokens) is split over all ranks.
  check_invariance(t, {model, lambda, "--split-min 1000"}, {2, 3, 4});
  check_invariance(t, {model, lambda, "--split-min 1000 --rc-average --pool bin:1000"}, {3});
  check_invariance(t, {model, lambda, "--split-min 1000 --pool mean"}, {4});
  // The equalities above would hold as well if nothing were split: every rank really sent halos
  // (the record was split over all three), and none does when the record stays whole.
  for (const bool split : {true, false}) {
    auto r =
        run("SPARSA_COMM_STATS=1 " + mpirun(3) + binary() + " embed -q --force --model " + model +
            " " + lambda + (split ? " --split-min 1000" : "") + " --output " + t / "stats.h5");
    ASSERT_EQ(r.code, 0) << r.output;
    for (int rank = 0; rank < 3; ++rank) {
      const std::string key = "rank " + std::to_string(rank) + ": sent ";
      const size_t at = r.output.find(key);
      ASSERT_NE(at, std::string::npos) << r.output;
      const long long halo = std::stoll(r.output.substr(at + key.size()));
      if (split)
        EXPECT_GT(halo, 0) << "rank " << rank << ": " << r.output;
      else
        EXPECT_EQ(halo, 0) << "rank " << rank << ": " << r.output;
    }
  }
}

TEST(MpiInvariance, SerialHdf5Fallback) {
  // Rank 0 gathers the rows and writes alone (what a serial-HDF5 build does).
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  const std::string lambda = "--input " + source_dir() + "/examples/lambda_virus.fa.gz";
  setenv("SPARSA_HDF5_SERIAL", "1", 1);
  check_invariance(t, {model, lambda, "--split-min 1000 --pool bin:7"}, {3});
  // The rows reach rank 0 in messages of at most 1 GiB (MPI counts are int): here 4 KB, so each
  // rank's 2-3 MB of rows comes in hundreds of pieces.
  setenv("SPARSA_MPI_MAX_MESSAGE", "4096", 1);
  check_invariance(t, {model, lambda, "--split-min 1000 --pool none"}, {2});
  unsetenv("SPARSA_MPI_MAX_MESSAGE");
  // The fallback really ran: the run says which writer it used.
  auto r = run(mpirun(2) + binary() + " embed --force --model " + model + " " + lambda +
               " --split-min 1000 --output " + t / "serial.h5");
  unsetenv("SPARSA_HDF5_SERIAL");
  EXPECT_NE(r.output.find("serial HDF5, rank 0 gathers"), std::string::npos) << r.output;
  r = run(mpirun(2) + binary() + " embed --force --model " + model + " " + lambda +
          " --split-min 1000 --output " + t / "parallel.h5");
  EXPECT_NE(r.output.find("parallel HDF5"), std::string::npos) << r.output;
  // Set on rank 1 alone (mpirun over ssh without -x): rank 0's choice is every rank's, not two
  // writers that wait in different collectives.
  const std::string args = " embed --force --threads 1 --model " + model + " " + lambda +
                           " --split-min 1000 --output " + t / "mixed.h5";
  r = run(mpirun(1) + binary() + args + " : -np 1 env SPARSA_HDF5_SERIAL=1 " + binary() + args);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("parallel HDF5"), std::string::npos) << r.output;
  expect_same_contents(t / "parallel.h5", t / "mixed.h5");
}

// An output path holding ':' (chr1:1-100.h5, or a folder named so): ROMIO took the text before
// the ':' for a file-system type and refused the parallel file of a split record ("cannot create
// HDF5 file in parallel"). It is written, as one process writes it.
TEST(MpiInvariance, OutputPathWithAColon) {
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  std::filesystem::create_directories(t / "co:lon");
  const std::string cmd = binary() + " embed -q --threads 1 --dtype f32 --split-min 1000 --model " +
                          model + " --input " + source_dir() +
                          "/examples/lambda_virus.fa.gz --output ";
  auto r = run(cmd + t / "one.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const std::string out : {t / "chr1:1-48502.h5", t / "co:lon/out.h5"}) {
    r = run(mpirun(2) + cmd + "'" + out + "'");
    ASSERT_EQ(r.code, 0) << r.output;
    expect_same_contents(out, t / "one.h5");
  }
}

TEST(MpiInvariance, CausalWindowWiderThanShard) {
  TempDir t;
  // window 64 > shard of 100 / 4 = 25 tokens: halos come from several ranks.
  const std::string model = make_model(t, "w", tiny(64));
  std::string seq;
  for (int i = 0; i < 100; ++i) seq += "ACGTTGCAAG"[(i * 7) % 10];
  write_file(t / "s.fa", ">short\n" + seq + "\n");
  check_invariance(t, {model, "--input " + t / "s.fa", "--split-min 1"}, {2, 3, 4});
  const std::string causal = make_model(t, "c", tiny(40, true));
  check_invariance(t, {causal, "--input " + t / "s.fa", "--split-min 1"}, {3, 4});
  // window 0 (W(i) = {i}): no halo at all.
  const std::string zero = make_model(t, "z", tiny(0));
  check_invariance(t, {zero, "--input " + t / "s.fa", "--split-min 1"}, {3});
}

TEST(MpiInvariance, ManyShortRecordsAndOneLong) {
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  std::string fa;
  for (int r = 0; r < 12; ++r) {
    fa += ">rec" + std::to_string(r) + " short record\n";
    for (int i = 0; i < 1 + r * 13; ++i) fa += "ACGTN"[(i + r) % 5];  // 1, 14, 27, ... tokens
    fa += "\n";
  }
  write_file(t / "short.fa", fa);
  const std::string inputs =
      "--input " + t / "short.fa" + " --input " + source_dir() + "/examples/lambda_virus.fa.gz";
  // Default: every record is short, so each goes whole to one rank (balanced by length) ...
  check_invariance(t, {model, inputs, ""}, {2, 4});
  // ... and with --split-min 20 the long ones are split while the shortest stay whole.
  check_invariance(t, {model, inputs, "--split-min 20"}, {3});
}

TEST(MpiInvariance, TimeSeries) {
  TempDir t;
  const std::string model = make_model(
      t, "ts",
      "[model]\nkind = \"timeseries\"\nd_model = 32\nn_layers = 2\nn_heads = 2\nd_ff = 64\n"
      "window = 8\ncausal = true\nglobal_every = 1000\nglobal_max = 32\nrouter_hidden = 8\n"
      "channels = 1\nts_bins = 64\nts_transform = \"log_return\"\n");
  // USD/CHF (62,496 rows) from the shared data; without it (a plain clone), MSFT's 249 days from
  // examples/, split at 50 rows.
  const std::string usdchf = data_file("timeseries/usdchf_30min.csv");
  if (!usdchf.empty())
    check_invariance(t, {model, "--input " + usdchf, "--pool bin:48 --split-min 1000"}, {2, 3});
  const std::string msft = data_file("timeseries/msft_daily_ohlcv.csv");
  ASSERT_FALSE(msft.empty());
  check_invariance(
      t, {model, "--input " + msft + " --columns close", "--pool bin:8 --split-min 50"}, {2, 3});
}

// Time series: rank 0 alone reads the CSVs and sends each record to the others (a panel CSV is
// not parsed whole by every rank). Here every rank but 0 runs in a folder where the input's
// relative path names another file, a CSV with a bad value: a rank that read its own would stop
// the run. The file is still one rank's, for a panel whose long series is split over the ranks
// and whose short ones are embedded whole, one rank each.
TEST(MpiInvariance, TimeSeriesReadByRankZeroAlone) {
  TempDir t;
  const std::string model = make_model(
      t, "ts",
      "[model]\nkind = \"timeseries\"\nd_model = 32\nn_layers = 2\nn_heads = 2\nd_ff = 64\n"
      "window = 8\ncausal = false\nglobal_every = 64\nglobal_max = 32\nrouter_hidden = 8\n"
      "channels = 1\nts_bins = 64\nts_transform = \"log_return\"\n");
  std::string csv = "timestamp,id,close\n";
  for (const auto& [id, rows] :
       {std::pair<const char*, int>{"long", 600}, {"mid", 40}, {"short", 9}})
    for (int i = 0; i < rows; ++i)
      csv += "2024-01-01T00:" + std::to_string(10000 + i) + "," + id + "," +
             std::to_string(100.0 + 3.0 * std::sin(0.37 * i + rows)) + "\n";
  ASSERT_EQ(run("mkdir -p " + t / "r0" + " " + t / "other").code, 0);
  write_file(t / "r0/panel.csv", csv);
  write_file(t / "other/panel.csv", "timestamp,id,close\n2024-01-01,a,not-a-number\n");
  const std::string embed = binary() + " embed -q --force --threads 1 --dtype f32 --model " +
                            model + " --input panel.csv --id-column id --split-min 100 --output ";
  auto r = run("cd " + t / "r0" + " && " + embed + t / "one.h5");
  ASSERT_EQ(r.code, 0) << r.output;
  // Each rank's folder by its rank (Open MPI, MPICH / Hydra or Slurm).
  const std::string script =
      "r=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${SLURM_PROCID:-0}}}; "
      "if [ \"$r\" = 0 ]; then cd " +
      t / "r0" + "; else cd " + t / "other" + "; fi; exec " + embed + t / "three.h5";
  write_file(t / "rank.sh", script + "\n");
  r = run(mpirun(3) + "sh " + t / "rank.sh");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_contents(t / "one.h5", t / "three.h5");
  // And the other way round: rank 0 reading the broken file stops every rank with its message.
  r = run("cd " + t / "other" + " && " + mpirun(3) + embed + t / "bad.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(count_in(r.output, "sparsa: error: "), 1u) << r.output;
  EXPECT_NE(r.output.find("panel.csv"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(t / "bad.h5"));
  // Panels of 1,024 series (one full batch, then an empty one that ends the input) and 1,100
  // (two batches), each series a record of its own on one rank.
  for (int n_series : {1024, 1100}) {
    std::string panel = "timestamp,id,close\n";
    for (int s = 0; s < n_series; ++s)
      for (int i = 0; i < 4; ++i)
        panel += "2024-01-0" + std::to_string(i + 1) + ",s" + std::to_string(s) + "," +
                 std::to_string(50.0 + std::cos(0.1 * s + i)) + "\n";
    write_file(t / "r0/panel.csv", panel);
    SCOPED_TRACE(std::to_string(n_series) + " series");
    r = run("cd " + t / "r0" + " && " + embed + t / "one.h5");
    ASSERT_EQ(r.code, 0) << r.output;
    r = run(mpirun(3) + "sh " + t / "rank.sh");
    ASSERT_EQ(r.code, 0) << r.output;
    expect_same_contents(t / "one.h5", t / "three.h5");
    EXPECT_EQ(h5::File::open_read(t / "three.h5").list("/records").size(), (size_t)n_series);
  }
}

// --region on a FASTA without its index, under several ranks: rank 0 builds the .fai (and
// .gzi) before the others load it. When every rank built it at once, runs failed at random (a
// rank read another's half-written index: "no record named", "does not match it").
TEST(MpiInvariance, RegionIndexIsBuiltOnceUnderMpi) {
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  write_file(t / "gen.fa", random_fasta(200, 20000, 9, "c"));
  std::vector<std::string> inputs{t / "gen.fa"};
  // (bgzip comes with htslib: Debian's tabix, which scripts/setup-debian.sh installs; a GPU
  // machine that runs this binary without it tests the plain file alone.)
  if (run("bgzip -c " + t / "gen.fa" + " > " + t / "gen.fa.gz").code == 0)
    inputs.push_back(t / "gen.fa.gz");
  else
    std::printf("[ note     ] no bgzip here: the plain FASTA alone\n");
  for (const std::string& in : inputs) {
    const std::string embed = binary() + " embed -q --force --threads 1 --dtype f32 --model " +
                              model + " --input " + in +
                              " --region c150:1-3000 --split-min 100 --output ";
    auto r = run(embed + t / "one.h5");
    ASSERT_EQ(r.code, 0) << r.output;
    for (int rep = 0; rep < 4; ++rep) {
      std::filesystem::remove(in + ".fai");
      std::filesystem::remove(in + ".gzi");
      r = run(mpirun(3) + embed + t / "three.h5");
      ASSERT_EQ(r.code, 0) << in << ", run " << rep << ": " << r.output;
      expect_same_contents(t / "one.h5", t / "three.h5");
    }
  }
}

TEST(MpiInvarianceSlow, EcoliMegabaseRegion) {
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  const std::string ecoli = data_file("dna/ecoli_k12_mg1655.fasta.gz");
  ASSERT_FALSE(ecoli.empty()) << "the E. coli genome: ../shared/data or Debian's ragout-examples";
  ASSERT_EQ(run("zcat " + ecoli + " > " + t / "ecoli.fa").code, 0);
  check_invariance(t,
                   {model, "--input " + t / "ecoli.fa",
                    "--region K-12-MG1655:1000001-2000000 --pool bin:100 --split-min 1000"},
                   {2, 3, 4});
}

TEST(MpiFailure, OneBadRankStopsAllWithNoOutput) {
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  write_file(t / "bad.fa", ">ok\nACGTACGT\n>bad\nACGTXX\n");
  auto r = run(mpirun(3) + binary() + " embed -q --model " + model + " --input " + t / "bad.fa" +
               " --output " + t / "o.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  // Every rank reads every record, so all three meet the error: rank 0 says it, once. (Another
  // rank says its own only if rank 0 has not ended the job 1.5 s after it failed: on a loaded
  // machine that may happen, after rank 0's line.)
  EXPECT_EQ(count_in(r.output, "sparsa: error: "), 1u) << r.output;
  EXPECT_NE(r.output.find("sparsa: error: " + t / "bad.fa" + ": record 'bad': position 5"),
            std::string::npos)
      << r.output;
  if (const size_t other = r.output.find("error (rank"); other != std::string::npos)
    EXPECT_LT(r.output.find("sparsa: error: "), other) << r.output;
  EXPECT_FALSE(exists(t / "o.h5"));
  EXPECT_FALSE(exists(t / "o.h5.tmp"));
}

// A rank the launcher bound to one core, on a node with more: it says so, with the cure; a rank
// free to run anywhere says nothing (threads: docs/parallel.md).
TEST(MpiThreads, ARankBoundToOneCoreSaysSo) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) GTEST_SKIP() << "one CPU: no rank can be given more";
  if (std::getenv("SPARSA_TEST_MPIEXEC")) GTEST_SKIP() << "the binding flags are Open MPI's own";
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  const std::string embed = binary() + " embed --device cpu --model " + model + " --input " +
                            source_dir() + "/examples/lambda_virus.fa.gz --pool mean --output ";
  auto r = run(mpirun(1) + "--bind-to core " + embed + (t / "a.h5"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("this rank may use 1 CPU: the launcher bound it to one core"),
            std::string::npos)
      << r.output;
  r = run(mpirun(1) + "--bind-to none " + embed + (t / "b.h5"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("this rank may use 1 CPU"), std::string::npos) << r.output;
}

// Ranks free to run on every CPU divide them; ranks bound to CPUs of their own do not (on a
// 2-core machine they would each start 1 thread either way: the line says why).
TEST(MpiThreads, RanksDivideOnlyTheCpusTheyShare) {
  if (std::getenv("SPARSA_TEST_MPIEXEC")) GTEST_SKIP() << "the binding flags are Open MPI's own";
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int cpus = CPU_COUNT(&set);  // what mpirun --bind-to none hands its ranks
  TempDir t;
  const std::string model = make_model(t, "m", tiny());
  const std::string embed = binary() + " embed --device cpu --model " + model + " --input " +
                            source_dir() + "/examples/lambda_virus.fa.gz --pool mean --output ";
  auto r = run("env -u OMP_NUM_THREADS " + mpirun(2) + "--bind-to none " + embed + (t / "a.h5"));
  ASSERT_EQ(r.code, 0) << r.output;
  const int each = std::max(1, cpus / 2);
  EXPECT_NE(r.output.find(", " + std::to_string(each) + (each == 1 ? " thread (" : " threads (") +
                          "this rank's " + std::to_string(cpus) + " CPUs, shared by 2 ranks)"),
            std::string::npos)
      << r.output;
  if (cpus < 2) return;
  // A core each (a core's hardware threads each, on an SMT machine), then 2 cores each.
  for (const std::string& bind :
       {std::string("--bind-to core "),
        std::string(cpus >= 4 ? "--map-by slot:PE=2 --bind-to core " : "")}) {
    if (bind.empty()) continue;
    r = run("env -u OMP_NUM_THREADS " + mpirun(2) + bind + embed + (t / "b.h5") + " --force");
    ASSERT_EQ(r.code, 0) << bind << r.output;
    EXPECT_NE(r.output.find("device: CPU (--device cpu), "), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("shared by"), std::string::npos) << bind << r.output;
  }
}
