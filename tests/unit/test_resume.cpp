// Reliability with real processes: a stopped or killed run keeps its finished records, leaves
// nothing at the output path, and --resume finishes with the same contents as a clean run.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <thread>

#include "compare_h5.hpp"
#include "core/error.hpp"
#include "core/signals.hpp"
#include "dist/comm.hpp"
#include "io/h5.hpp"
#include "pipelines/embed/writer.hpp"
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
  // "sparsa embed --threads 1 --pool mean" of `in` into `out` with this model, then `extra`.
  std::string command(const std::string& in, const std::string& out,
                      const std::string& extra) const {
    return binary() + " embed --threads 1 --pool mean --model " + model + " --input " + in +
           " --output " + out + " " + extra;
  }
  // (quiet false: the progress and stop messages are the point)
  std::vector<std::string> args(const std::string& out, bool resume, bool quiet = true) {
    std::vector<std::string> a{binary(),  "embed",  "--threads", "1",       "--dtype",
                               "f32",     "--pool", "bin:10",    "--model", model,
                               "--input", input,    "--output",  out};
    if (quiet) a.push_back("-q");
    if (resume) a.push_back("--resume");
    return a;
  }
  // A run with its messages into `out` (its stderr into `log`), once `parts` of its records are
  // in the journal; -1 where it ended before.
  pid_t start_until_parts(const std::string& out, int parts, const std::string& log) {
    const pid_t pid = spawn(args(out, false, false), log);
    return wait_for_parts(out + ".parts", parts, pid) ? pid : -1;
  }
};

// A record of n tokens with a row each (d values, a ramp), and its RecordOutput: one layer's
// global set of `gpos` with its scores.
struct PartData {
  sparsa::Record rec;
  std::vector<float> rows, gscore;
  std::vector<int64_t> starts, ends, gpos;
  sparsa::RecordOutput ro;
  PartData(int64_t n, int64_t d, std::vector<int64_t> globals)
      : gpos(std::move(globals)), ro{&rec, "dna", "+", n} {
    rec.name = "r1";
    rec.source = "in.fa";
    rec.tokens.assign(n, 3);
    rows.resize(n * d);
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = 0.25f * (float)i - 1.0f;
    for (int64_t i = 0; i < n; ++i) starts.push_back(i), ends.push_back(i + 1);
    for (size_t i = 0; i < gpos.size(); ++i) gscore.push_back(0.5f - 2.0f * (float)i);
    ro.d = d;
    ro.n_out_total = ro.n_rows = n;
    ro.rows = rows.data();
    ro.starts = starts.data();
    ro.ends = ends.data();
    ro.global_positions = gpos.data();
    ro.global_scores = gscore.data();
    ro.n_layers = 1;
    ro.n_global = (int64_t)gpos.size();
  }
};

}  // namespace

