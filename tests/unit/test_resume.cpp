// Reliability with real processes: a stopped or killed run keeps its finished records, leaves
// nothing at the output path, and --resume finishes with the same contents as a clean run.
#include <gtest/gtest.h>

#include "compare_h5.hpp"
#include "io/h5.hpp"
#include "test_util.hpp"

using namespace sparsa::testing;
namespace h5 = sparsa::h5;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  TempDir t;
  std::string model = t / "m.h5", input = t / "many.fa";
  Fixture() {
    auto r = run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                 model);
    EXPECT_EQ(r.code, 0) << r.output;
    write_file(input, random_fasta(8, 40000));  // eight records of 40 kb
  }
  std::vector<std::string> args(const std::string& out, bool resume) {
    std::vector<std::string> a{binary(),  "embed",   "-q",     "--threads", "1",
                               "--dtype", "f32",     "--pool", "bin:10",    "--model",
                               model,     "--input", input,    "--output",  out};
    if (resume) a.push_back("--resume");
    return a;
  }
};

}  // namespace

TEST(Resume, SigtermStopsAtSafePointAndResumeFinishes) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(out, false), fx.t / "log1");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 2, pid)) << "run ended before 2 parts";
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 75);  // documented: interrupted, resumable
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".tmp"));
  const int kept = count_parts(out + ".parts");
  EXPECT_GE(kept, 2);
  EXPECT_LT(kept, 8);
  // Without --resume (or --force) the journal is not thrown away.
  auto r =
      run(binary() + " embed -q --model " + fx.model + " --input " + fx.input + " --output " + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  pid = spawn(fx.args(out, true), fx.t / "log2");
  EXPECT_EQ(wait_exit(pid), 0);
  EXPECT_FALSE(exists(out + ".parts"));
  pid = spawn(fx.args(fx.t / "clean.h5", false), fx.t / "log3");
  ASSERT_EQ(wait_exit(pid), 0);
  expect_same_contents(out, fx.t / "clean.h5");
  // A finished output with --resume is left alone and reported complete.
  r = run(binary() + " embed --resume --model " + fx.model + " --input " + fx.input + " --output " +
          out);
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("already complete"), std::string::npos) << r.output;
}

TEST(Resume, SigkillLosesOnlyTheRecordInFlight) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(out, false), fx.t / "log1");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 3, pid));
  kill(pid, SIGKILL);
  EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
  EXPECT_FALSE(exists(out));
  pid = spawn(fx.args(out, true), fx.t / "log2");
  EXPECT_EQ(wait_exit(pid), 0);
  pid = spawn(fx.args(fx.t / "clean.h5", false), fx.t / "log3");
  ASSERT_EQ(wait_exit(pid), 0);
  expect_same_contents(out, fx.t / "clean.h5");
}

TEST(Resume, ManifestMismatchIsRefused) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = spawn(fx.args(out, false), fx.t / "log1");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 1, pid));
  kill(pid, SIGKILL);
  wait_exit(pid);
  // Another pool size is another run: --resume refuses to mix them.
  auto r = run(binary() + " embed -q --resume --pool bin:20 --model " + fx.model + " --input " +
               fx.input + " --output " + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("different run"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  // --force starts over.
  r = run(binary() + " embed -q --force --pool bin:20 --model " + fx.model + " --input " +
          fx.input + " --output " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(exists(out + ".parts"));
}
