// A disk that is too small or fills up mid-run: a clear error, nothing at the output path, and a
// journal that a rerun (with space) resumes. Uses a small tmpfs, so it needs root (CI is root).
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cerrno>

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
    denied_ = !ok_ && errno == EPERM;  // root without CAP_SYS_ADMIN (a container's default)
  }
  ~SmallDisk() {
    if (ok_) umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ok_; }
  bool denied() const { return denied_; }

 private:
  std::string dir_;
  bool ok_ = false, denied_ = false;
};

// Runs `args` (an embed writing OUT into the small disk at DIR/disk), lets it finish `parts`
// records, then fills the disk (dd, blocks of `block`): the run must fail with exit 1 and the
// "disk full" message, leaving nothing at OUT. Returns the run's log.
std::string fill_disk_during(const TempDir& t, const std::vector<std::string>& args,
                             const std::string& out, int parts, const char* block) {
  pid_t pid = spawn(args, t / "log1");
  EXPECT_TRUE(wait_for_parts(out + ".parts", parts, pid)) << read_file(t / "log1");
  run("dd if=/dev/zero of=" + t / "disk/filler" + " bs=" + block + " 2>/dev/null");
  const int code = wait_exit(pid);
  const std::string log = read_file(t / "log1");
  EXPECT_EQ(code, 1) << log;
  EXPECT_NE(log.find("disk full"), std::string::npos) << log;
  EXPECT_FALSE(exists(out));
  return log;
}

// With room again: `args` (ending in --output OUT) with --resume finishes, and OUT equals the file
// of a clean run of the same command.
void resume_gives_the_clean_file(const TempDir& t, std::vector<std::string> args,
                                 const std::string& out) {
  args.push_back("--resume");
  pid_t pid = spawn(args, t / "log2");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "log2");
  args.pop_back();
  args.back() = t / "clean.h5";
  pid = spawn(args, t / "log3");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "log3");
  expect_same_contents(out, t / "clean.h5");
}

}  // namespace

// A tmpfs of `size` at `dir` as `var`, or the test skipped (reported as skipped) where it cannot
// be mounted: not root, or root without CAP_SYS_ADMIN (a container's default).
#define SMALL_DISK_OR_SKIP(var, dir, size)                                             \
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";             \
  SmallDisk var(dir, size);                                                            \
  if (var.denied()) GTEST_SKIP() << "mount(2) refused (EPERM): no CAP_SYS_ADMIN here"; \
  ASSERT_TRUE(var.ok()) << "mount tmpfs failed"

TEST(DiskFull, TooLittleSpaceIsRefusedBeforeWork) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "256k");
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  const std::string out = t / "disk/out.h5";
  auto r = run(binary() + " embed -q --model " + t / "m.h5" + " --input " + source_dir() +
               "/examples/lambda_virus.fa.gz --output " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("not enough free space"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".parts"));
}

// A genome followed by many one-base records: the estimate from the file's start alone saw one
// record (47.6 KiB for a ~80 MB run) and let it fill the disk; the middle and end windows see the
// short ones. SPARSA_SKIP_SPACE_CHECK=1 runs anyway, and the full disk is then said as such by
// the HDF5 call that met it (it said "dataset create failed" alone).
TEST(DiskFull, ShortRecordsAfterAGenomeAreCountedAndAFullDiskIsSaid) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "8m");
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  std::string fa = random_fasta(1, 300000);
  for (int i = 0; i < 20000; ++i) fa += ">s" + std::to_string(i) + "\nA\n";
  write_file(t / "skew.fa", fa);
  const std::string out = t / "disk/out.h5";
  const std::string cmd = binary() + " embed --pool mean --threads 2 --model " + t / "m.h5" +
                          " --input " + t / "skew.fa" + " --output " + out;
  auto r = run(cmd);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("not enough free space"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out + ".parts"));
  r = run("SPARSA_SKIP_SPACE_CHECK=1 " + cmd);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("(disk full: "), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_TRUE(exists(out + ".parts"));
}