// An interrupt is answered at once (what happens next), and the end says what was kept: the
// finished records, or that none had finished (then no journal is left to resume).
TEST(Resume, InterruptSaysWhatItKeeps) {
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = fx.start_until_parts(out, 2, fx.t / "log1");
  ASSERT_GT(pid, 0) << "run ended before 2 parts";
  kill(pid, SIGINT);
  EXPECT_EQ(wait_exit(pid), 75);
  std::string log = read_file(fx.t / "log1");
  EXPECT_NE(log.find("[sparsa] interrupt: stopping at the next safe point"), std::string::npos)
      << log;
  const int kept = count_parts(out + ".parts");
  EXPECT_NE(log.find("[sparsa] " + std::to_string(kept) + " finished records are kept in " + out +
                     ".parts"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("with --resume to continue"), std::string::npos) << log;
  // Stopped inside its first record (one record of 600 kb: several seconds on one thread).
  write_file(fx.t / "long.fa", random_fasta(1, 600000));
  const std::string out2 = fx.t / "long.h5";
  const std::vector<std::string> a = {binary(), "embed",   "--threads",      "1",        "--model",
                                      fx.model, "--input", fx.t / "long.fa", "--output", out2};
  pid = spawn(a, fx.t / "log2");
  ASSERT_TRUE(wait_until(
      pid, [&] { return read_file(fx.t / "log2").find("record 1 'rec0'") != std::string::npos; },
      20, 30));
  kill(pid, SIGINT);
  EXPECT_EQ(wait_exit(pid), 75);
  log = read_file(fx.t / "log2");
  EXPECT_NE(log.find("no record had finished here, so none is kept"), std::string::npos) << log;
  // ... and the last word does not send the user to --resume.
  EXPECT_NE(log.find("nothing was kept; run the same command again"), std::string::npos) << log;
  EXPECT_EQ(log.find("--resume"), std::string::npos) << log;
  EXPECT_FALSE(exists(out2 + ".parts"));  // nothing to resume: a plain rerun is not refused
  EXPECT_FALSE(exists(out2));
}

// A dropped ssh session (SIGHUP) stops at a safe point as SIGTERM does (exit 75, the journal
// kept), and a log reader that went away (stderr into `| head -c 1`) does not kill the run with
// SIGPIPE: it finishes, exit 0 (docs/reliability.md, Signals).
TEST(ResumeSlow, HangupStopsAtASafePointAndABrokenLogPipeDoesNotKill) {
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  pid_t pid = fx.start_until_parts(out, 1, fx.t / "log1");
  ASSERT_GT(pid, 0) << read_file(fx.t / "log1");
  kill(pid, SIGHUP);
  EXPECT_EQ(wait_exit(pid), 75) << read_file(fx.t / "log1");
  EXPECT_NE(read_file(fx.t / "log1").find("SIGHUP (the terminal or session closed): stopping"),
            std::string::npos)
      << read_file(fx.t / "log1");
  EXPECT_FALSE(exists(out));
  EXPECT_GE(count_parts(out + ".parts"), 1);
  // Under nohup (SIGHUP ignored) the signal stays ignored: the run goes on to its end.
  std::string nohup;
  for (const auto& x : fx.args(fx.t / "nohup.h5", false)) nohup += x + " ";
  auto hup = run("bash -c 'nohup " + nohup + " > " + fx.t / "log-nohup" +
                 " 2>&1 & pid=$!; sleep 1; kill -HUP $pid; wait $pid; echo \"status $?\"'");
  EXPECT_NE(hup.output.find("status 0"), std::string::npos)
      << hup.output << read_file(fx.t / "log-nohup");
  EXPECT_TRUE(exists(fx.t / "nohup.h5"));
  // The progress lines go into a pipe whose reader has gone.
  std::string cmd;
  for (const auto& x : fx.args(out, true, false)) cmd += x + " ";
  auto r = run("bash -c 'set -o pipefail; " + cmd + " --force 2>&1 | head -c 1 >/dev/null; echo " +
               "\"status ${PIPESTATUS[0]}\"'");
  EXPECT_NE(r.output.find("status 0"), std::string::npos) << r.output;
  EXPECT_TRUE(exists(out));
}

// A second Ctrl-C while the run stops (the record in flight not yet done) ends the process at
// once with exit 130; the records finished before stay in the journal, and --resume completes the
// run with the clean run's contents (docs/cli.md, exit status 130).
TEST(ResumeSlow, SecondInterruptWhileStoppingExits130AndKeepsTheJournal) {
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");
  // The stop of a single process takes milliseconds since session 29 (the record's arrays are
  // made in pieces that poll it): it is held 3 s here, for the second signal to come during it.
  ScopedEnv slow_stop("SPARSA_TEST_STOP_DELAY_MS", "3000");
  Fixture fx;
  // A short record (its part is the cue for the first signal), then one of 600 kb: a layer of it
  // takes about a second on one thread, the time the second signal has to arrive in.
  write_file(fx.input, random_fasta(1, 20000, 7, "short") + random_fasta(1, 600000));
  const std::string out = fx.t / "out.h5";
  pid_t pid = fx.start_until_parts(out, 1, fx.t / "log1");
  ASSERT_GT(pid, 0) << read_file(fx.t / "log1");
  // The first signal inside the long record's first layer (about 4 s on one thread), not between
  // the two records: there the safe point is at hand, and the run stopped before the second
  // signal came (CI, session 23). No log line marks the record's start (progress lines are
  // rate-limited), so a second's wait.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  kill(pid, SIGINT);
  // The second only after the first was taken (two pending SIGINTs would merge into one).
  ASSERT_TRUE(wait_until(
      pid,
      [&] {
        return read_file(fx.t / "log1").find("stopping at the next safe point") !=
               std::string::npos;
      },
      20, 30))
      << read_file(fx.t / "log1");
  kill(pid, SIGINT);
  EXPECT_EQ(wait_exit(pid), 130) << read_file(fx.t / "log1");
  // (the message names the journal folder itself)
  EXPECT_NE(read_file(fx.t / "log1").find("stay in the journal (" + out + ".parts/)"),
            std::string::npos)
      << read_file(fx.t / "log1");
  EXPECT_FALSE(exists(out));
  EXPECT_EQ(count_parts(out + ".parts"), 1) << read_file(fx.t / "log1");
  pid = spawn(fx.args(out, true), fx.t / "log2");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(fx.t / "log2");
  const std::string clean = fx.t / "clean.h5";
  pid = spawn(fx.args(clean, false), fx.t / "log3");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(fx.t / "log3");
  expect_same_contents(out, clean);
}

// A run killed (SIGKILL, no chance to clean up) inside its first record leaves a journal of a
// MANIFEST and an unfinished part: nothing finished, so a plain rerun starts over instead of
// being refused as if it held finished records.
TEST(Resume, KilledRunWithNothingFinishedDoesNotBlockARerun) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  fs::create_directories(out + ".parts");
  write_file(out + ".parts/MANIFEST", "sparsa-journal 3\nsomething else\n");
  write_file(out + ".parts/000001.h5.tmp", "");
  const std::vector<std::string> a = fx.args(out, false);
  std::string cmd;
  for (const auto& x : a) cmd += x + " ";
  auto r = run(cmd);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(exists(out));
  EXPECT_FALSE(exists(out + ".parts"));
  // A finished part is not thrown away that way.
  fs::create_directories(out + ".parts");
  write_file(out + ".parts/MANIFEST", "sparsa-journal 3\nsomething else\n");
  write_file(out + ".parts/000001.h5", "");
  fs::remove(out);
  r = run(cmd);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("holds the finished records of an earlier run"), std::string::npos)
      << r.output;
}

// A folder at OUT.parts that is not a journal (a user's own files, a link to another folder) is
// refused, with or without --resume / --force, and left as it was: a run empties a journal and
// removes it at the end. An existing output stays where it is (--force had set it aside there).
TEST(Resume, FolderThatIsNotAJournalIsLeftAlone) {
  Fixture fx;
  const std::string out = fx.t / "out.h5", parts = out + ".parts";
  std::string cmd;
  for (const auto& x : fx.args(out, false)) cmd += x + " ";
  fs::create_directories(parts + "/sub");
  write_file(parts + "/notes.txt", "my notes");
  write_file(parts + "/sub/data.csv", "x");
  write_file(out, "an earlier output");
  for (const char* extra : {"", " --resume", " --force", " --resume --force"}) {
    fs::remove(out);
    write_file(out, "an earlier output");
    auto r = run(cmd + extra);
    EXPECT_EQ(r.code, 2) << extra << ": " << r.output;
    EXPECT_NE(r.output.find(parts + " holds "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("which no sparsa run writes"), std::string::npos) << r.output;
    EXPECT_EQ(read_file(parts + "/notes.txt"), "my notes") << extra;
    EXPECT_EQ(read_file(parts + "/sub/data.csv"), "x") << extra;
    EXPECT_FALSE(exists(parts + "/LOCK")) << extra;
    EXPECT_FALSE(exists(parts + "/MANIFEST")) << extra;
    EXPECT_EQ(read_file(out), "an earlier output") << extra;
  }
  // A link there: not followed (the folder it points to keeps its files), also when it points
  // to an empty folder or a journal.
  fs::remove(out);
  fs::remove_all(parts);
  fs::create_directories(fx.t / "important");
  write_file(fx.t / "important/a.txt", "keep");
  fs::create_directory_symlink(fx.t / "important", parts);
  for (const char* extra : {"", " --force"}) {
    auto r = run(cmd + extra);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(parts + " is a symbolic link"), std::string::npos) << r.output;
    EXPECT_EQ(read_file(fx.t / "important/a.txt"), "keep");
    EXPECT_EQ(std::distance(fs::directory_iterator(fx.t / "important"), fs::directory_iterator()),
              1);
    EXPECT_FALSE(exists(out));
  }
  // A journal's own files (a killed run's MANIFEST, lock and a part's .tmp) are one: the run goes.
  fs::remove(parts);
  fs::create_directories(parts);
  write_file(parts + "/MANIFEST", "sparsa-journal 3\nsomething else\n");
  write_file(parts + "/LOCK", "");
  write_file(parts + "/000001.h5.tmp", "");
  auto r = run(cmd);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(exists(out));
  EXPECT_FALSE(exists(parts));
}

