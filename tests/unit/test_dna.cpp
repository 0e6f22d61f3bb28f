// Unit tests of src/io/dna: tokens, FASTA/FASTQ reading, regions, BED and faidx fetching.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "io/dna.hpp"

namespace sparsa {
namespace {

namespace fs = std::filesystem;

// Every test gets its own directory, so that tests (and faidx's .fai/.gzi files) never collide.
class DnaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("sparsa_test_dna_" + std::to_string(getpid()) + "_" +
                                        std::to_string(counter++) + "_" + info->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string write(const std::string& name, const std::string& bytes) {
    std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  void sh(const std::string& cmd) { ASSERT_EQ(0, std::system(cmd.c_str())) << cmd; }

  fs::path dir_;
};

std::vector<Record> read_all(const std::string& path, DnaReadOptions opts = {}) {
  FastxReader reader(path, opts);
  std::vector<Record> out;
  Record r;
  while (reader.next(r)) out.push_back(r);
  return out;
}

std::vector<int32_t> toks(const std::string& seq) {
  std::vector<int32_t> out;
  for (unsigned char c : seq) out.push_back(dna_token(c));
  return out;
}

// Runs `fn`, expects exception type E, and checks that each of `parts` is in the message.
template <class E>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one containing '" << parts.front() << "'";
  } catch (const E& e) {
    std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << msg << "\nlacks: " << p;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// A deterministic pseudo-random sequence (fixed LCG) so that compressed files are not trivial.
std::string random_seq(size_t n, uint32_t seed) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    s += "ACGT"[(seed >> 16) & 3];
  }
  return s;
}

std::string wrap(const std::string& seq, size_t width) {
  std::string out;
  for (size_t i = 0; i < seq.size(); i += width) out += seq.substr(i, width) + "\n";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tokens

TEST(DnaToken, EveryByte) {
  std::set<char> iupac;
  for (char c : std::string("NRYSWKMBDHVnryswkmbdhv")) iupac.insert(c);
  for (int c = 0; c < 256; ++c) {
    int32_t want = -1;
    switch (c) {
      case 'A':
      case 'a':
        want = kTokA;
        break;
      case 'C':
      case 'c':
        want = kTokC;
        break;
      case 'G':
      case 'g':
        want = kTokG;
        break;
      case 'T':
      case 't':
      case 'U':
      case 'u':
        want = kTokT;
        break;
      default:
        if (iupac.count((char)c)) want = kTokN;
    }
    EXPECT_EQ(dna_token((unsigned char)c), want) << "byte " << c;
  }
  EXPECT_EQ(kTokA, 3);
  EXPECT_EQ(kTokC, 4);
  EXPECT_EQ(kTokG, 5);
  EXPECT_EQ(kTokT, 6);
  EXPECT_EQ(kTokN, 2);
  for (char c : std::string("XxEeFfIiJjLlOoPpQqZz*-.1 \t\r\n>@"))
    EXPECT_EQ(dna_token((unsigned char)c), -1) << c;
}

TEST(DnaToken, ReverseComplement) {
  std::vector<int32_t> t = {kTokA, kTokC, kTokG, kTokT, kTokN, kTokPad, kTokMask, kTokA};
  reverse_complement(t);
  EXPECT_EQ(t, (std::vector<int32_t>{kTokT, kTokMask, kTokPad, kTokN, kTokA, kTokC, kTokG, kTokT}));
  std::vector<int32_t> s = toks("AACGTTTGCN");
  reverse_complement(s);
  EXPECT_EQ(s, toks("NGCAAACGTT"));
  reverse_complement(s);
  EXPECT_EQ(s, toks("AACGTTTGCN"));
  std::vector<int32_t> empty;
  reverse_complement(empty);
  EXPECT_TRUE(empty.empty());
}

// ---------------------------------------------------------------------------------------------
// FASTA / FASTQ reading

TEST_F(DnaTest, MultiRecordFastaWithDescriptions) {
  std::string p = write("multi.fa",
                        ">chr1/part|x:1 first  record\tdesc  \n"
                        "ACGT\nacgu\nNRYS\n"
                        ">gi|123|ref|NC_1.1|\n"
                        "wkmbdhv\n"
                        ">a:b:c\t  tabbed description\n"
                        "T\n");
  auto recs = read_all(p);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0].name, "chr1/part|x:1");
  EXPECT_EQ(recs[0].description, "first  record\tdesc  ");  // as written, trailing blanks too
  EXPECT_EQ(recs[0].tokens, toks("ACGTACGTNNNN"));
  EXPECT_EQ(recs[1].name, "gi|123|ref|NC_1.1|");
  EXPECT_EQ(recs[1].description, "");
  EXPECT_EQ(recs[1].tokens, std::vector<int32_t>(7, kTokN));
  EXPECT_EQ(recs[2].name, "a:b:c");
  EXPECT_EQ(recs[2].description, "tabbed description");
  EXPECT_EQ(recs[2].tokens, std::vector<int32_t>{kTokT});
  for (const auto& r : recs) {
    EXPECT_EQ(r.source, p);
    EXPECT_EQ(r.region, "");
    EXPECT_EQ(r.offset, 0);
    EXPECT_EQ(r.n_channels, 1);
    EXPECT_TRUE(r.timestamps.empty());
    EXPECT_EQ(r.n_tokens(), (int64_t)r.tokens.size());
  }
}

TEST_F(DnaTest, LeadingAndTrailingEmptyLinesAndNoFinalNewline) {
  auto a = read_all(write("a.fa", "\n\n>r1\nACGT\n\n\n"));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].tokens, toks("ACGT"));
  auto b = read_all(write("b.fa", ">r1\nAC\nGT"));
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].tokens, toks("ACGT"));
}

TEST_F(DnaTest, CrlfReadsLikeLf) {
  std::string lf = ">r1 some desc\nACGTN\nacg\n>r2|x\nTTTT\n";
  std::string crlf;
  for (char c : lf) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  std::string crcrlf;  // CRLF converted twice, as careless transfers do
  for (char c : lf) crcrlf += c == '\n' ? std::string("\r\r\n") : std::string(1, c);
  auto a = read_all(write("lf.fa", lf));
  auto b = read_all(write("crlf.fa", crlf));
  auto c = read_all(write("crcrlf.fa", crcrlf));
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  ASSERT_EQ(c.size(), 2u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].description, b[i].description);
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_EQ(a[i].name, c[i].name);
    EXPECT_EQ(a[i].description, c[i].description);
    EXPECT_EQ(a[i].tokens, c[i].tokens);
  }
  EXPECT_EQ(b[0].description, "some desc");
  EXPECT_EQ(b[0].tokens, toks("ACGTNACG"));
  // A lone '\r' inside a sequence line is not sequence either (spec 1): skipped, and the
  // positions of an error after it count only the bases.
  auto m = read_all(write("cr-mid.fa", ">r1\nAC\rGT\r\rN\n"));
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].tokens, toks("ACGTN"));
  try {
    read_all(write("cr-bad.fa", ">r1\nA\rC!G\n"));
    ADD_FAILURE() << "no error for '!'";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("position 3"), std::string::npos) << e.what();
  }

  std::string fq = "@q1 d\r\nACGT\r\n+\r\nIIII\r\n";
  auto q = read_all(write("crlf.fq", fq));
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].description, "d");
  EXPECT_EQ(q[0].tokens, toks("ACGT"));
}

// Invalid characters: the message names the file, the record and the 1-based position within the
// record (counted across line breaks).
TEST_F(DnaTest, InvalidCharactersNamePositionRecordAndFile) {
  struct Case {
    char c;
    std::string shown;
  };
  for (const Case& k : std::vector<Case>{{'X', "'X' (0x58)"},
                                         {'*', "'*' (0x2A)"},
                                         {'-', "'-' (0x2D)"},
                                         {'1', "'1' (0x31)"},
                                         {' ', "' ' (0x20)"},
                                         {'\t', "0x09"}}) {
    std::string p = write("bad.fa", std::string(">ok\nACGT\n>bad|1 d\nACGT\nAC") + k.c + "G\n");
    expect_error<InputError>(
        [&] { read_all(p); },
        {p, "record 'bad|1'", "position 7", "invalid character " + k.shown + " at line 5, column 3",
         "--invalid-as-n"});
  }
  // FASTQ: the sequence line's number and column too.
  std::string q = write("bad.fq", "@a\nACGT\n+\nIIII\n@b\nACGTAXC\n+\nIIIIIII\n");
  expect_error<InputError>([&] { read_all(q); },
                           {q, "record 'b'", "position 6", "'X' (0x58) at line 6, column 6"});
}

TEST_F(DnaTest, InvalidAsN) {
  std::string p = write("bad.fa", ">r\nAC*G\nx-1T\n");
  auto recs = read_all(p, DnaReadOptions{true});
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].tokens,
            (std::vector<int32_t>{kTokA, kTokC, kTokN, kTokG, kTokN, kTokN, kTokN, kTokT}));
  expect_error<InputError>([&] { read_all(p); }, {"position 3", "'*'"});
  // Said, not silent: how many, and the first.
  EXPECT_NE(recs[0].warning.find("record 'r': position 3: 4 invalid characters read as N "
                                 "(--invalid-as-n), the first '*'"),
            std::string::npos)
      << recs[0].warning;
  EXPECT_EQ(recs[0].read_as_n, 4);  // the record's invalid_as_n attribute in the output
  EXPECT_EQ(read_all(write("ok.fa", ">r\nACGT\n"), DnaReadOptions{true})[0].read_as_n, 0);
  EXPECT_EQ(read_all(write("ok.fa", ">r\nACGT\n"), DnaReadOptions{true})[0].warning, "");
  // Blanks in sequence lines: N each (spec 1), with how to drop them instead.
  auto blanks = read_all(write("bl.fa", ">r\nACGT \nACGT\n"), DnaReadOptions{true});
  EXPECT_EQ(blanks[0].tokens.size(), 9u);
  EXPECT_NE(blanks[0].warning.find("blanks in sequence lines"), std::string::npos)
      << blanks[0].warning;
  // Without --invalid-as-n a blank's error says to drop blanks, not to read them as N.
  expect_error<InputError>(
      [&] { read_all(write("bl2.fa", ">r\nACGT \nACGT\n")); },
      {"position 5", "blanks in a sequence line", "sed '/^>/!s/[[:blank:]]//g' < FILE > NEW"});
}

