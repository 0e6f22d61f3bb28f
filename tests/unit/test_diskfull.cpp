// A disk that is too small or fills up mid-run: a clear error, nothing at the output path, and a
// journal that a rerun (with space) resumes. Uses a small tmpfs, so it needs root (CI is root).
#include <gtest/gtest.h>
#include <sys/mount.h>

#include "compare_h5.hpp"
#include "io/h5.hpp"
#include "test_util.hpp"

using namespace sparsa::testing;

namespace {

class SmallDisk {
 public:
  explicit SmallDisk(const std::string& dir, const char* size) : dir_(dir) {
    std::filesystem::create_directories(dir);
    const std::string opts = std::string("size=") + size;
    ok_ = mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~SmallDisk() {
    if (ok_) umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ok_; }

 private:
  std::string dir_;
  bool ok_ = false;
};

}  // namespace

TEST(DiskFull, TooLittleSpaceIsRefusedBeforeWork) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  TempDir t;
  SmallDisk disk(t / "disk", "256k");
  ASSERT_TRUE(disk.ok()) << "mount tmpfs failed";
  ASSERT_EQ(run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                t / "m.h5")
                .code,
            0);
  const std::string out = t / "disk/out.h5";
  auto r = run(binary() + " embed -q --model " + t / "m.h5" + " --input " + source_dir() +
               "/examples/lambda_virus.fa.gz --output " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("not enough free space"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".parts"));
}

TEST(DiskFull, FillingUpMidRunKeepsAResumableJournal) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  TempDir t;
  SmallDisk disk(t / "disk", "8m");
  ASSERT_TRUE(disk.ok()) << "mount tmpfs failed";
  ASSERT_EQ(run(binary() + " init --config " + source_dir() + "/configs/dna-tiny.toml --output " +
                t / "m.h5")
                .code,
            0);
  write_file(t / "in.fa", random_fasta(8, 20000));  // 8 records of 20 kb
  const std::string out = t / "disk/out.h5";
  // bin:20 keeps the estimate (about 4 MB: parts and final file) under the 8 MB disk.
  std::vector<std::string> args{binary(),   "embed",   "-q",        "--threads", "1",
                                "--dtype",  "f32",     "--pool",    "bin:20",    "--model",
                                t / "m.h5", "--input", t / "in.fa", "--output",  out};
  pid_t pid = spawn(args, t / "log1");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 1, pid)) << read_file(t / "log1");
  // Another program fills the disk while sparsa runs.
  run("dd if=/dev/zero of=" + t / "disk/filler" + " bs=64k 2>/dev/null");
  const int code = wait_exit(pid);
  const std::string log = read_file(t / "log1");
  EXPECT_EQ(code, 1) << log;
  EXPECT_NE(log.find("disk full"), std::string::npos) << log;
  EXPECT_NE(log.find("--resume"), std::string::npos) << log;
  EXPECT_FALSE(exists(out));
  const int kept = count_parts(out + ".parts");
  EXPECT_GE(kept, 1);
  // Space again: --resume finishes, and the result equals a clean run.
  std::filesystem::remove(t / "disk/filler");
  args.push_back("--resume");
  pid = spawn(args, t / "log2");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "log2");
  args.pop_back();
  args[args.size() - 1] = t / "clean.h5";
  pid = spawn(args, t / "log3");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "log3");
  expect_same_contents(out, t / "clean.h5");
}