TEST(ResumeSlow, SigtermStopsAtSafePointAndResumeFinishes) {
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");  // a part for every record
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
  // A journal part is not a result, and inspect says what it is.
  auto part = run(binary() + " inspect " + out + ".parts/000001.h5");
  EXPECT_EQ(part.code, 1);
  EXPECT_NE(part.output.find("a journal part of an unfinished sparsa run"), std::string::npos)
      << part.output;
  // Nor is the output path yet: inspect names the journal and --resume.
  part = run(binary() + " inspect " + out);
  EXPECT_EQ(part.code, 1);
  EXPECT_NE(part.output.find("no such file yet: " + out + ".parts/ holds the journal"),
            std::string::npos)
      << part.output;
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
  // A finished output with --resume, by the same run, is left alone and reported complete.
  r = run(binary() + " embed --resume --dtype f32 --pool bin:10 --model " + fx.model + " --input " +
          fx.input + " --output " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("already complete"), std::string::npos) << r.output;
  // By another run (other options): refused, the file untouched; with --force, made anew.
  r = run(binary() + " embed --resume --model " + fx.model + " --input " + fx.input + " --output " +
          out);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("different run"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pool"), std::string::npos) << r.output;  // the first difference
  expect_same_contents(out, fx.t / "clean.h5");
  r = run(binary() + " embed -q --resume --force --threads 1 --pool bin:20 --model " + fx.model +
          " --input " + fx.input + " --output " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(h5::File::open_read(out).attr_string("/", "pool"), "bin:20");  // made anew
  // --force stopped part way: the old output waits in the journal folder, and the run that
  // finishes the journal (--resume) removes it with the folder.
  std::vector<std::string> a = fx.args(out, false);
  a.push_back("--force");
  pid = spawn(a, fx.t / "log4");
  ASSERT_TRUE(wait_for_parts(out + ".parts", 2, pid)) << read_file(fx.t / "log4");
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 75);
  EXPECT_FALSE(exists(out));
  EXPECT_EQ(h5::File::open_read(out + ".parts/PREVIOUS_OUTPUT").attr_string("/", "pool"), "bin:20");
  pid = spawn(fx.args(out, true), fx.t / "log5");
  EXPECT_EQ(wait_exit(pid), 0) << read_file(fx.t / "log5");
  EXPECT_FALSE(exists(out + ".parts"));
  expect_same_contents(out, fx.t / "clean.h5");
}

TEST(Resume, SigkillLosesOnlyTheRecordInFlight) {
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");  // a part for every record
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

// The refusal names what differs by key: an added input named itself, not as the first of the
// lines it shifted ("'input b.fa' now vs 'pool none'").
TEST(Resume, ManifestDifferenceIsNamedByKey) {
  using sparsa::first_difference;
  const std::string base =
      "sparsa-journal 3\nmodel_sha256 x\ninput /d/a.fa\npool none\ndtype f16\n";
  const std::string two =
      "sparsa-journal 3\nmodel_sha256 x\ninput /d/a.fa\ninput /d/b.fa\npool none\ndtype f16\n";
  EXPECT_EQ(first_difference(base, base), "");
  EXPECT_EQ(first_difference(two, base), "'input /d/b.fa' added");
  EXPECT_EQ(first_difference(base, two), "'input /d/b.fa' no longer given");
  std::string mean = base;
  mean.replace(mean.find("pool none"), 9, "pool mean");
  EXPECT_EQ(first_difference(mean, base), "'pool mean' now vs 'pool none'");
  const std::string swapped =
      "sparsa-journal 3\nmodel_sha256 x\ninput /d/b.fa\ninput /d/a.fa\npool none\ndtype f16\n";
  EXPECT_NE(first_difference(swapped, two).find("input lines in another order"), std::string::npos)
      << first_difference(swapped, two);
  EXPECT_EQ(first_difference("sparsa-journal 3\npool none\n", "sparsa-journal 2\npool bin:8\n"),
            "written by another version of sparsa: 'sparsa-journal 2', this one writes "
            "'sparsa-journal 3'");
}

TEST(Resume, ChangedRecordsAreEmbeddedAgain) {
  // A run stops on a bad base in record 3 with records 1 and 2 finished. The input is fixed, and
  // record 1 edited without changing the file's size: --resume keeps record 2, embeds 1 and 3
  // (the journal's parts carry each record's input_sha256), and the output is a clean run's.
  // A complete output is then reported complete by --resume only while every record hashes the
  // same: another same-size edit is refused (exit 2), the file untouched.
  ScopedEnv one_group("SPARSA_GROUP_SECONDS", "1000");  // however slow the machine
  Fixture fx;
  const std::string out = fx.t / "out.h5", input = fx.t / "fix.fa";
  std::string good = random_fasta(3, 3000, 9), bad = good;
  const size_t r3 = bad.find(">rec2");
  bad[r3 + 100] = 'Z';
  write_file(input, bad);
  auto cmd = [&](const std::string& o, const std::string& extra) {
    return binary() + " embed --threads 1 --dtype f32 --pool bin:10 --model " + fx.model +
           " --input " + input + " --output " + o + " " + extra;
  };
  auto r = run(cmd(out, ""));
  ASSERT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("rec2"), std::string::npos) << r.output;
  // Records 1 and 2 share a group part (Resume.GroupParts* test the versions inside).
  ASSERT_EQ(count_parts(out + ".parts"), 1) << r.output;
  EXPECT_EQ(h5::File::open_read(out + ".parts/000001.h5").list("/records").size(), 2u);
  std::string fixed = good;
  const size_t r1 = fixed.find(">rec0") + 20;
  fixed[r1] = fixed[r1] == 'A' ? 'C' : 'A';
  ASSERT_EQ(fixed.size(), bad.size());
  write_file(input, fixed);
  r = run(cmd(out, "--resume"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("record 1 'rec0'"), std::string::npos) << r.output;     // embedded again
  EXPECT_EQ(r.output.find("record 2 'rec1' of"), std::string::npos) << r.output;  // kept
  ASSERT_EQ(run(cmd(fx.t / "clean.h5", "-q")).code, 0);
  expect_same_contents(out, fx.t / "clean.h5");
  r = run(cmd(out, "--resume"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("already complete"), std::string::npos) << r.output;
  std::string edited = fixed;
  const size_t r2 = edited.find(">rec1") + 30;
  edited[r2] = edited[r2] == 'G' ? 'T' : 'G';
  write_file(input, edited);
  r = run(cmd(out, "--resume"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("record 2 'rec1'"), std::string::npos) << r.output;
  expect_same_contents(out, fx.t / "clean.h5");  // untouched
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
  // A damaged part (unreadable: no input_sha256 to match) is not trusted: the record is embedded
  // again, with a message, and the output is the clean run's.
  const std::string out2 = fx.t / "out2.h5";
  pid = spawn(args(out2, false), fx.t / "log4");
  for (int i = 0; i < 600 && !exists(out2 + ".parts/MANIFEST"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGKILL);
  wait_exit(pid);
  ASSERT_EQ(count_parts(out2 + ".parts"), 0);
  write_file(out2 + ".parts/000001.h5", "not an HDF5 file");
  auto r = run(binary() + " embed --threads 1 --dtype f32 --pool bin:10 --resume --model " +
               fx.model + " --input " + one + " --output " + out2);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("cannot be read (damaged by a crash?) or holds no fingerprint: "
                          "embedding it again"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("the input changed"), std::string::npos) << r.output;
  expect_same_contents(out2, clean);
}

// A part written piece by piece (PartStream: --pool none, one rank holding the record) is whole
// or absent: finished, it is the part write_part makes from the same rows; dropped on the way
// (an error), its .tmp is gone and the journal does not count it.
TEST(Resume, StreamedPartIsWholeOrAbsent) {
  TempDir t;
  auto comm = sparsa::make_single_comm();
  const std::string out = t / "o.h5";
  const int64_t d = 3;
  PartData pd(7, d, {2, 5});
  pd.rec.offset = 10;
  const std::vector<float>& rows = pd.rows;
  const sparsa::RecordOutput& ro = pd.ro;
  for (bool f16 : {false, true}) {
    SCOPED_TRACE(f16 ? "f16" : "f32");
    fs::remove_all(out + ".parts");
    sparsa::Journal j(out, "m\n", false, true, *comm);
    {
      sparsa::PartStream p(j, 1, ro, f16);
      p.rows(0, 3, rows.data());
      EXPECT_TRUE(fs::exists(out + ".parts/000001.h5.tmp"));
    }  // dropped unfinished
    EXPECT_FALSE(fs::exists(out + ".parts/000001.h5.tmp"));
    EXPECT_FALSE(fs::exists(out + ".parts/000001.h5"));
    EXPECT_EQ(j.count_parts(), 0);
    {
      sparsa::PartStream p(j, 1, ro, f16);
      p.rows(4, 3, rows.data() + 4 * d);  // any order
      p.rows(0, 4, rows.data());
      EXPECT_THROW(p.rows(6, 2, rows.data()), sparsa::SystemError);  // past the end
      p.finish(ro);
    }
    EXPECT_TRUE(j.done(1));
    fs::rename(out + ".parts/000001.h5", t / "streamed.h5");
    j.write_part(1, ro, f16, false, *comm);
    for (const std::string& f : {t / "streamed.h5", out + ".parts/000001.h5"}) {
      h5::File h = h5::File::open_rw(f);  // parts are not results until assembled
      h.set_attr("/", "complete", (int64_t)1);
      h.close();
    }
    expect_same_contents(t / "streamed.h5", out + ".parts/000001.h5");
    EXPECT_EQ(h5::File::open_read(t / "streamed.h5").attr_string("/records/000000_r1", "strand"),
              "+");
  }
}

// Part names grow past six digits after record 999,999 (%06lld): resume still finds them.
TEST(Resume, PartsBeyondAMillionRecordsAreFound) {
  TempDir t;
  auto comm = sparsa::make_single_comm();
  const std::string out = t / "o.h5";
  PartData pd(2, 2, {0});
  sparsa::RecordOutput& ro = pd.ro;
  ro.fingerprint = std::string(64, 'a');
  {
    sparsa::Journal j(out, "m\n", false, false, *comm);
    for (int64_t index : {7, 1234567}) j.write_part(index, ro, false, false, *comm);
  }
  EXPECT_TRUE(fs::exists(out + ".parts/1234567.h5"));
  sparsa::Journal j(out, "m\n", true, false, *comm);
  EXPECT_EQ(j.n_done(), 2);
  EXPECT_EQ(j.count_parts(), 2);
  EXPECT_TRUE(j.same_record(1234567, ro.fingerprint));
  EXPECT_TRUE(j.same_record(7, ro.fingerprint));
}

// A part's input_sha256 that is not 64 hex digits (changed by hand, or by another program)
// matches nothing: its record is embedded again. A record checked once is not matched twice,
// and one written by this run no longer matches its earlier part's fingerprint. Upper-case hex
// is the same fingerprint as lower-case.
TEST(Resume, FingerprintsMatchOnlyAsSha256AndOnce) {
  TempDir t;
  auto comm = sparsa::make_single_comm();
  const std::string out = t / "o.h5";
  PartData pd(2, 2, {0});
  sparsa::RecordOutput& ro = pd.ro;
  const std::string sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  {
    sparsa::Journal j(out, "m\n", false, false, *comm);
    ro.fingerprint = "not-a-sha256";
    j.write_part(1, ro, false, false, *comm);
    ro.fingerprint = sha;
    for (int64_t index : {2, 3, 4, 6}) j.write_part(index, ro, false, false, *comm);
    ro.fingerprint = std::string(64, 'z');
    j.write_part(5, ro, false, false, *comm);
  }
  sparsa::Journal j(out, "m\n", true, false, *comm);
  EXPECT_EQ(j.n_done(), 6);
  EXPECT_FALSE(j.same_record(1, "not-a-sha256"));
  EXPECT_FALSE(j.same_record(1, std::string(64, '0')));  // (its part has no fingerprint)
  EXPECT_FALSE(j.same_record(5, std::string(64, 'z')));  // 64 characters, not hex
  EXPECT_TRUE(j.same_record(2, sha));
  EXPECT_FALSE(j.same_record(2, sha));  // checked already
  std::string upper = sha;
  for (char& c : upper) c = (char)std::toupper((unsigned char)c);
  EXPECT_TRUE(j.same_record(3, upper));
  EXPECT_FALSE(j.same_record(5, sha));  // no part holds record 5
  j.redo(4);
  EXPECT_FALSE(j.done(4));
  EXPECT_FALSE(j.same_record(4, sha));  // redone: its old part no longer counts
  ro.fingerprint = sha;
  j.write_part(6, ro, false, false, *comm);  // written again by this run, unchecked
  EXPECT_FALSE(j.same_record(6, sha));       // its earlier part no longer counts
  EXPECT_TRUE(j.done(6));
}

// Short records go into group parts. A record of a group that changed is embedded again into a
// new part beside the group (which keeps the records that did not change): a journal then holds
// two versions of it, and resume and assembly take the one whose input_sha256 matches.
TEST(Resume, GroupPartsKeepTheRecordsThatDidNotChange) {
  ScopedEnv one_group("SPARSA_GROUP_SECONDS", "1000");  // groups close when the test says
  TempDir t;
  auto comm = sparsa::make_single_comm();
  const std::string out = t / "o.h5";
  const int64_t d = 2;
  std::vector<PartData> recs;
  recs.reserve(3);  // a PartData points into itself: never moved
  for (int i = 0; i < 3; ++i) recs.emplace_back(3, d, std::vector<int64_t>{i});
  for (int i = 0; i < 3; ++i) {
    recs[i].rec.name = "r" + std::to_string(i + 1);
    recs[i].ro.fingerprint = std::string(64, (char)('a' + i));
  }
  {
    sparsa::Journal j(out, "m\n", false, false, *comm);
    j.write_grouped(1, recs[0].ro, false);
    j.write_grouped(2, recs[1].ro, false);
    EXPECT_EQ(j.count_parts(), 0);  // still open: within its second
    EXPECT_TRUE(fs::exists(out + ".parts/000001.h5.tmp"));
    j.flush_group();
    EXPECT_EQ(j.count_parts(), 1);
    EXPECT_EQ(j.count_records(), 2);
    EXPECT_TRUE(j.done(1) && j.done(2) && !j.done(3));
  }  // the run stops here: record 3 never done
  // Record 1's input changed: it is embedded again (new rows), with record 3.
  const std::string changed(64, 'e');
  for (float& v : recs[0].rows) v += 100.0f;
  recs[0].ro.fingerprint = changed;
  {
    sparsa::Journal j(out, "m\n", true, false, *comm);
    EXPECT_EQ(j.n_done(), 2);
    EXPECT_FALSE(j.same_record(1, changed));
    j.redo(1);
    EXPECT_TRUE(j.same_record(2, recs[1].ro.fingerprint));
    j.write_grouped(1, recs[0].ro, false);
    j.write_grouped(3, recs[2].ro, false);
  }  // dropped unflushed (the destructor; a crash leaves a .tmp the next run removes)
  EXPECT_FALSE(fs::exists(out + ".parts/000001.h5.tmp"));
  EXPECT_EQ(count_parts(out + ".parts"), 1);
  {
    sparsa::Journal j(out, "m\n", true, false, *comm);
    EXPECT_FALSE(j.same_record(1, changed));
    j.redo(1);
    EXPECT_TRUE(j.same_record(2, recs[1].ro.fingerprint));
    j.write_grouped(1, recs[0].ro, false);
    j.write_grouped(3, recs[2].ro, false);
    j.flush_group();
  }
  // The group's first record had its name taken: the new part is 000001.1.h5.
  EXPECT_TRUE(fs::exists(out + ".parts/000001.1.h5"));
  EXPECT_EQ(count_parts(out + ".parts"), 2);
  // A third run finds record 1 twice (the old version and the new) and assembles the new one;
  // the records kept, as a stop says them, count it once.
  sparsa::Journal j(out, "m\n", true, false, *comm);
  EXPECT_EQ(j.n_done(), 3);
  EXPECT_EQ(j.count_records(), 3);
  EXPECT_TRUE(j.same_record(1, changed));
  EXPECT_TRUE(j.same_record(2, recs[1].ro.fingerprint));
  EXPECT_TRUE(j.same_record(3, recs[2].ro.fingerprint));
  sparsa::FileAttrs a{"v", "sha", "cfg", "cmd", "now", "bin:1", "float32", "m\n"};
  j.assemble(a, 3, out);
  EXPECT_FALSE(fs::exists(out + ".parts"));
  h5::File f = h5::File::open_read(out);
  EXPECT_EQ(f.list("/records"), (std::vector<std::string>{"000000_r1", "000001_r2", "000002_r3"}));
  for (int i = 0; i < 3; ++i) {
    const std::string g = "/records/" + f.list("/records")[i];
    EXPECT_EQ(f.read_f32(g + "/embedding"), recs[i].rows) << g;
    EXPECT_EQ(f.attr_string(g, "input_sha256"), recs[i].ro.fingerprint) << g;
    EXPECT_EQ(f.read_i64(g + "/global_positions"), std::vector<int64_t>{i}) << g;
  }
}

// The stale version listed first: record 2 of group 000001.h5 changes and goes into 000002.h5
// (a free name), which a resumed run finds after the group. The matching version is taken, not
// the first one found.
TEST(Resume, GroupPartsTakeTheMatchingVersionNotTheFirst) {
  ScopedEnv one_group("SPARSA_GROUP_SECONDS", "1000");
  TempDir t;
  auto comm = sparsa::make_single_comm();
  const std::string out = t / "o.h5";
  std::vector<PartData> recs;
  recs.reserve(3);  // a PartData points into itself: never moved
  for (int i = 0; i < 3; ++i) {
    recs.emplace_back(2, 2, std::vector<int64_t>{i});
    recs[i].rec.name = "r" + std::to_string(i + 1);
    recs[i].ro.fingerprint = std::string(64, (char)('a' + i));
  }
  {
    sparsa::Journal j(out, "m\n", false, false, *comm);
    for (int i = 0; i < 3; ++i) j.write_grouped(i + 1, recs[i].ro, false);
    j.flush_group();
  }
  for (float& v : recs[1].rows) v = -v;
  recs[1].ro.fingerprint = std::string(64, 'f');
  {
    sparsa::Journal j(out, "m\n", true, false, *comm);
    EXPECT_TRUE(j.same_record(1, recs[0].ro.fingerprint));
    EXPECT_FALSE(j.same_record(2, recs[1].ro.fingerprint));
    j.redo(2);
    EXPECT_TRUE(j.same_record(3, recs[2].ro.fingerprint));
    j.write_grouped(2, recs[1].ro, false);
    j.flush_group();
  }  // stopped before assembling
  EXPECT_TRUE(fs::exists(out + ".parts/000002.h5"));
  sparsa::Journal j(out, "m\n", true, false, *comm);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(j.same_record(i + 1, recs[i].ro.fingerprint)) << i;
  j.assemble({"v", "sha", "cfg", "cmd", "now", "bin:1", "float32", "m\n"}, 3, out);
  h5::File f = h5::File::open_read(out);
  EXPECT_EQ(f.read_f32("/records/000001_r2/embedding"), recs[1].rows);
  EXPECT_EQ(f.attr_string("/records/000001_r2", "input_sha256"), recs[1].ro.fingerprint);
  EXPECT_EQ(f.read_f32("/records/000002_r3/embedding"), recs[2].rows);
}

// A stop while short records wait in an open group part: the group goes into the journal, the
// run exits 75, and --resume finishes with a clean run's contents.
TEST(ResumeSlow, SigtermKeepsTheOpenGroup) {
  ScopedEnv one_group("SPARSA_GROUP_SECONDS", "1000");  // everything in one group until the stop
  TempDir t;
  const std::string model = t / "m.h5", input = t / "reads.fa", out = t / "out.h5";
  ASSERT_TRUE(init_tiny_model(model));
  write_file(input, random_fasta(6000, 150, 5));
  auto args = [&](const std::string& o, bool resume) {
    std::vector<std::string> a{binary(), "embed",   "-q",  "--pool",   "mean", "--model",
                               model,    "--input", input, "--output", o};
    if (resume) a.push_back("--resume");
    return a;
  };
  pid_t pid = spawn(args(out, false), t / "log1");
  for (int i = 0; i < 600 && !exists(out + ".parts/000001.h5.tmp"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(exists(out + ".parts/000001.h5.tmp")) << read_file(t / "log1");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, SIGTERM);
  ASSERT_EQ(wait_exit(pid), 75) << read_file(t / "log1");
  EXPECT_EQ(count_parts(out + ".parts"), 1);
  const size_t kept = h5::File::open_read(out + ".parts/000001.h5").list("/records").size();
  EXPECT_GT(kept, 0u);
  EXPECT_LT(kept, 6000u) << "the run finished before the stop";
  pid = spawn(args(out, true), t / "log2");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "log2");
  pid = spawn(args(t / "clean.h5", false), t / "log3");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(t / "log3");
  expect_same_contents(out, t / "clean.h5");
}

// A group is moved into the journal once its time has passed since this rank's last part
// (SPARSA_GROUP_SECONDS; 0: a part for every record; by default a second a process, and half a
// second a rank on several: about 2 parts a second for the whole job); a bad value is refused.
TEST(Resume, GroupPartsAreFlushedByTime) {
  EXPECT_EQ(sparsa::Journal::default_group_seconds(1), 1.0);
  EXPECT_EQ(sparsa::Journal::default_group_seconds(2), 1.0);
  EXPECT_EQ(sparsa::Journal::default_group_seconds(40), 20.0);
  EXPECT_EQ(sparsa::Journal::default_group_seconds(64), 30.0);
  EXPECT_EQ(sparsa::Journal::default_group_seconds(4096), 30.0);
  TempDir t;
  auto comm = sparsa::make_single_comm();
  PartData pd(2, 2, {0});
  {
    ScopedEnv e("SPARSA_GROUP_SECONDS", "0");
    sparsa::Journal j(t / "a.h5", "m\n", false, false, *comm);
    for (int64_t i = 1; i <= 3; ++i) j.write_grouped(i, pd.ro, false);
    EXPECT_EQ(j.count_parts(), 3);
  }
  {
    // (2 s: the two writes must come within it even on a busy 2-core machine under ASan)
    ScopedEnv e("SPARSA_GROUP_SECONDS", "2");
    sparsa::Journal j(t / "b.h5", "m\n", false, false, *comm);
    j.write_grouped(1, pd.ro, false);
    j.write_grouped(2, pd.ro, false);
    EXPECT_EQ(j.count_parts(), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));
    j.write_grouped(3, pd.ro, false);  // the second has passed: 1..3 go together
    EXPECT_EQ(j.count_parts(), 1);
    EXPECT_EQ(j.count_records(), 3);
  }
  for (const char* bad : {"x", "-1", "1s", "nan"}) {
    ScopedEnv e("SPARSA_GROUP_SECONDS", bad);
    EXPECT_THROW(sparsa::Journal(t / "c.h5", "m\n", false, true, *comm), sparsa::ConfigError)
        << bad;
  }
}

// Two runs on one output would delete and overwrite each other's parts: a run that finds the
// journal locked by a live run stops (exit 2, naming who holds it), even with --resume or
// --force; once that run is gone (its lock with it) the same command runs.
TEST(Resume, AnotherLiveRunsJournalIsRefused) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  fs::create_directories(out + ".parts");
  const int fd = ::open((out + ".parts/LOCK").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  ASSERT_EQ(fcntl(fd, F_SETLK, &fl), 0);
  const std::string who = "host elsewhere, pid 4242, Slurm job 77\n";
  ASSERT_EQ(pwrite(fd, who.data(), who.size(), 0), (ssize_t)who.size());
  for (const std::string flag : {"--resume", "--force"}) {
    // --force with an old output: it is not set aside into the live run's folder either (that
    // run's finish would take it with the folder).
    if (flag == "--force") write_file(out, "old output");
    auto r = run(binary() + " embed -q --model " + fx.model + " --input " + fx.input +
                 " --output " + out + " " + flag);
    EXPECT_EQ(r.code, 2) << flag << ": " << r.output;
    EXPECT_NE(
        r.output.find("in use by another sparsa run (host elsewhere, pid 4242, Slurm job 77)"),
        std::string::npos)
        << r.output;
    EXPECT_TRUE(fs::exists(out + ".parts/LOCK"));
    if (flag == "--force") {
      EXPECT_EQ(read_file(out), "old output");
      EXPECT_FALSE(fs::exists(out + ".parts/PREVIOUS_OUTPUT"));
    }
  }
  ::close(fd);  // that run ended
  auto r = run(binary() + " embed -q --threads 1 --pool bin:1000 --model " + fx.model +
               " --input " + fx.input + " --output " + out + " --force");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(out + ".parts"));
  // A journal folder left with only its lock file (NFS keeps an open file as .nfsXXXX) is no
  // journal: --resume of the finished output still finds it complete.
  fs::create_directories(out + ".parts");
  write_file(out + ".parts/LOCK", "");
  r = run(binary() + " embed --threads 1 --pool bin:1000 --model " + fx.model + " --input " +
          fx.input + " --output " + out + " --resume");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("complete"), std::string::npos) << r.output;
}

// Keys sort in input order however many records a file holds: six digits up to a million
// records, then as many as the last index takes.
TEST(Resume, RecordKeysSortInInputOrder) {
  using sparsa::Journal;
  EXPECT_EQ(Journal::key_for(5, "chr 1/a"), "000005_chr_1_a");
  EXPECT_EQ(Journal::key_for(5, "a", 1000000), "000005_a");
  EXPECT_EQ(Journal::key_for(5, "a", 1000001), "0000005_a");
  EXPECT_LT(Journal::key_for(999999, "a", 1000001), Journal::key_for(1000000, "a", 1000001));
  EXPECT_LT(Journal::key_for(99999, "a", 1000001), Journal::key_for(100000, "a", 1000001));
}

// The manifest records the backend a run used, not the flags that chose it: on the CPU
// --precision changes nothing, so a finished CPU run is complete for either value (a resumed job
// that lands on another kind of node is compared by what it would compute with).
TEST(Resume, ManifestRecordsTheBackendUsed) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  const std::string cmd = binary() + " embed -q --threads 1 --pool bin:1000 --device cpu --model " +
                          fx.model + " --input " + fx.input + " --output " + out;
  ASSERT_EQ(run(cmd + " --precision fp32").code, 0);
  auto r = run(cmd + " --resume");  // --precision's default, bf16: the CPU computes in float32
  EXPECT_EQ(r.code, 0) << r.output;
  const h5::File f = h5::File::open_read(out);
  EXPECT_NE(f.attr_string("/", "run_manifest").find("backend cpu fp32"), std::string::npos);
  // An input named another way (./ or a ..) is the same input.
  const fs::path in(fx.input);
  const std::string dotted =
      (in.parent_path() / "." / ".." / in.parent_path().filename() / in.filename()).string();
  r = run(binary() + " embed -q --threads 1 --pool bin:1000 --device cpu --model " + fx.model +
          " --input " + dotted + " --output " + out + " --resume");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("already complete"), std::string::npos) << r.output;
}