// The commands that errors advise to fix an input (blanks in a sequence line, lone-CR line ends,
// a byte-order mark) work as given, on a plain file and on a gzip or bgzip one (sed or tr run on
// compressed bytes damaged them, or changed nothing): each is run with FILE and NEW put in, and
// its output reads as the clean file does.
TEST_F(DnaTest, AdvisedFixCommandsWork) {
  const std::string clean = ">a desc\nACGTACGT\nACGT\n>b\nGGGG\n";
  const auto want = read_all(write("clean.fa", clean));
  const std::pair<std::string, std::string> broken[] = {
      {"blanks.fa", ">a desc\nACGTACGT \nAC GT\n>b\nGGGG\t\n"},
      {"mac.fa", ">a desc\rACGTACGT\rACGT\r>b\rGGGG\r"},
      {"bom.fa", "\xEF\xBB\xBF" + clean}};
  for (const auto& [name, text] : broken)
    for (const std::string z : {"", "gzip", "bgzip"}) {
      std::string p = write(name, text);
      if (!z.empty()) {
        sh(z + " -c '" + p + "' > '" + p + ".gz'");
        p += ".gz";
      }
      std::string msg;
      try {
        read_all(p);
      } catch (const InputError& e) {
        msg = e.what();
      }
      const size_t a = msg.find('`'), b = msg.find('`', a + 1);
      ASSERT_NE(b, std::string::npos) << p << ": " << msg;
      std::string cmd = msg.substr(a + 1, b - a - 1);
      const std::string fixed = p + ".fixed" + (z.empty() ? "" : ".gz");
      cmd.replace(cmd.find("FILE"), 4, "'" + p + "'");
      cmd.replace(cmd.find(z.empty() ? "NEW" : "NEW.gz"), z.empty() ? 3 : 6, "'" + fixed + "'");
      sh(cmd);
      const auto got = read_all(fixed);
      ASSERT_EQ(got.size(), want.size()) << cmd;
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].name, want[i].name) << cmd;
        EXPECT_EQ(got[i].tokens, want[i].tokens) << cmd;
      }
    }
}

TEST_F(DnaTest, Fastq) {
  std::string p = write("r.fq",
                        "@read/1 lane:1\nACGTU\n+\nIIIII\n"
                        "\n"
                        "@read/2\nnnac\n+read/2\n@@@@\n");
  auto recs = read_all(p);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].name, "read/1");
  EXPECT_EQ(recs[0].description, "lane:1");
  EXPECT_EQ(recs[0].tokens, toks("ACGTT"));
  EXPECT_EQ(recs[1].name, "read/2");
  EXPECT_EQ(recs[1].tokens, toks("NNAC"));
  EXPECT_EQ(recs[1].source, p);
}

TEST_F(DnaTest, FastqErrors) {
  std::string q1 = write("q1.fq", "@a\nACGT\n+\nIIII\n@b\nACGT\n+\nIII\n@c\nA\n+\nI\n");
  expect_error<InputError>([&] { read_all(q1); }, {q1, "record 'b'", "quality length 3"});
  // The last line of the file, short: the file was cut inside the quality string.
  std::string q1t = write("q1t.fq", "@a\nACGT\n+\nIIII\n@b\nACGTACGT\n+\nIII");
  expect_error<InputError>([&] { read_all(q1t); },
                           {q1t + ": line 8", "record 'b'", "truncated FASTQ record",
                            "the file ends after 3 of its 8 quality characters"});
  // The same at a line's end: cut there, or a quality line written short (both said).
  std::string q1n = write("q1n.fq", "@a\nACGT\n+\nIIII\n@b\nACGTACGT\n+\nIII\n");
  expect_error<InputError>([&] { read_all(q1n); },
                           {q1n + ": line 8", "record 'b'", "interrupted download",
                            "a quality line written short (quality length 3, sequence length 8)"});
  std::string q2 = write("q2.fq", "@a\nACGT\n+\n");
  expect_error<InputError>([&] { read_all(q2); },
                           {q2 + ": line 4", "record 'a'", "truncated FASTQ", "quality"});
  std::string q3 = write("q3.fq", "@a\nACGT\nIIII\nIIII\n");
  expect_error<InputError>([&] { read_all(q3); }, {q3, "line 3", "'+'"});
  // A quality byte outside '!'..'~' (a space, a tab, non-ASCII): named with its base and line.
  std::string qa = write("qa.fq", "@a\nACGT\n+\nIIII\n@b\nACGTA\n+\nII I!\n");
  expect_error<InputError>([&] { read_all(qa); },
                           {qa, "record 'b'", "position 3", "line 8, column 3", "quality"});
  std::string qb = write("qb.fq", "@a\nACGT\n+\nII\xc3\xa9\n");
  expect_error<InputError>([&] { read_all(qb); }, {qb, "record 'a'", "position 3", "0xC3"});
  // A non-ASCII byte is named before a length it makes differ (a terminal shows 4 characters).
  std::string qn = write("qn.fq", "@a\nACGT\n+\nIII\xc3\xa9\n@b\nA\n+\nI\n");
  expect_error<InputError>([&] { read_all(qn); }, {qn, "record 'a'", "position 4", "0xC3"});
  EXPECT_EQ(read_all(write("qc.fq", "@a\nACGT\n+\n!~@h\n")).size(), 1u);
  std::string q4 = write("q4.fq", "@a\nACXT\n+\nIIII\n");
  expect_error<InputError>([&] { read_all(q4); }, {q4, "record 'a'", "position 3", "'X'"});
  std::string q5 = write("q5.fq", "@a\nACGT\n+\nIIII\nACGT\n");
  expect_error<InputError>([&] { read_all(q5); },
                           {q5, "line 5", "'@' header after record 'a'", "seqtk seq"});
  std::string q6 = write("q6.fq", "@a\n\n+\n\n");
  expect_error<InputError>([&] { read_all(q6); }, {q6, "record 'a'", "empty record"});
  // Wrapped sequence (multi-line FASTQ): said so, with the fix; quality letters are not bases.
  std::string q7 = write("q7.fq", "@a\nACGT\nACGT\n+\nIIIIIIII\n");
  expect_error<InputError>([&] { read_all(q7); }, {q7, "line 3", "a second sequence line"});
  std::string msg;
  try {
    read_all(q3);
  } catch (const InputError& e) {
    msg = e.what();
  }
  EXPECT_EQ(msg.find("second sequence line"), std::string::npos) << msg;
  // A '+' line that repeats the header up to blanks at its end is the same record's; so is one
  // that repeats the name with another description (samtools reads those too).
  auto recs = read_all(write("q8.fq",
                             "@r1 desc \nACGT\n+r1 desc\nIIII\n@r2\nAC\n+r2 \nII\n"
                             "@r3 a\nGG\n+r3 b\nII\n@r4\tx\nT\n+r4 x\nI\n"));
  ASSERT_EQ(recs.size(), 4u);
  EXPECT_EQ(recs[1].tokens.size(), 2u);
  EXPECT_EQ(recs[3].name, "r4");
  std::string q9 = write("q9.fq", "@r1 a\nACGT\n+r2 a\nIIII\n");
  expect_error<InputError>([&] { read_all(q9); }, {q9, "line 3", "names another record"});
  // Lines of blanks alone between reads are skipped, as empty ones are.
  EXPECT_EQ(read_all(write("qs.fq", " \n@r1\nACGT\n+\nIIII\n \t\n@r2\nAC\n+\nII\n")).size(), 2u);
  // An empty read (trimmed to nothing) is refused with the way to drop such reads.
  std::string qe = write("qe.fq", "@r1\nACGT\n+\nIIII\n@r2\n\n+\n\n");
  expect_error<InputError>([&] { read_all(qe); },
                           {qe, "record 'r2'", "empty record", "seqkit seq -m 1"});
  // A read named like a SAM header tag, with a tab before its description, is a read.
  auto rg = read_all(write("rg.fq", "@RG\tlane1\nACGT\n+\nIIII\n"));
  ASSERT_EQ(rg.size(), 1u);
  EXPECT_EQ(rg[0].name, "RG");
}

TEST_F(DnaTest, GzipAndBgzipReadLikePlain) {
  std::string plain =
      ">r1 desc\n" + wrap(random_seq(5000, 1), 60) + ">r2\n" + wrap(random_seq(777, 2), 70);
  std::string p = write("x.fa", plain);
  sh("gzip -c '" + p + "' > '" + p + ".gz'");
  sh("bgzip -c '" + p + "' > '" + p + ".bgz'");
  auto a = read_all(p);
  auto b = read_all(p + ".gz");
  auto c = read_all(p + ".bgz");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(a[0].tokens.size(), 5000u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].description, c[i].description);
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_EQ(a[i].tokens, c[i].tokens);
  }
  EXPECT_EQ(b[0].source, p + ".gz");
}