// --resume --invalid-as-n rewrites the journal's MANIFEST; on a full disk that wrote an empty one,
// which made the finished records another run's. Now the old MANIFEST stays, the error says so,
// and with room again the same command finishes.
TEST(DiskFull, ManifestIsRewrittenWholeOrNotAtAll) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "4m");
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  write_file(t / "in.fa", random_fasta(3, 500) + ">bad\nACXT\n");
  const std::string out = t / "disk/out.h5";
  const std::string cmd = "SPARSA_GROUP_SECONDS=0 SPARSA_SKIP_SPACE_CHECK=1 " + binary() +
                          " embed -q --pool mean --model " + t / "m.h5" + " --input " +
                          t / "in.fa" + " --output " + out;
  auto r = run(cmd);
  ASSERT_EQ(r.code, 1) << r.output;
  const std::string manifest = read_file(out + ".parts/MANIFEST");
  ASSERT_NE(manifest.find("invalid_as_n 0"), std::string::npos);
  run("dd if=/dev/zero of=" + t / "disk/filler" + " bs=64k 2>/dev/null");
  r = run(cmd + " --resume --invalid-as-n");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("MANIFEST: cannot write it"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(out + ".parts/MANIFEST"), manifest);
  std::filesystem::remove(t / "disk/filler");
  r = run(cmd + " --resume --invalid-as-n");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(exists(out));
}

// --force sets the old output aside until the run finishes; where the disk has no room for both,
// the run is refused and the old one stays at its path (it was removed to make room, and a bad
// record after that left the user with neither file).
TEST(DiskFull, ForceKeepsThePreviousOutputWhenBothDoNotFit) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "10m");
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  const std::string out = t / "disk/out.h5";
  const std::string cmd = binary() + " embed --pool none --model " + t / "m.h5" + " --input " +
                          source_dir() + "/examples/lambda_virus.fa.gz --output " + out;
  expect_force_keeps_the_old_file(cmd, out);
}

TEST(DiskFull, FillingUpMidRunKeepsAResumableJournal) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "8m");
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");  // the disk fills after the first part
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  write_file(t / "in.fa", random_fasta(8, 20000));  // 8 records of 20 kb
  const std::string out = t / "disk/out.h5";
  // bin:20 keeps the estimate (about 4 MB: parts and final file) under the 8 MB disk.
  std::vector<std::string> args{binary(),   "embed",   "-q",        "--threads", "1",
                                "--dtype",  "f32",     "--pool",    "bin:20",    "--model",
                                t / "m.h5", "--input", t / "in.fa", "--output",  out};
  // Another program fills the disk while sparsa runs.
  const std::string log = fill_disk_during(t, args, out, 1, "64k");
  EXPECT_NE(log.find("--resume"), std::string::npos) << log;
  const int kept = count_parts(out + ".parts");
  EXPECT_GE(kept, 1);
  // Space again: --resume finishes, and the result equals a clean run.
  std::filesystem::remove(t / "disk/filler");
  resume_gives_the_clean_file(t, args, out);
}

// Many tiny records: HDF5 keeps a small part in its cache, so a full disk shows at H5Fclose.
// That failed close was closed a second time (the destructor) and HDF5's exit handler crashed
// on it: exit 139 and no message. Now: the error, exit 1, the journal kept and resumable.
TEST(DiskFull, ClosingAPartOnAFullDiskIsAnErrorNotACrash) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "16m");
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");  // a part for every record: many closes
  write_file(t / "ts.toml",
             "[model]\nkind = \"timeseries\"\nd_model = 16\nn_layers = 1\nn_heads = 2\n"
             "d_ff = 32\nwindow = 4\ncausal = true\nglobal_every = 8\nglobal_max = 8\n"
             "router_hidden = 8\nchannels = 1\nts_bins = 16\nts_transform = \"log_return\"\n");
  ASSERT_EQ(run(binary() + " init --config " + t / "ts.toml" + " --output " + t / "m.h5").code, 0);
  std::string csv = "id,time,x\n";
  for (int i = 0; i < 400; ++i)
    for (int k = 1; k <= 3; ++k)
      csv += "s" + std::to_string(i) + "," + std::to_string(k) + "," + std::to_string(1 + k) + "\n";
  write_file(t / "panel.csv", csv);
  const std::string out = t / "disk/out.h5";
  std::vector<std::string> args{
      binary(),        "embed",       "-q", "--threads", "1",        "--pool",
      "mean",          "--id-column", "id", "--model",   t / "m.h5", "--input",
      t / "panel.csv", "--output",    out};
  fill_disk_during(t, args, out, 20, "4k");
  std::filesystem::remove(t / "disk/filler");
  args.push_back("--resume");
  pid_t pid = spawn(args, t / "log2");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "log2");
  EXPECT_TRUE(exists(out));
}