// Asking the CPU for bf16 in so many words is refused before anything is read or written: it
// computes in float32 only.
TEST(Resume, CpuRefusesAnExplicitBf16) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  auto r = run(binary() + " embed -q --device cpu --precision bf16 --model " + fx.model +
               " --input " + fx.input + " --output " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--precision bf16 needs a GPU"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".parts"));
}

// Short records run side by side in batches, a batch's forwards overlapping the writing of the
// batch before: a bad record further on ends the run with its error, and every record before it
// (written, made but not yet written, or still gathering) is kept in the journal; --resume with
// the input fixed embeds only the rest and gives the clean run's file.
TEST(Resume, BadRecordAfterBatchesKeepsEveryRecordBeforeIt) {
  TempDir t;
  const std::string model = t / "m.h5", out = t / "out.h5";
  ASSERT_TRUE(init_tiny_model(model));
  const std::string good = random_fasta(200, 150, 8);
  const std::string tail = random_fasta(10, 120, 9, "Rec");
  write_file(t / "reads.fa", good + ">broken\nACGT!ACGT\n" + tail);
  auto cmd = [&](const std::string& in, const std::string& o, const std::string& extra) {
    return binary() + " embed -q --pool mean --threads 2 --model " + model + " --input " + in +
           " --output " + o + " " + extra;
  };
  const RunResult bad = run(cmd(t / "reads.fa", out, ""));
  EXPECT_EQ(bad.code, 1) << bad.output;
  EXPECT_NE(bad.output.find("'broken'"), std::string::npos) << bad.output;
  EXPECT_FALSE(exists(out));
  size_t kept = 0;
  for (const auto& e : std::filesystem::directory_iterator(out + ".parts"))
    if (e.path().extension() == ".h5")
      kept += h5::File::open_read(e.path().string()).list("/records").size();
  EXPECT_EQ(kept, 200u) << "the records before the bad one are all in the journal";
  write_file(t / "reads.fa", good + ">broken\nACGTNACGT\n" + tail);  // fixed in place
  const RunResult resumed = run(cmd(t / "reads.fa", out, "--resume"));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  ASSERT_EQ(run(cmd(t / "reads.fa", t / "clean.h5", "")).code, 0);
  expect_same_contents(out, t / "clean.h5");
}