TEST_F(DnaTest, TruncatedCompressedInputIsAnError) {
  std::string p = write("big.fa", ">r1\n" + wrap(random_seq(300000, 3), 60) + ">r2\nACGT\n");
  sh("gzip -c '" + p + "' > '" + p + ".gz'");
  sh("bgzip -c '" + p + "' > '" + p + ".bgz'");
  for (std::string z : {p + ".gz", p + ".bgz"}) {
    auto size = fs::file_size(z);
    std::string cut = z + ".half";
    fs::copy_file(z, cut);
    fs::resize_file(cut, size / 2);
    // Said as what decompresses (zlib streams it again: htslib drops the block it failed in),
    // and as a file cut short.
    expect_error<InputError>([&] { read_all(cut); },
                             {cut, "truncated or corrupt", "lines 1 to ", "cut short"});
    // As many lines as gzip itself gets out of it, less at most one 4 KB read's worth.
    try {
      read_all(cut);
    } catch (const InputError& e) {
      const std::string m = e.what();
      const long long said = std::stoll(m.substr(m.find("lines 1 to ") + 11));
      FILE* wc = popen(("gzip -dc '" + cut + "' 2>/dev/null | wc -l").c_str(), "r");
      ASSERT_NE(wc, nullptr);
      long long gzip_lines = -1;
      ASSERT_EQ(std::fscanf(wc, "%lld", &gzip_lines), 1);
      pclose(wc);
      EXPECT_LE(said, gzip_lines) << m;
      EXPECT_GE(said, gzip_lines - 4096 / 60 - 1) << m;
    }
  }
  // A small gzip cut short (htslib read nothing: its one block failed) says the lines before.
  std::string small = write("small.fa", ">r1\n" + wrap(random_seq(30000, 4), 60));
  sh("gzip -c '" + small + "' > '" + small + ".gz'");
  fs::resize_file(small + ".gz", fs::file_size(small + ".gz") * 2 / 3);
  expect_error<InputError>([&] { read_all(small + ".gz"); }, {"lines 1 to ", "cut short"});
  // Corrupt in the middle, not cut: said as corrupt, with zlib's reason.
  std::string bad = p + ".bad.gz";
  fs::copy_file(p + ".gz", bad);
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp((std::streamoff)fs::file_size(bad) / 2);
    f.put('\x55').put('\xAA').put('\x00');
  }
  expect_error<InputError>([&] { read_all(bad); }, {bad, "compressed data is corrupt (zlib: "});
  // A bgzip file cut at a block boundary: only the missing 28-byte EOF block tells.
  std::string noeof = p + ".noeof.bgz";
  fs::copy_file(p + ".bgz", noeof);
  fs::resize_file(noeof, fs::file_size(noeof) - 28);
  expect_error<InputError>([&] { read_all(noeof); }, {noeof, "end-of-file marker is missing",
                                                      "lines 1 to ", "cut at a block boundary"});
  // ... said when the file is opened, before any record (it came after the last one), with the
  // lines that decompress.
  {
    FILE* wc = popen(("gzip -dc '" + noeof + "' 2>/dev/null | wc -l").c_str(), "r");
    ASSERT_NE(wc, nullptr);
    long long lines = -1;
    ASSERT_EQ(std::fscanf(wc, "%lld", &lines), 1);
    pclose(wc);
    expect_error<InputError>([&] { FastxReader opened(noeof, DnaReadOptions{}); },
                             {noeof, "end-of-file marker is missing",
                              "lines 1 to " + std::to_string(lines) + " decompress"});
  }
  // A gzip file cut within its 10-byte header is read as plain text: said as gzip cut short.
  std::string head = p + ".head.gz";
  fs::copy_file(p + ".gz", head);
  fs::resize_file(head, 9);
  expect_error<InputError>([&] { read_all(head); },
                           {head, "line 1", "gzip's magic bytes", "cut short"});
}

// A FASTQ gzip cut short: the read that fails gives back the text before its block (htslib drops
// the block, up to 64 KB) as if it ended a line. Taken as the line, that part made a quality line
// "42 long for a sequence of 150" at a line that is whole in the file: every cut point is said as
// a file cut short instead.
// `n` FASTQ reads of 150 random bases, named r0, r1, ...
std::string reads_fastq(int n, uint32_t seed) {
  std::string fq;
  const std::string seq = random_seq(150 * (size_t)n, seed);
  for (int i = 0; i < n; ++i)
    fq += "@r" + std::to_string(i) + "\n" + seq.substr(150 * (size_t)i, 150) + "\n+\n" +
          std::string(150, 'I') + "\n";
  return fq;
}

TEST_F(DnaTest, TruncatedGzipFastqIsNotABadRead) {
  std::string p = write("reads.fq", reads_fastq(4000, 5));
  sh("gzip -c '" + p + "' > '" + p + ".gz'");
  const auto size = fs::file_size(p + ".gz");
  for (int k = 1; k <= 7; ++k) {
    std::string cut = p + ".cut" + std::to_string(k) + ".gz";
    fs::copy_file(p + ".gz", cut);
    fs::resize_file(cut, size * k / 8);
    expect_error<InputError>([&] { read_all(cut); },
                             {cut, "truncated or corrupt", "lines 1 to ", "cut short"});
  }
}

// The record count a run expects (progress's "of ~N", the output-size check) from the first 256 KB
// of text: for a compressed file, the text's size from this file's own compression ratio, not a
// fixed one (reads compress ~3x where a genome compresses ~4.5x: 20,000 reads were expected as
// ~15,000).
TEST_F(DnaTest, CompressedSampleGivesTheTextsSize) {
  const std::string fq = reads_fastq(20000, 7);
  std::string p = write("r.fq", fq);
  sh("gzip -c '" + p + "' > '" + p + ".gz'");
  sh("bgzip -c '" + p + "' > '" + p + ".bgz'");
  const InputSample plain = sample_records(p, 256 << 10);
  EXPECT_FALSE(plain.whole);
  EXPECT_EQ(plain.compressed, 0);
  for (const std::string z : {p + ".gz", p + ".bgz"}) {
    const InputSample s = sample_records(z, 256 << 10);
    ASSERT_FALSE(s.whole) << z;
    ASSERT_GT(s.compressed, 0) << z;
    const double text = (double)fs::file_size(z) * (double)s.bytes / (double)s.compressed;
    EXPECT_NEAR(text, (double)fq.size(), 0.05 * (double)fq.size()) << z;  // (4.5x: -25%)
    EXPECT_NEAR((double)s.records * text / (double)s.bytes, 20000.0, 1000.0) << z;
    // A token a base: the sample's share of sequence is the file's (150 of ~313 bytes a read),
    // not all of its text.
    EXPECT_NEAR(text * (double)s.sequence / (double)s.bytes, 150.0 * 20000, 0.05 * 150 * 20000)
        << z;
  }
  EXPECT_NEAR((double)plain.sequence / (double)plain.bytes, 150.0 * 20000 / (double)fq.size(),
              0.01);
  // Read whole: exact, nothing to extrapolate.
  std::string small = write("s.fq", "@a\nACGT\n+\nIIII\n");
  sh("gzip -c '" + small + "' > '" + small + ".gz'");
  const InputSample w = sample_records(small + ".gz", 256 << 10);
  EXPECT_TRUE(w.whole);
  EXPECT_EQ(w.records, 1);
  EXPECT_EQ(w.sequence, 4);
  EXPECT_EQ(w.compressed, 0);
  std::string fa = write("s.fa", ">a long description\nACGTA\nCG\n>b\nT\n");
  const InputSample f = sample_records(fa, 256 << 10);
  EXPECT_EQ(f.records, 2);
  EXPECT_EQ(f.sequence, 8);
}

TEST_F(DnaTest, GarbageIsNotFasta) {
  std::string bin = write("g.bin", std::string("\x00\xff\x01\x02garbage\n>r\nACGT\n", 19));
  expect_error<InputError>([&] { FastxReader r(bin, {}); }, {bin, "line 1", "not FASTA/FASTQ"});
  std::string txt = write("g.txt", "\nhello\n>r\nACGT\n");
  expect_error<InputError>([&] { read_all(txt); }, {txt, "line 2", "not FASTA/FASTQ", "'h'"});
  // Compressed by a program htslib does not read, or a CSV table: said so, with what to do.
  std::string bz = write("b.fa.gz", "BZh91AY&SY\x01\x02");
  expect_error<InputError>([&] { read_all(bz); },
                           {bz, "line 1", "bzip2-compressed", "`bzcat FILE | bgzip > FILE.fa.gz`"});
  std::string xz = write("x.fa", std::string("\xFD"
                                             "7zXZ\0\0",
                                             8));
  expect_error<InputError>([&] { read_all(xz); }, {xz, "line 1", "xz-compressed", "`xzcat FILE"});
  std::string zs = write("z.fa", std::string("\x28\xB5\x2F\xFD\0\0", 6));
  expect_error<InputError>([&] { read_all(zs); }, {zs, "line 1", "zstd-compressed", "`zstdcat"});
  std::string csv = write("t.csv", "date,close\n2020-01-01,1\n");
  expect_error<InputError>([&] { read_all(csv); },
                           {csv, "line 1", "a time-series CSV needs a time-series model"});
  // SAM (header or not), BAM, a byte-order mark: named, with the conversion; through faidx too.
  std::string sam =
      write("x.sam", "@HD\tVN:1.6\n@SQ\tSN:c\tLN:4\nr\t0\tc\t1\t60\t4M\t*\t0\t0\tACGT\tIIII\n");
  expect_error<InputError>([&] { read_all(sam); }, {sam, "a SAM file", "samtools fasta"});
  expect_error<InputError>([&] { FaidxFetcher f(sam, {}); }, {sam, "a SAM file", "samtools fasta"});
  std::string bare = write("y.sam", "r\t0\tc\t1\t60\t4M\t*\t0\t0\tACGT\tIIII\n");
  expect_error<InputError>([&] { read_all(bare); }, {bare, "SAM alignment records"});
  std::string bam = write("x.bam", std::string("BAM\x01\0\0\0\0", 8));
  expect_error<InputError>([&] { read_all(bam); }, {bam, "a BAM file"});
  std::string rgsam = write("rg.sam", "@RG\tID:x\tSM:y\n");
  expect_error<InputError>([&] { read_all(rgsam); }, {rgsam, "a SAM file (its header line @RG"});
  std::string u16 = write("u16.fa", std::string("\xFF\xFE>\0a\0\n\0", 8));
  expect_error<InputError>([&] { read_all(u16); }, {u16, "UTF-16 text", "iconv -f UTF-16"});
  std::string bom = write("bom.fa", "\xEF\xBB\xBF>a\nACGT\n");
  expect_error<InputError>([&] { read_all(bom); }, {bom, "byte-order mark"});
  // Binary files are named as such, not taken for a table (a byte 0x2C or 0x09 among them).
  std::string h5 = write("m.h5", std::string("\x89HDF\r\n\x1A\n\0\0\0,", 12));
  expect_error<InputError>([&] { read_all(h5); }, {h5, "an HDF5 file"});
  std::string elf = write("a.out", std::string("\x7F"
                                               "ELF\x02\x01,\t\0",
                                               9));
  expect_error<InputError>([&] { read_all(elf); }, {elf, "an executable program"});
  std::string rnd = write("r.bin", std::string("\xC2\x01,\x05\tz\n", 7));
  expect_error<InputError>([&] { read_all(rnd); }, {rnd, "binary data, not FASTA/FASTQ text"});
  expect_error<InputError>([&] { FastxReader r(bin, {}); }, {bin, "binary data"});
  std::string empty = write("e.fa", "");
  expect_error<InputError>([&] { read_all(empty); }, {empty, "no FASTA/FASTQ records"});
  std::string missing = (dir_ / "missing.fa").string();
  expect_error<InputError>([&] { read_all(missing); }, {missing, "cannot open"});
  // Names and descriptions go into UTF-8 strings: Latin-1 headers are refused, UTF-8 read.
  std::string latin1 = write("l.fa", ">a\nACGT\n>Z\xFCrich d\nACGT\n");
  expect_error<InputError>([&] { read_all(latin1); }, {latin1, "line 3", "not UTF-8", "0xFC"});
  EXPECT_EQ(read_all(write("u.fa", ">Z\xC3\xBCrich\nACGT\n"))[0].name, "Z\xC3\xBCrich");
}