// A resumed run counts the journal already on disk: it needs only the rest of the estimate
// (at least the final file's half), not the whole of it again. Here the disk holds less than
// the whole estimate but more than what is left: the old check refused to resume.
TEST(DiskFull, ResumeCountsTheJournalAlreadyOnDisk) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "16m");
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  const std::string good = random_fasta(8, 20000);
  write_file(t / "good.fa", good);
  auto embed = [&](const std::string& out, const std::string& extra) {
    return run(binary() + " embed --threads 1 --dtype f32 --pool bin:20 --model " + t / "m.h5" +
               " --input " + t / "in.fa --output " + out + extra);
  };
  // The whole estimate, from a clean run elsewhere.
  std::filesystem::copy_file(t / "good.fa", t / "in.fa");
  auto r = embed(t / "clean.h5", "");
  ASSERT_EQ(r.code, 0) << r.output;
  const size_t at = r.output.find("output about ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const double estimate = std::stod(r.output.substr(at + 13)) * 1024 * 1024;  // "N.N MiB"
  ASSERT_NE(r.output.find(" MiB (journal + final)", at), std::string::npos) << r.output;
  // A run that stops at a bad last record keeps the seven before it.
  write_file(t / "in.fa", good + ">bad\nACGTXX\n");
  const std::string out = t / "disk/out.h5";
  r = embed(out, "");
  ASSERT_EQ(r.code, 1) << r.output;
  double journal = 0;
  for (auto& e : std::filesystem::recursive_directory_iterator(out + ".parts"))
    if (e.is_regular_file()) journal += (double)e.file_size();
  ASSERT_GT(journal, estimate / 4) << r.output;
  // Free space: the estimate less half the journal (more than what is left to write).
  const auto free_now = (double)std::filesystem::space(t / "disk").available;
  const double filler = free_now - (estimate - journal / 2);
  ASSERT_GT(filler, 0);
  ASSERT_EQ(run("dd if=/dev/zero of=" + t / "disk/filler" +
                " bs=4096 count=" + std::to_string((long long)(filler / 4096)) + " 2>/dev/null")
                .code,
            0);
  write_file(t / "in.fa", good);
  r = embed(out, " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_contents(out, t / "clean.h5");
}

// The parts fit but the final file does not (the disk filled by another job after the start's
// check, here skipped): HDF5 1.10's H5Ocopy crashed on the full disk (exit 139, a half-written
// OUT.tmp left). Now the final file's room is reserved first: "disk full", exit 1, no OUT and
// no OUT.tmp, and the journal kept; with more room --resume writes the clean run's file.
TEST(DiskFull, FinalFileThatDoesNotFitIsAnErrorNotACrash) {
  TempDir t;
  SMALL_DISK_OR_SKIP(disk, t / "disk", "8m");
  ScopedEnv skip("SPARSA_SKIP_SPACE_CHECK", "1");
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  write_file(t / "in.fa", random_fasta(2, 12000));  // parts ~6 MB, and the final file as much
  const std::string out = t / "disk/out.h5";
  std::vector<std::string> args{binary(),   "embed",   "-q",        "--threads", "1",
                                "--dtype",  "f32",     "--pool",    "none",      "--model",
                                t / "m.h5", "--input", t / "in.fa", "--output",  out};
  pid_t pid = spawn(args, t / "log1");
  EXPECT_EQ(wait_exit(pid), 1) << read_file(t / "log1");
  const std::string log = read_file(t / "log1");
  EXPECT_NE(log.find("out.h5.tmp: disk full: the file needs about"), std::string::npos) << log;
  EXPECT_NE(log.find("--resume"), std::string::npos) << log;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".tmp"));
  EXPECT_GE(count_parts(out + ".parts"), 1);
  ASSERT_EQ(run("mount -o remount,size=32m " + t / "disk").code, 0);
  resume_gives_the_clean_file(t, args, out);
  // The blocks reserved and not used went back: the file takes about its size on the disk.
  struct stat st {};
  ASSERT_EQ(stat(out.c_str(), &st), 0);
  EXPECT_LE((int64_t)st.st_blocks * 512, (int64_t)st.st_size + (1 << 16));
}