// While the output is written from a finished journal, a first interrupt says that the writing
// goes on; a second one removes the unfinished output (OUT.tmp) before it ends the process, so
// nothing half-written is left beside the journal.
TEST(Resume, SecondInterruptWhileFinishingRemovesTheTmpFile) {
  TempDir t;
  const std::string tmp = t / "out.h5.tmp";
  write_file(tmp, "half");
  EXPECT_EXIT(
      {
        sparsa::install_stop_handlers(true);
        sparsa::set_finishing((t / "out.h5").c_str(), tmp.c_str());
        raise(SIGINT);
        if (!sparsa::stop_requested()) std::_Exit(3);
        raise(SIGINT);
        std::_Exit(4);  // not reached
      },
      ::testing::ExitedWithCode(130), "writing .*out.h5 goes on to its end(.|\n)*stopped at once");
  EXPECT_FALSE(exists(tmp));
  // Once the output is in place, signals change nothing: the run ends as it would have.
  EXPECT_EXIT(
      {
        sparsa::install_stop_handlers(true);
        sparsa::set_finishing((t / "out.h5").c_str(), tmp.c_str());
        sparsa::set_output_in_place();
        sparsa::set_finishing(nullptr, nullptr);  // (assemble's end does not undo it)
        raise(SIGINT);
        raise(SIGINT);
        raise(SIGTERM);
        std::_Exit(sparsa::stop_requested() ? 3 : 0);
      },
      ::testing::ExitedWithCode(0), "");
}

