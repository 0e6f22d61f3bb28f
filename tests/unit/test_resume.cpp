// Reliability with real processes: a stopped or killed run keeps its finished records, leaves
// nothing at the output path, and --resume finishes with the same contents as a clean run.
#include <gtest/gtest.h>
#include <sys/stat.h>

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

TEST(Resume, SingleRecordPartBecomesTheOutput) {
  // One record: the part is completed in place and renamed (no second copy of the rows). A run
  // stopped after the part got its attributes but before the rename resumes to the same file.
  Fixture fx;
  const std::string one = fx.t / "one.fa";
  write_file(one, random_fasta(1, 200000, 7));
  auto args = [&](const std::string& out, bool resume) {
    std::vector<std::string> a{binary(),  "embed",   "-q",     "--threads", "1",
                               "--dtype", "f32",     "--pool", "bin:10",    "--model",
                               fx.model,  "--input", one,      "--output",  out};
    if (resume) a.push_back("--resume");
    return a;
  };
  const std::string clean = fx.t / "clean.h5";
  pid_t pid = spawn(args(clean, false), fx.t / "log1");
  ASSERT_EQ(wait_exit(pid), 0);
  EXPECT_FALSE(exists(clean + ".parts"));
  EXPECT_FALSE(exists(clean + ".tmp"));
  {
    auto f = h5::File::open_read(clean);
    EXPECT_EQ(f.attr_int("/", "complete"), 1);
    EXPECT_EQ(f.attr_string("/", "format"), "sparsa-embeddings");
    EXPECT_EQ(f.attr_string("/", "dtype"), "float32");
    EXPECT_EQ(f.list("/records").size(), 1u);
  }
  // The journal of a run killed before its part was written, then that part as it is after
  // assembly began: attributes and `complete` set, not yet renamed.
  const std::string out = fx.t / "out.h5";
  pid = spawn(args(out, false), fx.t / "log2");
  for (int i = 0; i < 600 && !exists(out + ".parts/MANIFEST"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(exists(out + ".parts/MANIFEST"));
  kill(pid, SIGKILL);
  wait_exit(pid);
  ASSERT_EQ(count_parts(out + ".parts"), 0) << "the run finished its record before the kill";
  const std::string part = out + ".parts/000001.h5";
  fs::copy_file(clean, part);
  struct stat before {};
  ASSERT_EQ(stat(part.c_str(), &before), 0);
  EXPECT_FALSE(exists(out));
  pid = spawn(args(out, true), fx.t / "log3");
  ASSERT_EQ(wait_exit(pid), 0);
  EXPECT_FALSE(exists(out + ".parts"));
  expect_same_contents(out, clean);
  struct stat after {};
  ASSERT_EQ(stat(out.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino) << "the part was copied, not renamed";
  // A part damaged by a crash: a clear error naming it, nothing at the output path.
  const std::string out2 = fx.t / "out2.h5";
  pid = spawn(args(out2, false), fx.t / "log4");
  for (int i = 0; i < 600 && !exists(out2 + ".parts/MANIFEST"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGKILL);
  wait_exit(pid);
  ASSERT_EQ(count_parts(out2 + ".parts"), 0);
  write_file(out2 + ".parts/000001.h5", "not an HDF5 file");
  auto r = run(binary() + " embed -q --threads 1 --dtype f32 --pool bin:10 --resume --model " +
               fx.model + " --input " + one + " --output " + out2);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("000001.h5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--force"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out2));
}