// A file-size limit (`ulimit -f`, RLIMIT_FSIZE; no root needed) on a disk with room. Its signal,
// SIGXFSZ, killed sparsa with no word (exit 153, OUT.tmp or a part's .tmp left), and where it was
// ignored, the final copy past the limit crashed HDF5 1.10 (exit 139) as a full disk did. Now:
// an output estimated past the limit is refused before any work; a run that meets it anyway
// (here the check skipped) stops with an error naming the limit, no OUT and no OUT.tmp, and its
// journal resumes to the clean run's file. `init` says it too and leaves nothing.
TEST(DiskFull, FileSizeLimitIsAnErrorThatNamesIt) {
  TempDir t;
  ASSERT_TRUE(init_tiny_model(t / "m.h5"));
  write_file(t / "in.fa", random_fasta(10, 5000));  // the final file ~7 MB with f32 rows
  const std::string out = t / "out.h5";
  // (ulimit -f counts blocks of 512 bytes in sh, of 1024 in bash: the messages give KB.)
  const std::string limited = "ulimit -f 6000; ";
  const std::string cmd = binary() + " embed -q --threads 1 --dtype f32 --pool none --model " +
                          t / "m.h5" + " --input " + t / "in.fa" + " --output " + out;
  auto r = run(limited + cmd);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("out.h5: the output will be about"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the file-size limit (ulimit -f) is"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".parts"));

  r = run(limited + "SPARSA_SKIP_SPACE_CHECK=1 SPARSA_GROUP_SECONDS=0 " + cmd);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("out.h5.tmp: the file needs about"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the file-size limit (ulimit -f) is"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".tmp"));
  EXPECT_GE(count_parts(out + ".parts"), 1);
  r = run(cmd + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_EQ(run(cmd.substr(0, cmd.size() - out.size()) + t / "clean.h5").code, 0);
  expect_same_contents(out, t / "clean.h5");

  // One record (its part becomes the file): the estimate is the file itself, not half of it.
  write_file(t / "one.fa", random_fasta(1, 30000));  // ~8 MB of f32 rows
  r = run("ulimit -f 12000; " + binary() +
          " embed -q --threads 1 --dtype f32 --pool none --model " + t / "m.h5" + " --input " +
          t / "one.fa" + " --output " + t / "one.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("one.h5: the output will be about"), std::string::npos) << r.output;
  // A part that meets the limit while it is written, and a checkpoint.
  r = run("ulimit -f 200; SPARSA_SKIP_SPACE_CHECK=1 " + cmd.substr(0, cmd.size() - out.size()) +
          t / "small.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("the file-size limit (ulimit -f) is"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(t / "small.h5"));
  EXPECT_FALSE(exists(t / "small.h5.tmp"));
  r = run("ulimit -f 100; " + binary() + " init --config " + source_dir() +
          "/configs/dna-tiny.toml --output " + t / "m2.h5");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("the file-size limit (ulimit -f) is"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(t / "m2.h5"));
  EXPECT_FALSE(exists(t / "m2.h5.tmp"));
}