// Under --quiet (announce off) the first interrupt is not announced, but a second one is still
// said by the rank that speaks for the run: exit 130 with no word left the user guessing.
TEST(Resume, SecondInterruptIsSaidUnderQuiet) {
  EXPECT_EXIT(
      {
        sparsa::install_stop_handlers(false, "out.h5.parts/", true);
        raise(SIGINT);
        if (!sparsa::stop_requested()) std::_Exit(3);
        raise(SIGINT);
        std::_Exit(4);  // not reached
      },
      ::testing::ExitedWithCode(130),
      "stopped at once \\(second interrupt\\).*stay in the journal \\(out.h5.parts/\\)");
}

// A stop another rank received (adopted at a safe point) names its signal here too, and this
// process's own first SIGINT after it is a first one: it ended the process at once (130) as if
// it were the second.
TEST(Resume, AdoptedStopKeepsTheNextInterruptAFirstOne) {
  EXPECT_EXIT(
      {
        sparsa::install_stop_handlers(false, "out.h5.parts/", true);
        sparsa::adopt_stop_signal(SIGTERM);
        if (sparsa::stop_signal() != SIGTERM) std::_Exit(3);
        raise(SIGINT);  // the first of this process's own: the stop goes on
        if (sparsa::stop_signal() != SIGTERM) std::_Exit(4);
        raise(SIGINT);  // the second: at once
        std::_Exit(5);
      },
      ::testing::ExitedWithCode(130), "stopped at once");
}