TEST_F(DnaTest, EmptyRecordsDuplicatesAndEmptyNames) {
  std::string e1 = write("e1.fa", ">a\n>b\nACGT\n");
  expect_error<InputError>([&] { read_all(e1); }, {e1, "record 'a'", "empty record", "(line 1)"});
  std::string e2 = write("e2.fa", ">a\nACGT\n>b desc\n\n");
  expect_error<InputError>([&] { read_all(e2); }, {e2, "record 'b'", "empty record"});
  std::string d = write("d.fa", ">a x\nACGT\n>b\nAC\n>a y\nGG\n");
  expect_error<InputError>([&] { read_all(d); }, {d, "record 'a'", "duplicate record name"});
  // A FASTQ may repeat a name (interleaved mates): both are read, the second with a warning.
  std::string pe =
      write("pe.fq", "@m/1 1:N:0\nACGT\n+\nIIII\n@m 2:N:0\nGG\n+\nII\n@m 1:N:0\nAC\n+\nII\n");
  std::string pe2 = write("pe2.fq", "@m 1:N:0\nACGT\n+\nIIII\n@m 2:N:0\nGG\n+\nII\n");
  auto reads = read_all(pe2);
  ASSERT_EQ(reads.size(), 2u);
  EXPECT_EQ(reads[0].warning, "");
  EXPECT_EQ(reads[1].name, "m");
  EXPECT_EQ(reads[1].description, "2:N:0");
  EXPECT_NE(reads[1].warning.find("line 5: the name repeats an earlier read's"), std::string::npos)
      << reads[1].warning;
  EXPECT_EQ(read_all(pe).size(), 3u);
  std::string n1 = write("n1.fa", ">\nACGT\n");
  expect_error<InputError>([&] { read_all(n1); }, {n1, "line 1", "empty record name"});
  std::string n2 = write("n2.fa", ">a\nAC\n> \t\nACGT\n");
  expect_error<InputError>([&] { read_all(n2); }, {n2, "line 3", "empty record name"});
  // Blanks between '>' (or '@') and the name are skipped, as htslib's faidx does: `> r2 x` is r2.
  std::string n3 = write("n3.fa", ">a\nAC\n> r2 x y\nACGT\n");
  auto named = read_all(n3);
  ASSERT_EQ(named.size(), 2u);
  EXPECT_EQ(named[1].name, "r2");
  EXPECT_EQ(named[1].description, "x y");
  std::string n4 = write("n4.fq", "@ \tq1 d\nAC\n+\nII\n");
  EXPECT_EQ(read_all(n4).at(0).name, "q1");
}

// A long record in short lines must read in linear time (a per-line exact reserve once made this
// quadratic: minutes for a few megabases).
TEST_F(DnaTest, LongRecordReadsInLinearTime) {
  std::string seq = random_seq(3000000, 7);
  std::string p = write("long.fa", ">long\n" + wrap(seq, 60));
  auto t0 = std::chrono::steady_clock::now();
  auto recs = read_all(p);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].tokens.size(), seq.size());
  EXPECT_EQ(recs[0].tokens[2999999], dna_token((unsigned char)seq.back()));
  EXPECT_LT(secs, 10.0);
}

TEST_F(DnaTest, LambdaGenome) {
  std::string p = std::string(SPARSA_SOURCE_DIR) + "/examples/lambda_virus.fa.gz";
  auto recs = read_all(p);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].name, "gi|9626243|ref|NC_001416.1|");
  EXPECT_EQ(recs[0].description, "Enterobacteria phage lambda, complete genome");
  ASSERT_EQ(recs[0].tokens.size(), 48502u);
  for (int32_t t : recs[0].tokens) ASSERT_TRUE(t >= kTokA && t <= kTokT);
  EXPECT_EQ(std::vector<int32_t>(recs[0].tokens.begin(), recs[0].tokens.begin() + 10),
            toks("GGGCGGCGAC"));
}

// ---------------------------------------------------------------------------------------------
// Regions

// A parsed region's record name and 0-based half-open span (end -1: to the record's end).
void expect_region(const RegionSpec& r, const std::string& name, int64_t begin, int64_t end) {
  EXPECT_EQ(r.name, name) << r.text;
  EXPECT_EQ(r.begin, begin) << r.text;
  EXPECT_EQ(r.end, end) << r.text;
}

TEST(ParseRegion, Forms) {
  RegionSpec r = parse_region("chr1");
  EXPECT_EQ(r.text, "chr1");
  EXPECT_EQ(r.name, "chr1");
  EXPECT_EQ(r.begin, 0);
  EXPECT_EQ(r.end, -1);
  r = parse_region("chr1:1,000-2,000");
  EXPECT_EQ(r.name, "chr1");
  EXPECT_EQ(r.begin, 999);
  EXPECT_EQ(r.end, 2000);
  r = parse_region("chr1:5");
  EXPECT_EQ(r.begin, 4);
  EXPECT_EQ(r.end, -1);
  r = parse_region("chr1:5-");
  EXPECT_EQ(r.begin, 4);
  EXPECT_EQ(r.end, -1);
  r = parse_region("chr1:7-7");
  EXPECT_EQ(r.begin, 6);
  EXPECT_EQ(r.end, 7);
  r = parse_region("gi|1|ref|X.1|:1-10");
  EXPECT_EQ(r.name, "gi|1|ref|X.1|");
  EXPECT_EQ(r.end, 10);
  expect_region(parse_region("chr1:-5"), "chr1", 0, 5);  // as samtools: from the first base
  // k, M, G suffixes and fractions that come out whole, as htslib's hts_parse_decimal
  expect_region(parse_region("chr1:1k-2k"), "chr1", 999, 2000);
  expect_region(parse_region("chr1:1.5K-2.25m"), "chr1", 1499, 2250000);
  expect_region(parse_region("chr1:1,000-1.001k"), "chr1", 999, 1001);
  expect_region(parse_region("chr1:.5k-1G"), "chr1", 499, 1000000000);
  for (const char* bad : {"chr1:1.2345k-2k", "chr1:1.5-2", "chr1:k-2", "chr1:1kk-2", "chr1:1x"})
    expect_error<ConfigError>([&] { parse_region(bad); }, {bad});
  // A fraction that does not come out whole is said as the number it is.
  expect_error<ConfigError>([&] { parse_region("chr1:1.5001k-2k"); },
                            {"bad start: '1.5001k' is 1500.1, not a whole number of bases"});
  expect_error<ConfigError>([&] { parse_region("chr1:1-1,000.0000001M"); },
                            {"bad end: '1,000.0000001M' is 1000000000.1, not a whole number"});
  // Digits too large for any sequence: said so (not "bad end").
  expect_error<ConfigError>([&] { parse_region("chr1:1-99999999999999999999"); },
                            {"bad end: 99999999999999999999 is past any sequence's length"});
  // A name holding ':' with a lone start after it: an allele missing from the file is read as
  // another allele's bases from that start on, as samtools reads it, with a warning.
  const std::vector<std::string> hla{"HLA-A*01:01:01", "chr1"};
  const RegionSpec allele = parse_region("HLA-A*01:01:01:02", hla);
  expect_region(allele, "HLA-A*01:01:01", 1, -1);
  EXPECT_NE(allele.warning.find("no record is named 'HLA-A*01:01:01:02', so it is read as record "
                                "'HLA-A*01:01:01' from base 02 to its end"),
            std::string::npos)
      << allele.warning;
  EXPECT_EQ(parse_region("{HLA-A*01:01:01}:02-", hla).warning, "");
  EXPECT_EQ(parse_region("HLA-A*01:01:01:2-5", hla).warning, "");
  EXPECT_EQ(parse_region("chr1:100", hla).warning, "");
  EXPECT_EQ(fractional_count(".5001k"), "500.1");
  EXPECT_EQ(fractional_count("1.5k"), "");  // whole
  EXPECT_EQ(fractional_count("1.5"), "");   // no suffix: not a count at all
  EXPECT_EQ(fractional_count("1.5x1k"), "");
}

// A text that names a record and also a range of another record is refused, as samtools faidx
// refuses it; htslib's braces say which is meant.
TEST(ParseRegion, AmbiguousNamesAndBraces) {
  const std::vector<std::string> known = {"chr1", "chr1:10-20"};
  expect_error<ConfigError>([&] { parse_region("chr1:10-20", known); },
                            {"ambiguous", "{chr1:10-20}", "{chr1}:10-20"});
  expect_region(parse_region("{chr1:10-20}", known), "chr1:10-20", 0, -1);
  expect_region(parse_region("{chr1}:10-20", known), "chr1", 9, 20);
  expect_region(parse_region("{chr1:10-20}:2-3", known), "chr1:10-20", 1, 3);
  // Not a range of the prefix ("x" is no position): the whole name, no ambiguity.
  EXPECT_EQ(parse_region("chr1:x", {"chr1", "chr1:x"}).name, "chr1:x");
}

TEST(ParseRegion, NamesWithColons) {
  std::vector<std::string> known = {"HLA-A*01:01:01", "chr1"};
  expect_region(parse_region("HLA-A*01:01:01", known), "HLA-A*01:01:01", 0, -1);
  expect_region(parse_region("HLA-A*01:01:01:10-20", known), "HLA-A*01:01:01", 9, 20);
  // Unknown names are returned as they are: fetch reports them with the file's names.
  expect_region(parse_region("chrZ:3-4", known), "chrZ", 2, 4);
  // Without the known name, the trailing ':01' reads as a range.
  expect_region(parse_region("HLA-A*01:01:01"), "HLA-A*01:01", 0, -1);
}