// A stop signal in a run's first moments (before MPI's start-up is over and the handlers are
// set: a Slurm USR1 at a job's start killed its ranks, exit 138) is held, then taken as the run's
// first stop; for a command that does not stop at safe points, the held signal acts as before.
TEST(Resume, SignalBeforeTheHandlersIsHeldForTheRun) {
  EXPECT_EXIT(
      {
        sparsa::hold_early_stops();
        raise(SIGUSR1);  // held: the process goes on
        sparsa::install_stop_handlers(true);
        std::_Exit(sparsa::stop_signal() == SIGUSR1 ? 75 : 3);
      },
      ::testing::ExitedWithCode(75), "SIGUSR1 \\(time limit near\\): stopping");
  EXPECT_EXIT(
      {
        sparsa::hold_early_stops();
        raise(SIGTERM);
        sparsa::release_early_stops();  // `sparsa inspect`: the signal's default action now
        std::_Exit(3);
      },
      ::testing::KilledBySignal(SIGTERM), "");
  // A signal the parent ignores (`trap '' TERM`) stays ignored; a second Ctrl-C while held ends
  // a start-up that hangs (MPI waiting on a peer).
  EXPECT_EXIT(
      {
        signal(SIGTERM, SIG_IGN);
        sparsa::hold_early_stops();
        raise(SIGTERM);
        sparsa::release_early_stops();
        raise(SIGTERM);
        std::_Exit(7);
      },
      ::testing::ExitedWithCode(7), "");
  EXPECT_EXIT(
      {
        sparsa::hold_early_stops();
        raise(SIGINT);
        raise(SIGINT);
        std::_Exit(3);
      },
      ::testing::KilledBySignal(SIGINT), "");
}