TEST(ParseRegion, BadSyntax) {
  for (std::string bad :
       {"", ":1-2", "chr:0-5", "chr:10-5", "chr:x", "chr:1-y", "chr:", "chr:-", "chr:1-2-3",
        "chr:1.5", "chr:+3", "{chr", "{}:1-2", "{chr}x", "{chr}:x"}) {
    expect_error<ConfigError>([&] { parse_region(bad); }, {"region '" + bad + "'"});
  }
}

TEST_F(DnaTest, ReadBed) {
  std::string p = write("r.bed",
                        "# comment\n"
                        "track name=x\n"
                        "browser position chr1\n"
                        "\n"
                        "chr1\t0\t100\tfeat\t0\t+\n"
                        "gi|1|x:y  5   6\r\n"
                        "chr2\t10\t20\n");
  auto r = read_bed(p);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].name, "chr1");
  EXPECT_EQ(r[0].begin, 0);
  EXPECT_EQ(r[0].end, 100);
  EXPECT_EQ(r[0].text, p + " line 5");
  EXPECT_EQ(r[1].name, "gi|1|x:y");
  EXPECT_EQ(r[1].begin, 5);
  EXPECT_EQ(r[1].end, 6);
  EXPECT_EQ(r[1].text, p + " line 6");
  EXPECT_EQ(r[2].name, "chr2");
  EXPECT_EQ(r[2].text, p + " line 7");
  EXPECT_TRUE(read_bed(write("empty.bed", "# nothing\n")).empty());
  // A zero-length interval (an insertion point) is legal BED with no base to embed: skipped, its
  // line told.
  std::vector<long long> empty;
  auto z = read_bed(write("zero.bed", "chr1\t10\t10\nchr1\t10\t12\nchr2\t0\t0\n"), &empty);
  ASSERT_EQ(z.size(), 1u);
  EXPECT_EQ(z[0].end, 12);
  EXPECT_EQ(empty, (std::vector<long long>{1, 3}));
}

TEST_F(DnaTest, ReadBedErrors) {
  struct Case {
    std::string line, what;
  };
  for (const Case& k : std::vector<Case>{{"chr1\t10", "3 columns"},
                                         {"chr1\tx\t20", "not an integer"},
                                         {"chr1\t10\t2o", "not an integer"},
                                         {"chr1\t1,0\t20", "not an integer"},
                                         {"chr1\t-1\t20", "negative"},
                                         {"chr1\t0\t99999999999999999999", "end is past any"},
                                         {"chr1\t20\t10", "not be less than start"},
                                         // an empty tab field is not the next column shifted
                                         {"chr1\t2\t\t10\tgeneA", "column 3 (end) is empty"},
                                         {"chr1\t\t0\t5", "column 2 (start) is empty"},
                                         {"\tchr1\t0\t5", "column 1 (chrom) is empty"}}) {
    std::string p = write("bad.bed", "# c\nchr1\t0\t5\n" + k.line + "\n");
    expect_error<InputError>([&] { read_bed(p); }, {p, "line 3", k.what});
  }
  // A column-header line (no BED has one) is named as such.
  std::string hdr = write("hdr.bed", "chrom\tstart\tend\nchr1\t0\t5\n");
  expect_error<InputError>(
      [&] { read_bed(hdr); },
      {hdr, "line 1", "start 'start' is not an integer", "a column-header line?"});
  std::string missing = (dir_ / "missing.bed").string();
  expect_error<InputError>([&] { read_bed(missing); }, {missing});
  // A NUL would cut the name short in HDF5; a byte-order mark is dropped, not made part of a name.
  std::string nul = write("nul.bed", std::string("chr1\t0\t5\tge\0ne\n", 15));
  expect_error<InputError>([&] { read_bed(nul); }, {nul, "line 1", "NUL byte (0x00) at column 12"});
  auto bom = read_bed(write("bom.bed",
                            "\xEF\xBB\xBF"
                            "chr1\t0\t5\n"));
  ASSERT_EQ(bom.size(), 1u);
  EXPECT_EQ(bom[0].name, "chr1");
  // Tab fields with blanks around them, and a name with a space inside.
  auto blanks = read_bed(write("blanks.bed", "chr1 \t 3\t9 \t gene A \t0\n"));
  ASSERT_EQ(blanks.size(), 1u);
  EXPECT_EQ(blanks[0].name, "chr1");
  EXPECT_EQ(blanks[0].begin, 3);
  EXPECT_EQ(blanks[0].end, 9);
  EXPECT_EQ(blanks[0].label, "gene A");
}

// A NUL byte in a header cut the name short when stored (two records became 'a' and 'a'):
// refused with the line, read whole and through --region (sparsa building the index, or an index
// samtools made).
// A record name holding control bytes (an ANSI escape sequence) is shown with them as \xHH in
// messages, not sent to the terminal as they are.
TEST_F(DnaTest, ControlBytesOfANameAreShownEscaped) {
  const std::string p = write("esc.fa", ">a\x1b[31mRED\nAC*T\n");
  std::string msg;
  try {
    read_all(p);
  } catch (const InputError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("record 'a\\x1B[31mRED': position 3"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\x1b'), std::string::npos);
  EXPECT_EQ(read_all(write("esc2.fa", ">a\x1b[31mRED\nACGT\n"))[0].name, "a\x1b[31mRED");
}

TEST_F(DnaTest, NulInHeaderIsRefused) {
  const std::string text = std::string(">a\0b\nACGT\n>a\0c\nGGGG\n", 20);
  std::string p = write("nul.fa", text);
  expect_error<InputError>([&] { read_all(p); },
                           {p, "line 1", "the header line holds a NUL byte (0x00) at column 3"});
  expect_error<InputError>([&] { FaidxFetcher f(p, {}); }, {p, "line 1", "NUL byte"});
  std::string d = write("nuldesc.fa", std::string(">a desc\0hidden\nACGT\n", 21));
  expect_error<InputError>([&] { read_all(d); }, {d, "line 1", "column 8"});
}

// ---------------------------------------------------------------------------------------------
// faidx

class FaidxTest : public DnaTest {
 protected:
  // Two records wrapped at 60 and one at 50 columns; names with ':' and '|'; a blank before a
  // name (faidx skips it, and so must the reader that checks the index against the file).
  std::string fasta() {
    return ">chr1 first\n" + wrap(random_seq(1000, 10), 60) + ">gi|9|x:1-2\n" +
           wrap(random_seq(333, 11), 50) + "> short  a longer\tdescription\nACGTN\n";
  }
  void check_slices(const std::string& path) {
    auto recs = read_all(path);
    ASSERT_EQ(recs.size(), 3u);
    FaidxFetcher f(path, {});
    EXPECT_EQ(f.names(), (std::vector<std::string>{"chr1", "gi|9|x:1-2", "short"}));
    struct Case {
      std::string text;
      size_t rec;
      int64_t begin, end;
      std::string region;
    };
    for (const Case& k : std::vector<Case>{
             {"chr1:1-10", 0, 0, 10, "chr1:1-10"},
             {"chr1:55-130", 0, 54, 130, "chr1:55-130"},
             {"chr1:1,000", 0, 999, 1000, "chr1:1000-1000"},
             {"chr1", 0, 0, 1000, "chr1:1-1000"},
             {"chr1:990-5000", 0, 989, 1000, "chr1:990-1000"},  // clipped to the record
             {"gi|9|x:1-2", 1, 0, 333, "gi|9|x:1-2:1-333"},
             {"gi|9|x:1-2:300-320", 1, 299, 320, "gi|9|x:1-2:300-320"},
             {"short:2-5", 2, 1, 5, "short:2-5"}}) {
      Record r = f.fetch(parse_region(k.text, f.names()));
      const Record& whole = recs[k.rec];
      EXPECT_EQ(r.name, whole.name) << k.text;
      EXPECT_EQ(r.description, whole.description) << k.text;  // from the header line
      EXPECT_EQ(r.source, path) << k.text;
      EXPECT_EQ(r.region, k.region) << k.text;
      EXPECT_EQ(r.offset, k.begin) << k.text;
      EXPECT_EQ(r.n_channels, 1) << k.text;
      // Only the region past the record's end is said to be cut (by cut_warning, which the
      // pipeline asks before any record is embedded).
      const std::string cut = f.cut_warning(parse_region(k.text, f.names()));
      if (k.text == "chr1:990-5000")
        EXPECT_NE(cut.find("ends past record 'chr1' (1000 bases): embedded to its end, "
                           "bases 990-1000"),
                  std::string::npos)
            << cut;
      else
        EXPECT_EQ(cut, "") << k.text;
      EXPECT_EQ(r.warning, "") << k.text;
      EXPECT_EQ(r.tokens,
                std::vector<int32_t>(whole.tokens.begin() + k.begin, whole.tokens.begin() + k.end))
          << k.text;
    }
    expect_error<InputError>([&] { f.fetch(parse_region("chrX:1-5", f.names())); },
                             {path, "chrX", "chr1", "short"});
    expect_error<InputError>([&] { f.fetch(parse_region("short:6-9", f.names())); },
                             {path, "record 'short'", "after the end", "5 bases"});
    RegionSpec empty{"bed", "chr1", 10, 10};
    expect_error<InputError>([&] { f.fetch(empty); }, {path, "empty"});
  }
};

TEST_F(FaidxTest, PlainFasta) {
  std::string p = write("ref.fa", fasta());
  check_slices(p);
  EXPECT_TRUE(fs::exists(p + ".fai"));
  check_slices(p);  // again, now from the existing index
}

TEST_F(FaidxTest, BgzippedFasta) {
  std::string p = write("ref.fa", fasta());
  sh("bgzip -c '" + p + "' > '" + p + ".gz'");
  check_slices(p + ".gz");
  EXPECT_TRUE(fs::exists(p + ".gz.gzi"));
}

// A reference in a folder the user cannot write to (a cluster's shared genomes): the index goes
// to a cache (SPARSA_INDEX_DIR here; else ~/.cache/sparsa/faidx, as root cannot be refused a
// folder in a test), is used again from there, and the slices are those of an index beside the
// file. An index beside the file, where there is one, comes first.
TEST_F(FaidxTest, IndexInACacheFolder) {
  const std::string cache = (dir_ / "index-cache").string();
  setenv("SPARSA_INDEX_DIR", cache.c_str(), 1);
  struct Unset {
    ~Unset() { unsetenv("SPARSA_INDEX_DIR"); }
  } unset;
  std::string p = write("shared.fa", fasta());
  sh("bgzip -c '" + p + "' > '" + p + ".gz'");
  for (const std::string& path : {p, p + ".gz"}) {
    SCOPED_TRACE(path);
    const IndexFiles ix = index_files(path, path.ends_with(".gz"));
    EXPECT_TRUE(ix.cached);
    EXPECT_EQ(fs::path(ix.fai).parent_path().string(), cache);
    EXPECT_TRUE(
        fs::path(ix.fai).filename().string().starts_with(fs::path(path).filename().string() + "."));
    check_slices(path);
    EXPECT_FALSE(fs::exists(path + ".fai"));  // nothing beside the file
    EXPECT_FALSE(fs::exists(path + ".gzi"));
    ASSERT_TRUE(fs::exists(ix.fai));
    if (path.ends_with(".gz")) EXPECT_TRUE(fs::exists(ix.gzi));
    const auto built = fs::last_write_time(ix.fai);
    check_slices(path);  // from the cached index: not built again
    EXPECT_EQ(fs::last_write_time(ix.fai), built);
  }
  // The file rewritten after its cached index was made (a pipeline's step ran again): the index
  // is made again, not refused as stale (an index beside a file is left to its owner).
  const std::string old_fai = index_files(p, false).fai;
  write("shared.fa", ">other\nACGTACGT\n");
  fs::last_write_time(p, fs::last_write_time(old_fai) + std::chrono::seconds(5));
  {
    FaidxFetcher f(p, {});
    EXPECT_EQ(f.fetch(parse_region("other:1-4", f.names())).tokens, toks("ACGT"));
  }
  // Another file of the same name elsewhere gets its own index.
  fs::create_directories(dir_ / "other");
  const std::string q = write("other/shared.fa", ">x\nACGT\n");
  EXPECT_NE(index_files(q, false).fai, index_files(p, false).fai);
  // An index beside the file wins over the cache.
  unsetenv("SPARSA_INDEX_DIR");
  std::string b = write("beside.fa", fasta());
  check_slices(b);  // builds b.fai beside (the folder is writable)
  setenv("SPARSA_INDEX_DIR", cache.c_str(), 1);
  EXPECT_FALSE(index_files(b, false).cached);
  EXPECT_EQ(index_files(b, false).fai, b + ".fai");
}

TEST_F(FaidxTest, DescriptionsOfLongAndCrlfHeaders) {
  // Headers longer than the first 4 KB window, CRLF header line ends, a header over 64 KB (no
  // description rather than a wrong one), plain and bgzip: as the sequential reader has them.
  const std::string mid(5000, 'm'), huge(70000, 'h');
  std::string fa = ">a " + mid + "\r\n" + wrap(random_seq(300, 3), 60) + ">b  x y\r\n" +
                   wrap(random_seq(200, 4), 60) + ">c " + huge + "\n" + wrap(random_seq(90, 5), 60);
  std::string p = write("long.fa", fa);
  sh("bgzip -c '" + p + "' > '" + p + ".gz'");
  for (const std::string& path : {p, p + ".gz"}) {
    SCOPED_TRACE(path);
    auto recs = read_all(path);
    ASSERT_EQ(recs.size(), 3u);
    FaidxFetcher f(path, {});
    EXPECT_EQ(f.fetch(parse_region("a:2-5")).description, recs[0].description);
    EXPECT_EQ(recs[0].description, mid);
    EXPECT_EQ(f.fetch(parse_region("b")).description, "x y");
    EXPECT_EQ(f.fetch(parse_region("c:1-10")).description, "");  // over 64 KB: not looked for
    EXPECT_EQ(f.fetch(parse_region("a:7-9")).description, mid);  // again, from the cache
  }
}

TEST_F(FaidxTest, Fastq) {
  std::string p = write("r.fq", "@r1 d\nACGTACGT\n+\nIIIIIIII\n@r2\nGGCC\n+\nIIII\n");
  FaidxFetcher f(p, {});
  EXPECT_EQ(f.names(), (std::vector<std::string>{"r1", "r2"}));
  Record r = f.fetch(parse_region("r1:3-6"));
  EXPECT_EQ(r.tokens, toks("GTAC"));
  EXPECT_EQ(r.description, "d");
  EXPECT_EQ(f.fetch(parse_region("r2:1-2")).description, "");
  EXPECT_EQ(r.region, "r1:3-6");
  EXPECT_EQ(r.offset, 2);
}

TEST_F(FaidxTest, InvalidCharacterPositionInSourceRecord) {
  std::string seq = random_seq(200, 5);
  seq[124] = 'X';  // 1-based position 125
  std::string p = write("bad.fa", ">r\n" + wrap(seq, 60));
  FaidxFetcher f(p, {});
  EXPECT_EQ(f.fetch(parse_region("r:1-100")).tokens.size(), 100u);
  expect_error<InputError>(
      [&] { f.fetch(parse_region("r:101-150")); },
      {p, "record 'r'", "position 125", "'X'", "(base 25 of region r:101-150)"});
  FaidxFetcher lenient(p, DnaReadOptions{true});
  Record r = lenient.fetch(parse_region("r:121-130"));
  EXPECT_EQ(r.tokens[4], kTokN);
  EXPECT_NE(r.warning.find("position 125: 1 invalid character read as N"), std::string::npos)
      << r.warning;
}

// A space, tab or control byte inside a sequence line: faidx counts only printable bytes, so the
// index disagrees with the file. The error names the byte and its position (it said "remove the
// .fai", which sparsa had just built), also under --invalid-as-n; another record still reads.
TEST_F(FaidxTest, NonPrintableByteInSequenceNamedWithItsPosition) {
  const std::string other = random_seq(50, 6);
  for (const char* bad : {" ", "\t", "\x01"}) {
    const std::string p = write("sp.fa", ">a\n" + other + "\n>r desc\nACGTACGTAC" + bad + "GT\n");
    std::filesystem::remove(p + ".fai");
    for (bool lenient : {false, true}) {
      FaidxFetcher f(p, DnaReadOptions{lenient});
      EXPECT_EQ(f.fetch(parse_region("a:1-10")).tokens.size(), 10u);
      expect_error<InputError>(
          [&] { f.fetch(parse_region("r:1-5")); },
          {p, "record 'r'", "position 11", "invalid character", "without --region"});
    }
  }
  // The byte in the first of several lines: htslib takes a line's bases from that line, so the
  // index passes the other checks, and a fetch would skip the byte and shift the bases after it.
  {
    const std::string p2 = write("sp2.fa", ">r\nACGT ACGT\nACGTACGT\n>s\nACGT\n");
    std::filesystem::remove(p2 + ".fai");
    FaidxFetcher f(p2, {});
    EXPECT_EQ(f.fetch(parse_region("s:1-4")).tokens.size(), 4u);
    expect_error<InputError>([&] { f.fetch(parse_region("r:6-8")); },
                             {p2, "record 'r'", "position 5", "' ' (0x20)"});
  }
  // FASTQ with blank lines between reads and a quality line starting with '@': the byte in b's
  // sequence is named, not one in a header or a quality line.
  {
    const std::string q2 = write("sp2.fq", "@a x y\nACGT\n+\n@III\n\n@b desc\nAC\tGT\n+\nIIIII\n");
    std::filesystem::remove(q2 + ".fai");
    std::string msg;
    try {
      FaidxFetcher f(q2, {});
      f.fetch(parse_region("b:1-2"));
    } catch (const InputError& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("record 'b': position 3: invalid character 0x09"), std::string::npos) << msg;
  }
  // FASTQ: faidx cannot index the file at all; the byte in a read's sequence line is named (a
  // quality line starting with '@' is not taken for a header).
  const std::string q = write("sp.fq", "@x\nACGT\n+\n@@@@\n@y\nAC GT\n+\nIIIII\n");
  std::filesystem::remove(q + ".fai");
  expect_error<InputError>([&] { FaidxFetcher f(q, {}); },
                           {q, "record 'y'", "position 3", "' ' (0x20)"});
}

TEST_F(FaidxTest, PlainGzipGetsBgzipHint) {
  std::string p = write("ref.fa", fasta());
  sh("gzip -c '" + p + "' > '" + p + ".gz'");
  std::string gz = p + ".gz";
  expect_error<InputError>([&] { FaidxFetcher f(gz, {}); },
                           {gz + " is gzip-compressed but not bgzip-compressed",
                            "| bgzip > " + p + ".bgz)"});  // ref.fa.bgz, not ref.fa.gz.bgz
  // The shipped lambda genome is plain gzip too (copied: no index files next to the sources).
  std::string lam = (dir_ / "lambda.fa.gz").string();
  fs::copy_file(std::string(SPARSA_SOURCE_DIR) + "/examples/lambda_virus.fa.gz", lam);
  expect_error<InputError>([&] { FaidxFetcher f(lam, {}); }, {lam, "bgzip"});
}

// faidx's layout rule broken, or an index that is not this file's: sparsa's message names the
// file, the record and the line, and htslib's own "[E::...]" lines are not printed before it.
TEST_F(FaidxTest, LayoutAndIndexErrorsNameRecordAndLine) {
  std::string shortmid = write("s.fa", ">x\nACGTAC\nACGTAC\nACGTA\n>y desc\nACGT\nACG\nACGT\n");
  testing::internal::CaptureStderr();
  expect_error<InputError>([&] { FaidxFetcher f(shortmid, {}); },
                           {shortmid + ": line 7: record 'y'", "3 bases before more sequence"});
  std::string longer = write("l.fa", ">x\nACGTAC\nACGTACGG\n");
  expect_error<InputError>([&] { FaidxFetcher f(longer, {}); },
                           {longer + ": line 3: record 'x'", "8 bases after lines of 6", "seqtk"});
  EXPECT_FALSE(fs::exists(longer + ".fai"));
  std::string stale = write("t.fa", fasta());
  write("t.fa.fai", "garbage");
  expect_error<InputError>([&] { FaidxFetcher f(stale, {}); },
                           {stale + ".fai", "not an index of this file", "samtools faidx"});
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

// An index made before the file changed would read other bases (or too few) without an error:
// each record is checked against the file when first fetched, plain and bgzip.
TEST_F(FaidxTest, IndexOfAnEarlierFileIsRefused) {
  const std::string base = fasta();
  struct Change {
    const char* what;
    std::string text;
    const char* region;  // fetched from the changed file with the old index
  };
  const std::string chr1 = random_seq(1000, 10), gi = random_seq(333, 11);
  const std::vector<Change> changes = {
      // chr1 two lines longer: the index puts 'short' inside gi's sequence
      {"records moved",
       ">chr1 first\n" + wrap(chr1 + random_seq(120, 12), 60) + ">gi|9|x:1-2\n" + wrap(gi, 50) +
           ">short  a longer\tdescription\nACGTN\n",
       "short:1-3"},
      // the last record longer by a line, at the same place
      {"a record longer", base + "ACGTA\n", "short:1-3"},
      // the last record's last line longer
      {"a line longer",
       ">chr1 first\n" + wrap(chr1, 60) + ">gi|9|x:1-2\n" + wrap(gi, 50) +
           ">short  a longer\tdescription\nACGTNA\n",
       "short:1-3"},
      // the last record shorter: the index's end is past the end of the file (bgzip: htslib
      // asserts on a seek there, so the check reads forward from a block start instead)
      {"the last record shorter",
       ">chr1 first\n" + wrap(chr1, 60) + ">gi|9|x:1-2\n" + wrap(gi, 50) +
           ">short  a longer\tdescription\nACG\n",
       "short:1-3"},
  };
  for (const bool bgzip : {false, true}) {
    for (const Change& c : changes) {
      SCOPED_TRACE(std::string(c.what) + (bgzip ? ", bgzip" : ""));
      for (const char* old : {"old.fa.fai", "old.fa.gz.fai", "old.fa.gz.gzi"})
        fs::remove(dir_ / old);
      std::string p = write("old.fa", base);
      if (bgzip) {
        sh("bgzip -f '" + p + "'");
        p += ".gz";
      }
      {
        FaidxFetcher f(p, {});  // builds the index of the file as it is
        EXPECT_EQ(f.fetch(parse_region(c.region, f.names())).tokens, toks("ACG"));
      }
      ASSERT_TRUE(fs::exists(p + ".fai"));
      const auto stamp = fs::last_write_time(p + ".fai");
      std::string changed = write("old.fa", c.text);
      if (bgzip) sh("bgzip -c '" + changed + "' > '" + p + "'");  // the old .gzi kept too
      fs::last_write_time(p, stamp + std::chrono::seconds(5));    // edited after indexing
      FaidxFetcher f(p, {});
      expect_error<InputError>([&] { f.fetch(parse_region(c.region, f.names())); },
                               {p + ".fai does not match", "record 'short'",
                                "the index is older than the file", "samtools faidx"});
      fs::remove(p + ".fai");
      fs::remove(p + ".gzi");
      FaidxFetcher again(p, {});  // rebuilt: the changed file reads right
      EXPECT_EQ(again.fetch(parse_region(c.region, again.names())).tokens, toks("ACG"));
    }
  }
  // A file without a final newline ends right after its last base: that is the end of the file,
  // not a stale index (plain and bgzip, the index made by sparsa itself).
  for (const bool bgzip : {false, true}) {
    SCOPED_TRACE(bgzip ? "no final newline, bgzip" : "no final newline");
    std::string p = write("nofinal.fa", base.substr(0, base.size() - 1));
    if (bgzip) {
      sh("bgzip -f '" + p + "'");
      p += ".gz";
    }
    FaidxFetcher f(p, {});
    EXPECT_EQ(f.fetch(parse_region("short:1-5", f.names())).tokens, toks("ACGTN"));
  }
}

// An index made before records were appended does not list them: the "no record named" error
// says the index is older than the file; an empty index is refused as not this file's.
TEST_F(FaidxTest, StaleOrEmptyIndexIsNamed) {
  std::string p = write("app.fa", ">chr1\nACGT\n");
  { FaidxFetcher f(p, {}); }
  const auto stamp = fs::last_write_time(p + ".fai");
  write("app.fa", ">chr1\nACGT\n>chr2\nGGGG\n");
  fs::last_write_time(p, stamp + std::chrono::seconds(5));
  FaidxFetcher f(p, {});
  EXPECT_NE(f.stale_index_hint().find(p + ".fai is older than " + p), std::string::npos);
  std::string e = write("e.fa", ">chr1\nACGT\n");
  write("e.fa.fai", "");
  expect_error<InputError>([&] { FaidxFetcher g(e, {}); },
                           {e + ".fai lists no records", "samtools faidx"});
  std::string fresh = write("fresh.fa", ">chr1\nACGT\n");
  FaidxFetcher h(fresh, {});
  EXPECT_EQ(h.stale_index_hint(), "");
}

// An index removed or rebuilt by another program while a run reads it: htslib keeps the one it
// loaded, and the check against the file could not be made; said, not skipped.
TEST_F(FaidxTest, IndexChangedDuringTheRunIsSaid) {
  std::string p = write("ch.fa", ">a\nACGT\n>b\nGGGG\n");
  FaidxFetcher f(p, {});
  EXPECT_EQ(f.fetch(parse_region("a", f.names())).tokens, toks("ACGT"));
  write("ch.fa.fai", "x\t4\t3\t4\t5\ny\t4\t11\t4\t5\n");  // other names at the same places
  expect_error<InputError>([&] { f.fetch(parse_region("b", f.names())); },
                           {p + ".fai: the index changed while sparsa was reading it", "'b'"});
  // Removed after it was loaded, before a record's first fetch: said too, not skipped.
  fs::remove(p + ".fai");
  FaidxFetcher g(p, {});  // builds it again
  fs::remove(p + ".fai");
  expect_error<InputError>([&] { g.fetch(parse_region("a", g.names())); },
                           {p + ".fai: cannot open it again to find record 'a'"});
}

// Records past 2^31 - 1 bases (some amphibian and lungfish chromosomes): their lengths are the
// index's, 64-bit, also where htslib's faidx_seq_len is an int (Debian 12's 1.16), which made a
// 3 Gb record's regions "start after the end" and cut a 5 Gb record's regions short. The index
// is written by hand here (a 3 Gb file is not): lengths, regions and the cut warning are read
// from it without reading bases.
TEST_F(FaidxTest, RecordsPastTwoGigabasesKeepTheirLength) {
  std::string p = write("big.fa", ">small\nACGT\n>big\nACGT\n>huge\nACGT\n");
  write("big.fa.fai",
        "small\t4\t7\t4\t5\nbig\t3000000000\t17\t60\t61\nhuge\t5000000000\t28\t60\t61\n");
  FaidxFetcher f(p, {});
  EXPECT_EQ(f.record_length("small"), 4);
  EXPECT_EQ(f.record_length("big"), 3000000000LL);
  EXPECT_EQ(f.record_length("huge"), 5000000000LL);
  EXPECT_EQ(f.record_length("big"), 3000000000LL);  // the kept answer
  EXPECT_EQ(f.record_length("none"), -1);
  EXPECT_EQ(f.tokens_of(parse_region("big:2,999,999,991-3,000,000,000", f.names())), 10);
  EXPECT_EQ(f.tokens_of(parse_region("huge:4,999,999,001-5,000,000,000", f.names())), 1000);
  EXPECT_EQ(f.tokens_of(parse_region("huge", f.names())), 5000000000LL);
  EXPECT_EQ(f.cut_warning(parse_region("big:2999999991-3000000100", f.names())),
            p + ": region 'big:2999999991-3000000100' ends past record 'big' (3000000000 "
                "bases): embedded to its end, bases 2999999991-3000000000 (a BED or region from "
                "another assembly?)");
  expect_error<InputError>(
      [&] { f.tokens_of(parse_region("big:3000000001-3000000002", f.names())); },
      {p, "record 'big'", "after the end", "3000000000 bases"});
}

// A read set's index (here 700,000 records, a .fai of ~18.5 MB, past the 16 MB up to which an
// earlier version read it) is checked and gives descriptions like a genome's.
TEST_F(FaidxTest, LargeIndexIsCheckedToo) {
  std::string text;
  for (int i = 0; i < 700000; ++i) {
    char rec[64];
    std::snprintf(rec, sizeof rec, ">read_%06d desc %d\n%s\n", i, i,
                  i % 2 ? "CCCCCCCC" : "AAAAAAAA");
    text += rec;
  }
  std::string p = write("big.fa", text);
  {
    FaidxFetcher f(p, {});
    const Record r = f.fetch(parse_region("read_000005", f.names()));
    EXPECT_EQ(r.description, "desc 5");
    EXPECT_EQ(r.tokens, toks("CCCCCCCC"));
  }
  ASSERT_GT(fs::file_size(p + ".fai"), uintmax_t{16} << 20);
  const auto stamp = fs::last_write_time(p + ".fai");
  // Records 5 and 6 swap their headers: the old index would read 6's bases for 5.
  const size_t a = text.find(">read_000005"), b = text.find(">read_000006");
  std::string swapped = text.substr(0, a) + ">read_000006 desc 6\nCCCCCCCC\n" +
                        ">read_000005 desc 5\nAAAAAAAA\n" + text.substr(text.find(">read_000007"));
  ASSERT_EQ(swapped.size(), text.size());
  ASSERT_LT(a, b);
  write("big.fa", swapped);
  fs::last_write_time(p, stamp + std::chrono::seconds(5));
  FaidxFetcher f(p, {});
  expect_error<InputError>(
      [&] { f.fetch(parse_region("read_000005", f.names())); },
      {p + ".fai does not match", "record 'read_000005'", "the index is older than the file"});
}

// Broken indexes are refused with the index named, never handed to htslib, which asserts or
// divides by zero on them (a review crashed the first version of the check with each of these).
TEST_F(FaidxTest, BrokenIndexesAreRefusedNotCrashed) {
  // Three records over several 64 KB blocks.
  const std::string fa = ">c1\n" + wrap(random_seq(90000, 21), 60) + ">c2\n" +
                         wrap(random_seq(90000, 22), 60) + ">c3\n" +
                         wrap(random_seq(90000, 23), 60);
  std::string p = write("b.fa", fa);
  sh("bgzip -f '" + p + "'");
  p += ".gz";
  { FaidxFetcher f(p, {}); }  // builds .fai and .gzi
  auto read_file = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  auto write_file = [](const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
  };
  const std::string fai = read_file(p + ".fai"), gzi = read_file(p + ".gzi");
  uint64_t n = 0;
  std::memcpy(&n, gzi.data(), 8);
  ASSERT_GE(n, 3u);
  auto with_gzi = [&](const std::string& bytes) { write_file(p + ".gzi", bytes); };
  // Refused by name, at loading (htslib checks some itself) or at the first fetch (sparsa).
  auto refused = [&](const char* what) {
    SCOPED_TRACE(what);
    std::unique_ptr<FaidxFetcher> f;
    try {
      f = std::make_unique<FaidxFetcher>(p, DnaReadOptions{});
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p + ".fai"), std::string::npos) << msg;
      EXPECT_NE(msg.find("samtools faidx"), std::string::npos) << msg;
      return;
    }
    expect_error<InputError>([&] { f->fetch(parse_region("c3:1-100", f->names())); },
                             {p + ".fai does not match", "samtools faidx"});
  };
  std::string back = gzi;  // the third block's uncompressed offset going backwards
  const uint64_t one = 1;
  std::memcpy(back.data() + 8 + 2 * 16 + 8, &one, 8);
  with_gzi(back);
  refused("offsets going backwards");
  std::string none(8, '\0');  // no block listed: seeks past the first block
  with_gzi(none);
  refused("no block listed");
  with_gzi(gzi.substr(0, 8 + 16) + std::string(""));  // the count says more than there is
  refused("a count larger than the file");
  std::string huge = gzi;
  const uint64_t big = uint64_t{1} << 32;
  std::memcpy(huge.data(), &big, 8);
  with_gzi(huge);
  refused("a count of 2^32");
  with_gzi(gzi);
  // .fai entries htslib cannot use: no bases a line (it divides by them), a negative offset.
  const size_t c3 = fai.find("c3\t");
  ASSERT_NE(c3, std::string::npos);
  std::istringstream cols(fai.substr(c3 + 3));
  int64_t len, off, lb, lw;
  cols >> len >> off >> lb >> lw;
  for (const std::string& line :
       {"c3\t" + std::to_string(len) + "\t" + std::to_string(off) + "\t0\t" + std::to_string(lw),
        "c3\t" + std::to_string(len) + "\t-5\t" + std::to_string(lb) + "\t" + std::to_string(lw)}) {
    write_file(p + ".fai", fai.substr(0, c3) + line + "\n");
    refused(line.c_str());
  }
}

// htslib's index keeps the first of two records of one name and drops the other without a word:
// where sparsa builds the index, a repeated name is refused first (no index is left), as it is
// when the file is read whole. An index that exists (samtools warned when it made it) is used.
TEST_F(FaidxTest, RepeatedNamesAreRefusedWhenSparsaIndexes) {
  const std::string p = write("dup.fa", ">a\nACGT\n>b x\nTTTT\n>a y\nGGGG\n");
  expect_error<InputError>([&] { FaidxFetcher f(p, {}); },
                           {p, "line 5", "record name 'a' repeats the record at line 1"});
  EXPECT_FALSE(fs::exists(p + ".fai"));
  sh("samtools faidx '" + p + "' 2>/dev/null");
  FaidxFetcher f(p, {});
  EXPECT_EQ(f.fetch(parse_region("a", f.names())).tokens, (std::vector<int32_t>{3, 4, 5, 6}));
  const std::string gz = write("dup2.fa", ">a\nACGT\n>a\nGGGG\n");
  sh("bgzip -c '" + gz + "' > '" + gz + ".gz'");
  expect_error<InputError>([&] { FaidxFetcher g(gz + ".gz", {}); }, {"repeats the record"});
}

// A record name of 65,536 bytes or more: htslib cannot read the index it builds (its lines are
// read into 64 KB), so "remove the index and it is built again" could never work; said as what
// it is.
TEST_F(DnaTest, NameTooLongForAFaidxIndexIsSaid) {
  const std::string p = write("long.fa", ">" + std::string(70000, 'N') + "\nACGT\n>short\nGGGG\n");
  expect_error<InputError>(
      [&] { FaidxFetcher f(p, {}); },
      {p, "record 1", "has a name of 70000 bytes", "more than htslib reads (65,535)",
       "awk '/^>/{print substr($1, 1, 1000); next} {print}' < FILE > NEW"});
  EXPECT_EQ(read_all(p).size(), 2u);  // read whole (no region), it is fine
}

// Lone-CR line ends (classic Mac OS) made the whole file one header line; a '\r' inside a header
// line vanished from the name. Both are refused, read whole or through an index.
TEST_F(DnaTest, LoneCarriageReturnsAreRefused) {
  const std::string mac = write("mac.fa", ">a\rACGT\rACGT\r>b\rGGGG\r");
  expect_error<InputError>([&] { read_all(mac); }, {mac, "line 1", "lone CR", "tr '\\r' '\\n'"});
  expect_error<InputError>([&] { FaidxFetcher f(mac, {}); }, {mac, "lone CR"});
  const std::string fq = write("mac.fq", "@r1\rACGT\r+\rIIII\r");
  expect_error<InputError>([&] { read_all(fq); }, {fq, "lone CR"});
  const std::string inner = write("inner.fa", ">a\rb\nACGT\n");
  expect_error<InputError>([&] { read_all(inner); }, {inner, "line 1", "carriage return"});
  // A later header with one, through an index sparsa builds (htslib's name ends at the '\r', so
  // '>a\rX' and '>a\rY' were one name to it, the second dropped).
  const std::string later = write("later.fa", ">z\nAC\n>a\rX\nACGTACGT\n>a\rY\nGGGG\n");
  expect_error<InputError>([&] { FaidxFetcher f(later, {}); },
                           {later, "line 3", "carriage return"});
  EXPECT_FALSE(fs::exists(later + ".fai"));
}

// Bytes after the compressed data (zero padding, an appended file) that htslib stops at: said as
// such, with every line counted (zlib reads the data whole), not as a cut or corrupt file.
TEST_F(DnaTest, BytesAfterTheCompressedDataAreNamed) {
  const std::string p = write("z.fa", ">r1\n" + wrap(random_seq(20000, 5), 60));
  for (const char* tool : {"gzip", "bgzip"}) {
    const std::string z = p + "." + tool + ".gz";
    sh(std::string(tool) + " -c '" + p + "' > '" + z + "'");
    sh("head -c 1000 /dev/zero >> '" + z + "'");
    expect_error<InputError>([&] { read_all(z); },
                             {z, "ends after line 335", "bytes follow that are not gzip data"});
  }
}

// Files joined with cat: a gzip file after bgzip ones is read whole, as zcat reads it (htslib
// goes on from the blocks), but not through faidx, which would index the blocks alone; a file
// compressed twice is named as such.
TEST_F(DnaTest, JoinedAndDoublyCompressedFiles) {
  const std::string a = write("a.fa", ">a\n" + wrap(random_seq(3000, 11), 60));
  const std::string b = write("b.fa", ">b\n" + wrap(random_seq(2000, 12), 60));
  sh("bgzip -c '" + a + "' > '" + a + ".bgz'");
  sh("gzip -c '" + b + "' > '" + b + ".gz'");
  const std::string mix = (dir_ / "mix.fa.gz").string();
  sh("cat '" + a + ".bgz' '" + b + ".gz' > '" + mix + "'");
  auto recs = read_all(mix);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].tokens, read_all(a)[0].tokens);
  EXPECT_EQ(recs[1].tokens, read_all(b)[0].tokens);
  expect_error<InputError>(
      [&] { FaidxFetcher f(mix, {}); },
      {mix, "a plain gzip part follows the bgzip blocks at byte", "zcat FILE | bgzip"});
  // The same file cut inside its gzip part: cut, not joined.
  const std::string cut = (dir_ / "cut.fa.gz").string();
  sh("head -c $(( $(wc -c < '" + mix + "') - 30 )) '" + mix + "' > '" + cut + "'");
  expect_error<InputError>([&] { read_all(cut); }, {cut, "cut short"});
  // A bgzip part without its end-of-file block (cut at a block boundary) before the gzip part,
  // or bytes after the last gzip part: not whole, refused at the start.
  const std::string a1 = write("a1.fa", ">a1\n" + wrap(random_seq(200000, 13), 60));
  sh("bgzip -c '" + a1 + "' > '" + a1 + ".bgz'");
  const std::string cutjoin = (dir_ / "cutjoin.fa.gz").string();
  sh("head -c $(( $(wc -c < '" + a1 + ".bgz') - 28 )) '" + a1 + ".bgz' > '" + cutjoin + "'; cat '" +
     b + ".gz' >> '" + cutjoin + "'");
  expect_error<InputError>([&] { FastxReader r(cutjoin, {}); },
                           {cutjoin, "lacks its end-of-file block (cut short?)"});
  const std::string padded = (dir_ / "padded.fa.gz").string();
  sh("cat '" + mix + "' > '" + padded + "'; head -c 512 /dev/zero >> '" + padded + "'");
  expect_error<InputError>([&] { FastxReader r(padded, {}); },
                           {padded, "bytes follow the last gzip part"});
  const std::string twice = (dir_ / "twice.fa.gz").string();
  sh("gzip -c '" + b + ".gz' > '" + twice + "'");
  expect_error<InputError>([&] { read_all(twice); }, {twice, "line 1", "compressed twice"});
}

TEST_F(FaidxTest, GarbageAndMissing) {
  std::string g = write("g.bin", std::string("\x00\xff\x01\x02", 4));
  expect_error<InputError>([&] { FaidxFetcher f(g, {}); }, {g, "not FASTA/FASTQ"});
  std::string missing = (dir_ / "missing.fa").string();
  expect_error<InputError>([&] { FaidxFetcher f(missing, {}); }, {missing, "cannot open"});
}

}  // namespace
}  // namespace sparsa