// A record inserted before others shifts them all (records are matched by their place): the
// first three that no longer match are named, the rest counted in one line, not one each.
TEST(Resume, ShiftedRecordsAreCountedNotListed) {
  ScopedEnv one_group("SPARSA_GROUP_SECONDS", "1000");
  Fixture fx;
  const std::string out = fx.t / "out.h5", input = fx.t / "in.fa";
  const std::string good = random_fasta(8, 200, 5);
  write_file(input, good + ">broken\nACGT!\n");
  auto cmd = [&](const std::string& extra) { return fx.command(input, out, extra); };
  auto r = run(cmd(""));
  ASSERT_EQ(r.code, 1) << r.output;
  write_file(input, random_fasta(1, 200, 6, "New") + good);
  r = run(cmd("--resume"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("record 3 'rec1' of"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("record 4 'rec2' of"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("8 records of the journal did not match the input and were embedded "
                          "again"),
            std::string::npos)
      << r.output;
}

// The final file cannot be made (here a folder appears at OUT.h5.tmp while the run works; as an
// output folder made read-only would): the error said nothing of the journal, which keeps every
// record. Now it says so, and --resume, once that is fixed, writes the file.
TEST(Resume, FinalFileThatCannotBeMadeSaysTheJournalKeepsTheRecords) {
  Fixture fx;
  const std::string out = fx.t / "out.h5";
  const pid_t pid = fx.start_until_parts(out, 1, fx.t / "log1");
  ASSERT_GT(pid, 0) << read_file(fx.t / "log1");
  fs::create_directory(out + ".tmp");
  EXPECT_EQ(wait_exit(pid), 1) << read_file(fx.t / "log1");
  const std::string log = read_file(fx.t / "log1");
  EXPECT_NE(log.find("out.h5.tmp: cannot create HDF5 file"), std::string::npos) << log;
  EXPECT_NE(log.find("keeps every record: once that is fixed, run the same command with --resume"),
            std::string::npos)
      << log;
  EXPECT_FALSE(exists(out));
  fs::remove(out + ".tmp");
  const pid_t again = spawn(fx.args(out, true), fx.t / "log2");
  ASSERT_EQ(wait_exit(again), 0) << read_file(fx.t / "log2");
  EXPECT_TRUE(exists(out));
}

// An input cut short since the journal was made (a copy that stopped, a file left out): the
// journal's records past its end would be left out of the file without a word. Now a warning
// says how many and where the input ends; and a resume that only writes the file says that its
// records came from the journal (it said "done: 0 records").
TEST(Resume, InputCutShortIsSaidAndJournalOnlyRunIsCounted) {
  ScopedEnv one_group("SPARSA_GROUP_SECONDS", "1000");
  Fixture fx;
  const std::string out = fx.t / "out.h5", input = fx.t / "in.fa";
  const std::string first3 = random_fasta(3, 200, 5), next5 = random_fasta(5, 200, 6, "more");
  write_file(input, first3 + next5 + ">broken\nACGT!\n");
  auto r = run(fx.command(input, out, ""));
  ASSERT_EQ(r.code, 1) << r.output;
  write_file(input, first3);
  r = run(fx.command(input, out, "--resume"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: the journal holds 5 finished records past the input's last "
                          "(record 3): the input now has 3 records"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("done: 3 records from the journal, none to embed"), std::string::npos)
      << r.output;
  EXPECT_EQ(h5::File::open_read(out).list("/records").size(), 3u);
}

// A journal of an earlier version named an input given as ./in.fa as /cwd/./in.fa; this version
// writes /cwd/in.fa. The earlier journal still resumes.
TEST(Resume, EarlierManifestsWithDotsStillResume) {
  EXPECT_EQ(sparsa::normalized_manifest("sparsa-journal 3\ninput /a/./b/../c.fa\nregions_bed "
                                        "/x/./r.bed\npool mean\n"),
            "sparsa-journal 3\ninput /a/c.fa\nregions_bed /x/r.bed\npool mean\n");
  ScopedEnv per_record("SPARSA_GROUP_SECONDS", "0");
  Fixture fx;
  const std::string out = fx.t / "out.h5", input = fx.t / "in.fa";
  const std::string good = random_fasta(3, 300, 4);
  write_file(input, good + ">broken\nAC!GT\n");
  auto cmd = [&](const std::string& extra) { return fx.command(input, out, "-q " + extra); };
  ASSERT_EQ(run(cmd("")).code, 1);
  ASSERT_GE(count_parts(out + ".parts"), 1);
  // The MANIFEST as the earlier version wrote it.
  std::string m = read_file(out + ".parts/MANIFEST");
  const std::string line = "input " + input;
  const size_t at = m.find(line + "\n");
  ASSERT_NE(at, std::string::npos) << m;
  m.replace(at, line.size(), "input " + (fs::path(fx.t.str()) / "." / "in.fa").string());
  write_file(out + ".parts/MANIFEST", m);
  write_file(input, good);
  auto r = run(cmd("--resume"));
  EXPECT_EQ(r.code, 0) << r.output;
}
