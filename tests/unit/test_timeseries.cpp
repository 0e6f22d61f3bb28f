// Tests of time-series CSV input and tokenisation (spec section 1).
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/file_text.hpp"
#include "io/timeseries.hpp"

namespace sparsa {
namespace {

namespace fs = std::filesystem;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Writes CSV text to a uniquely named temp file and removes it (and its folder) afterwards.
class TsCsv : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("sparsa_ts_" + std::to_string(getpid()) + "_" +
                                        info->name() + "_" + std::to_string(std::rand()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  // The message of the InputError that `fn` throws, or a failure when it throws none.
  template <class Fn>
  std::string input_error(Fn fn) {
    try {
      fn();
    } catch (const InputError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no InputError thrown";
    return "";
  }
  fs::path dir_;
};

ModelConfig ts_config(int64_t channels, int64_t bins, double clip, TsTransform t) {
  ModelConfig c;
  c.kind = ModelKind::kTimeseries;
  c.channels = channels;
  c.ts_bins = bins;
  c.ts_clip = clip;
  c.ts_transform = t;
  return c;
}

void expect_same(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << "index " << i << " got " << got[i];
    } else {
      EXPECT_DOUBLE_EQ(got[i], want[i]) << "index " << i;
    }
  }
}

// ---- transforms, scale, tokens ----

// The time column's texts end to end in one buffer: each comes back whole, empty ones too.
// A mapped CSV truncated by another program while it is read: the process ends with the file
// named and exit status 1, not a bare "Bus error". A fault outside a watched file keeps SIGBUS's
// default action.
using FileTextDeathTest = TsCsv;
TEST_F(FileTextDeathTest, ShrunkFileIsNamed) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string p = write("shrinks.csv", std::string(1 << 20, 'x'));
  EXPECT_EXIT(
      {
        FileText t(p);
        if (!t.mapped()) std::_Exit(3);  // (the test needs a mapping)
        if (::truncate(p.c_str(), 0) != 0) std::_Exit(4);
        volatile char c = t.view()[600000];
        (void)c;
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(1), "shrinks.csv: the file shrank while sparsa was reading it");
  const std::string q = write("whole.csv", "time,x\n1,2\n");
  FileText t(q);
  EXPECT_EQ(t.view(), "time,x\n1,2\n");
  // A SIGBUS not in a watched file goes to the action before ours: the default (killed by it),
  // or in the sanitizer build ASan's report.
#if defined(__SANITIZE_ADDRESS__)
  EXPECT_EXIT(raise(SIGBUS), ::testing::ExitedWithCode(1), "AddressSanitizer: BUS");
#else
  EXPECT_EXIT(raise(SIGBUS), ::testing::KilledBySignal(SIGBUS), "");
#endif
}

TEST(StringColumnTest, TextsComeBackWhole) {
  StringColumn c;
  EXPECT_TRUE(c.empty());
  for (const char* t : {"2024-01-01T00:00:00Z", "", "x", "", "2024-01-01 09:30"}) c.push_back(t);
  ASSERT_EQ(c.size(), 5u);
  EXPECT_EQ(c[0], "2024-01-01T00:00:00Z");
  EXPECT_EQ(c[1], "");
  EXPECT_EQ(c[2], "x");
  EXPECT_EQ(c[3], "");
  EXPECT_EQ(c[4], "2024-01-01 09:30");
  EXPECT_EQ(c.strings(),
            (std::vector<std::string>{"2024-01-01T00:00:00Z", "", "x", "", "2024-01-01 09:30"}));
  EXPECT_EQ(c, (StringColumn{"2024-01-01T00:00:00Z", "", "x", "", "2024-01-01 09:30"}));
  EXPECT_FALSE(c == (StringColumn{"2024-01-01T00:00:00Z", "", "x", "2024-01-01 09:30"}));
}

// The buffers as they are (what rank 0 sends), and a column made of them again; buffers that do
// not describe a column are refused and leave it unchanged.
TEST(StringColumnTest, BuffersMakeTheSameColumn) {
  const StringColumn c{"2024-01-01", "", "x", "2024-01-02"};
  StringColumn d;
  ASSERT_TRUE(d.assign(c.text(), c.ends()));
  EXPECT_EQ(d, c);
  EXPECT_EQ(d[3], "2024-01-02");
  EXPECT_FALSE(d.assign("abc", {2, 1, 3}));  // not ascending
  EXPECT_FALSE(d.assign("abc", {1, 2}));     // short of the text
  EXPECT_FALSE(d.assign("abc", {1, 4}));     // past it
  EXPECT_EQ(d, c);
  ASSERT_TRUE(d.assign("", {}));
  EXPECT_TRUE(d.empty());
}

TEST(TsTransformTest, Level) {
  expect_same(ts_transform({1, kNaN, 3}, TsTransform::kLevel), {1, kNaN, 3});
}

TEST(TsTransformTest, Diff) {
  expect_same(ts_transform({1, 4, 2, kNaN, 5, 6}, TsTransform::kDiff),
              {kNaN, 3, -2, kNaN, kNaN, 1});
}

TEST(TsTransformTest, LogReturn) {
  expect_same(ts_transform({2, 4, 1, kNaN, 3, 3}, TsTransform::kLogReturn),
              {kNaN, std::log(2.0), std::log(0.25), kNaN, kNaN, 0.0});
  expect_same(ts_transform({}, TsTransform::kLogReturn), {});
  expect_same(ts_transform({5}, TsTransform::kDiff), {kNaN});
  // Two negative values have a ratio, so a log return (the spec's ln(x_t / x_{t-1})); a zero or
  // a change of sign has none (check_series refuses those before this is called).
  expect_same(ts_transform({-2, -4, -1, 3, 0, 2}, TsTransform::kLogReturn),
              {kNaN, std::log(2.0), std::log(0.25), kNaN, kNaN, kNaN});
}

TEST(TsScaleTest, MeanAbs) {
  EXPECT_DOUBLE_EQ(ts_scale({kNaN, 1, -3, kNaN, 2}), 2.0);
  EXPECT_DOUBLE_EQ(ts_scale({-0.5}), 0.5);
}

// A sum of |r| past the largest double with a finite mean: that mean, not infinity.
TEST(TsScaleTest, MeanOfValuesNearTheLargestDouble) {
  EXPECT_NEAR(ts_scale({1.5e308, kNaN, -1.6e308, 1.7e308}), 1.6e308, 1e294);
  EXPECT_NEAR(ts_scale(std::vector<double>(20, 1e307)), 1e307, 1e293);
  EXPECT_TRUE(std::isfinite(ts_scale({1.7e308, 1.7e308, 1.7e308})));
}

TEST(TsScaleTest, ZeroOrEmptyIsOne) {
  EXPECT_EQ(ts_scale({}), 1.0);
  EXPECT_EQ(ts_scale({kNaN, kNaN}), 1.0);
  EXPECT_EQ(ts_scale({0, 0, kNaN}), 1.0);
}

TEST(TsTokenTest, BinEdges) {
  // B = 8, C = 4: bins are 1 wide in z, bin k covers [-4 + k, -3 + k).
  EXPECT_EQ(ts_token(-4.0, 8, 4.0), 3 + 0);
  EXPECT_EQ(ts_token(-3.0001, 8, 4.0), 3 + 0);
  EXPECT_EQ(ts_token(-3.0, 8, 4.0), 3 + 1);  // exact boundary goes up
  EXPECT_EQ(ts_token(-0.0001, 8, 4.0), 3 + 3);
  EXPECT_EQ(ts_token(0.0, 8, 4.0), 3 + 4);
  EXPECT_EQ(ts_token(2.0, 8, 4.0), 3 + 6);
  EXPECT_EQ(ts_token(3.9, 8, 4.0), 3 + 7);
  EXPECT_EQ(ts_token(std::nextafter(4.0, 0.0), 8, 4.0), 3 + 7);
  EXPECT_EQ(ts_token(4.0, 8, 4.0), 3 + 7);  // z = C clamps to B-1
}

TEST(TsTokenTest, ClampsFarValues) {
  EXPECT_EQ(ts_token(-4.5, 8, 4.0), 3);
  EXPECT_EQ(ts_token(100.0, 8, 4.0), 10);
  EXPECT_EQ(ts_token(1e300, 256, 4.0), 3 + 255);
  EXPECT_EQ(ts_token(-1e300, 256, 4.0), 3);
  EXPECT_EQ(ts_token(std::numeric_limits<double>::infinity(), 256, 4.0), 3 + 255);
  EXPECT_EQ(ts_token(-std::numeric_limits<double>::infinity(), 256, 4.0), 3);
}

TEST(TsTokenTest, OtherBinsAndClip) {
  // B = 256, C = 4: z = 1 -> (5/8)*256 = 160 exactly.
  EXPECT_EQ(ts_token(1.0, 256, 4.0), 3 + 160);
  // B = 10, C = 2: z = 0.5 -> (2.5/4)*10 = 6.25 -> 6.
  EXPECT_EQ(ts_token(0.5, 10, 2.0), 3 + 6);
}

TEST(TsTokenTest, NaNIsMissing) { EXPECT_EQ(ts_token(kNaN, 256, 4.0), 2); }

// ---- CSV reading ----

TEST_F(TsCsv, EndToEndTokens) {
  // diff of close: NaN, 2, -1, 3; s = 2; z: NaN, 1, -0.5, 1.5. B = 8, C = 2 (bins 0.5 wide):
  // bin = floor((z + 2) * 2) -> -, 6, 3, 7. Volume diff: NaN, 10, NaN(missing), NaN; s = 10;
  // z = 1 -> bin 6.
  std::string p = write("prices.csv",
                        "date,close,volume\n"
                        "d1,10,100\n"
                        "d2,12,110\n"
                        "d3,11,\n"
                        "d4,14,130\n");
  auto recs = read_timeseries_csv(p, {}, 2);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].name, "prices");
  EXPECT_EQ(recs[0].source_rows, (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_EQ(recs[0].channel_names, (std::vector<std::string>{"close", "volume"}));
  Record r = tokenize_series(recs[0], ts_config(2, 8, 2.0, TsTransform::kDiff), p);
  EXPECT_EQ(r.name, "prices");
  EXPECT_EQ(r.source, p);
  EXPECT_EQ(r.description, "columns close,volume; time date");  // which columns went in
  EXPECT_EQ(r.region, "");
  EXPECT_EQ(r.offset, 0);
  EXPECT_EQ(r.n_channels, 2);
  EXPECT_EQ(r.timestamps.strings(), (std::vector<std::string>{"d1", "d2", "d3", "d4"}));
  // token-major: [t0c0, t0c1, t1c0, t1c1, ...]
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{2, 2, 3 + 6, 3 + 6, 3 + 3, 2, 3 + 7, 2}));
  // pandas' unnamed index as the time column (--time-column 1) and an unnamed channel
  p = write("pd.csv", ",close,\n0,10,1\n1,11,2\n2,12,4\n");
  recs = read_timeseries_csv(p, {"1", {}, {}}, 2);
  ASSERT_EQ(recs.size(), 1u);
  r = tokenize_series(recs[0], ts_config(2, 8, 2.0, TsTransform::kDiff), p);
  EXPECT_EQ(r.description, "columns close,(unnamed); time (unnamed)");
  // Names holding ',', ';' or '"' are quoted as CSV cells, so the list splits back into names.
  p = write("q.csv", "\"t;z\",\"close, adj\",\"v\"\"x\"\n1,10,1\n2,11,2\n");
  recs = read_timeseries_csv(p, {"1", {}, {}}, 2);
  ASSERT_EQ(recs.size(), 1u);
  r = tokenize_series(recs[0], ts_config(2, 8, 2.0, TsTransform::kDiff), p);
  EXPECT_EQ(r.description, "columns \"close, adj\",\"v\"\"x\"; time \"t;z\"");
}

TEST_F(TsCsv, EndToEndLogReturn) {
  // log returns: NaN, ln 2, ln 0.5; s = ln 2; z: NaN, 1, -1. B = 4, C = 2: floor((z+2)/4*4).
  std::string p = write("x.csv", "timestamp,v\n1,1\n2,2\n3,1\n");
  auto recs = read_timeseries_csv(p, {}, 1);
  Record r = tokenize_series(recs[0], ts_config(1, 4, 2.0, TsTransform::kLogReturn), p);
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{2, 3 + 3, 3 + 1}));
}

TEST_F(TsCsv, CrlfSameAsLf) {
  std::string lf = "date,a,b\n1,1.5,2\n2,3,4\n";
  std::string crlf = "date,a,b\r\n1,1.5,2\r\n2,3,4\r\n";
  auto a = read_timeseries_csv(write("lf.csv", lf), {}, 0);
  auto b = read_timeseries_csv(write("crlf.csv", crlf), {}, 0);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0].values, b[0].values);
  EXPECT_EQ(a[0].timestamps.strings(), b[0].timestamps.strings());
  EXPECT_EQ(b[0].timestamps.strings(), (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(b[0].values[1], (std::vector<double>{2, 4}));
}

TEST_F(TsCsv, NoTrailingNewlineAndBlankTrailingLine) {
  auto a = read_timeseries_csv(write("a.csv", "date,a\n1,1\n2,2"), {}, 1);
  auto b = read_timeseries_csv(write("b.csv", "date,a\n1,1\n2,2\n\n"), {}, 1);
  EXPECT_EQ(a[0].values[0], (std::vector<double>{1, 2}));
  EXPECT_EQ(b[0].values[0], (std::vector<double>{1, 2}));
}

TEST_F(TsCsv, QuotedCells) {
  std::string p = write("q.csv",
                        "\"date\",\"price, usd\",\"say \"\"hi\"\"\"\n"
                        "\"2020-01-01, Mon\",\"1.5\",2\n"
                        "\"2020-01-02\",3,\"4\"\n");
  auto recs = read_timeseries_csv(p, {}, 2);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].channel_names, (std::vector<std::string>{"price, usd", "say \"hi\""}));
  EXPECT_EQ(recs[0].timestamps.strings(),
            (std::vector<std::string>{"2020-01-01, Mon", "2020-01-02"}));
  EXPECT_EQ(recs[0].values[0], (std::vector<double>{1.5, 3}));
  EXPECT_EQ(recs[0].values[1], (std::vector<double>{2, 4}));
  CsvOptions o;
  o.columns = {"say \"hi\""};
  EXPECT_EQ(read_timeseries_csv(p, o, 1)[0].values[0], (std::vector<double>{2, 4}));
}

TEST_F(TsCsv, MissingValues) {
  std::string p = write("m.csv", "date,a\n1,\n2,NA\n3,NaN\n4,nan\n5,NAN\n6,-2.5e1\n7,\"\"\n");
  auto recs = read_timeseries_csv(p, {}, 1);
  expect_same(recs[0].values[0], {kNaN, kNaN, kNaN, kNaN, kNaN, -25, kNaN});
  Record r = tokenize_series(recs[0], ts_config(1, 8, 4.0, TsTransform::kLevel), p);
  // level: only -25 is present, s = 25, z = -1 -> bin floor(3/8*8) = 3.
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{2, 2, 2, 2, 2, 3 + 3, 2}));
}

// A missing time (NA, NaN, blanks, as R's write.csv writes one) is refused like an empty one;
// a CR inside a line (LF CR line ends, lone CRs after a CRLF first line) is refused, not kept in
// names and timestamps.
TEST_F(TsCsv, MissingTimesAndInnerCarriageReturns) {
  for (const char* bad : {"NA", "NaN", "\"  \""}) {
    const std::string msg = input_error([&] {
      read_timeseries_csv(write("t.csv", std::string("date,x\n2024-01-01,1\n") + bad + ",2\n"), {},
                          1);
    });
    EXPECT_NE(msg.find("line 3: missing time"), std::string::npos) << msg;
  }
  std::string msg = input_error([&] {
    read_timeseries_csv(write("lfcr.csv", "id,date,x\n\rA,2024-01-01,1\n\rA,2024-01-02,2\n"),
                        {"", {}, "id"}, 1);
  });
  EXPECT_NE(msg.find("line 2: a carriage return"), std::string::npos) << msg;
  msg = input_error([&] {
    read_timeseries_csv(write("mix.csv", "date,x\r\n2024-01-01,1\r2024-01-02,2\r"), {}, 1);
  });
  EXPECT_NE(msg.find("a carriage return"), std::string::npos) << msg;
  // A stray CR before a comma in an LF file: refused, not dropped from the number.
  msg = input_error([&] {
    read_timeseries_csv(write("stray.csv", "date,x,y\n2024-01-01,1,2\n2024-01-02,55.5\r,3\n"), {},
                        2);
  });
  EXPECT_NE(msg.find("line 3: a carriage return"), std::string::npos) << msg;
  // CRLF line ends (also a last line without them) stay fine.
  EXPECT_EQ(
      read_timeseries_csv(write("crlf.csv", "date,x\r\n2024-01-01,1\r\n2024-01-02,2\r"), {}, 1)[0]
          .timestamps.size(),
      2u);
}

// A quote that opens a cell and never closes: the line and the cell are named.
TEST_F(TsCsv, UnterminatedQuoteNamesLineAndCell) {
  const std::string msg = input_error([&] {
    read_timeseries_csv(write("q.csv", "date,x,y\n2024-01-01,1,2\n2024-01-02,3,\"4\n"), {}, 2);
  });
  EXPECT_NE(msg.find("line 3, cell 3: unterminated quoted cell"), std::string::npos) << msg;
}

// A header name with a comma (quoted) cannot be named in --columns (a comma splits it): the error
// says to choose it by its number, which works.
TEST_F(TsCsv, HeaderNameWithACommaIsChosenByNumber) {
  const std::string p =
      write("c.csv", "date,\"close, adj\",vol\n2024-01-01,1,10\n2024-01-02,2,20\n");
  const std::string msg = input_error([&] {
    read_timeseries_csv(p, {"", {"close", " adj"}, ""}, 0);
  });
  EXPECT_NE(msg.find("the header's 'close, adj' holds a comma, which splits --columns: choose it "
                     "by its number (2)"),
            std::string::npos)
      << msg;
  const auto recs = read_timeseries_csv(p, {"", {"2"}, ""}, 1);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].values.at(0), (std::vector<double>{1, 2}));
}

// A name twice in the header: chosen by that name, refused (the choice would be arbitrary);
// chosen by number, or among "all the other columns", taken.
TEST_F(TsCsv, RepeatedNamesByNumber) {
  const std::string p = write("rep.csv", "date,x,x\n2024-01-01,1,10\n2024-01-02,2,20\n");
  const std::string msg = input_error([&] { read_timeseries_csv(p, {"", {"x"}, ""}, 1); });
  EXPECT_NE(msg.find("'x' appears more than once in the header: choose it by its number"),
            std::string::npos)
      << msg;
  auto recs = read_timeseries_csv(p, {"", {"3"}, ""}, 1);
  ASSERT_EQ(recs.size(), 1u);
  expect_same(recs[0].values[0], {10, 20});
  EXPECT_EQ(recs[0].timestamps[0], "2024-01-01");
  recs = read_timeseries_csv(p, {}, 2);
  ASSERT_EQ(recs[0].values.size(), 2u);
  expect_same(recs[0].values[1], {10, 20});
}

TEST_F(TsCsv, ColumnsOrderAndUnknown) {
  std::string p = write("c.csv", "date,a,b,c\n1,1,2,3\n2,4,5,6\n");
  CsvOptions o;
  o.columns = {"c", "a"};
  auto recs = read_timeseries_csv(p, o, 2);
  ASSERT_EQ(recs[0].values.size(), 2u);
  EXPECT_EQ(recs[0].values[0], (std::vector<double>{3, 6}));
  EXPECT_EQ(recs[0].values[1], (std::vector<double>{1, 4}));
  EXPECT_EQ(recs[0].channel_names, (std::vector<std::string>{"c", "a"}));

  o.columns = {"a", "zz"};
  std::string msg = input_error([&] { read_timeseries_csv(p, o, 0); });
  EXPECT_NE(msg.find("'zz'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'date', 'a', 'b', 'c'"), std::string::npos) << msg;  // lists the header
  EXPECT_NE(msg.find("c.csv"), std::string::npos) << msg;
}

TEST_F(TsCsv, TimeColumnOption) {
  std::string p = write("t.csv", "when,x,y\nt1,1,2\nt2,3,4\n");
  // No default time column: an error that lists the header.
  std::string msg = input_error([&] { read_timeseries_csv(p, {}, 0); });
  EXPECT_NE(msg.find("'when', 'x', 'y'"), std::string::npos) << msg;
  CsvOptions o;
  o.time_column = "when";
  auto recs = read_timeseries_csv(p, o, 2);
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"t1", "t2"}));
  EXPECT_EQ(recs[0].values[0], (std::vector<double>{1, 3}));
  // --time-column may pick a column that would otherwise be a channel.
  o.time_column = "x";
  o.columns = {"y"};
  recs = read_timeseries_csv(p, o, 1);
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"1", "3"}));
  EXPECT_EQ(recs[0].values.size(), 1u);
  o.time_column = "nope";
  EXPECT_THROW(read_timeseries_csv(p, o, 0), InputError);
}

TEST_F(TsCsv, DefaultTimeColumnIsFirstMatchAnyCase) {
  auto recs = read_timeseries_csv(write("a.csv", "v,Date,w\n1,d1,2\n"), {}, 0);
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"d1"}));
  EXPECT_EQ(recs[0].channel_names, (std::vector<std::string>{"v", "w"}));
  recs = read_timeseries_csv(write("b.csv", "v,time,timestamp\n1,a,2\n"), {}, 0);
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"a"}));
  // yfinance's intraday download
  recs = read_timeseries_csv(write("c.csv", "Datetime,Open,Close\n2024-01-02 09:30:00-05:00,1,2\n"),
                             {}, 0);
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"2024-01-02 09:30:00-05:00"}));
  EXPECT_EQ(recs[0].channel_names, (std::vector<std::string>{"Open", "Close"}));
}

TEST_F(TsCsv, IdColumnLongFormat) {
  std::string p = write("long.csv",
                        "id,timestamp,v\n"
                        "B,1,10\n"
                        "A,1,20\n"
                        "B,2,11\n"
                        "A,2,21\n"
                        "B,3,12\n");
  CsvOptions o;
  o.id_column = "id";
  auto recs = read_timeseries_csv(p, o, 1);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].name, "B");
  EXPECT_EQ(recs[1].name, "A");
  EXPECT_EQ(recs[0].values[0], (std::vector<double>{10, 11, 12}));
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"1", "2", "3"}));
  EXPECT_EQ(recs[0].source_rows, (std::vector<int64_t>{2, 4, 6}));
  EXPECT_EQ(recs[1].values[0], (std::vector<double>{20, 21}));
  EXPECT_EQ(recs[1].source_rows, (std::vector<int64_t>{3, 5}));
  Record r = tokenize_series(recs[1], ts_config(1, 8, 4.0, TsTransform::kLevel), p);
  EXPECT_EQ(r.name, "A");
  EXPECT_EQ(r.n_tokens(), 2);
  EXPECT_EQ(recs[0].id_blanks_line, 0);
  // Ids with and without blanks around them are one record (unquoted cells are trimmed), which
  // the record says for a warning; a quoted id keeps its blanks.
  auto ws = read_timeseries_csv(
      write("ws.csv", "id,date,x\nAAPL,1,100\n AAPL,1,50\nAAPL,2,101\n\" AAPL\",2,7\n"), o, 1);
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_EQ(ws[0].name, "AAPL");
  EXPECT_EQ(ws[0].values[0].size(), 3u);
  EXPECT_EQ(ws[0].id_first_line, 2);
  EXPECT_EQ(ws[0].id_blanks_line, 3);
  EXPECT_EQ(ws[1].name, " AAPL");
  EXPECT_EQ(ws[1].id_blanks_line, 0);
}

TEST_F(TsCsv, RecordNameStripsOnlyLastExtension) {
  auto recs = read_timeseries_csv(write("x.csv.txt", "date,a\n1,1\n"), {}, 1);
  EXPECT_EQ(recs[0].name, "x.csv");
}

// ---- CSV errors ----

TEST_F(TsCsv, NoHeaderRow) {
  std::string msg = input_error([&] { read_timeseries_csv(write("n.csv", "1,2\n3,4\n"), {}, 0); });
  EXPECT_NE(msg.find("no header row"), std::string::npos) << msg;
  // Columns chosen by number in a file without a header: line 1 is data, not names (it would
  // have been taken as the header, its row lost).
  const std::string dated = write("d.csv", "2020-01-01,100.5\n2020-01-02,101\n2020-01-03,102\n");
  msg = input_error([&] { read_timeseries_csv(dated, {"1", {"2"}, ""}, 1); });
  EXPECT_NE(msg.find("no header row: line 1 looks like data (its time column holds '2020-01-01'"),
            std::string::npos)
      << msg;
  msg = input_error([&] {
    read_timeseries_csv(write("e.csv", "1700000000,1.5\n1700000060,2\n"), {"1", {}, ""}, 1);
  });
  EXPECT_NE(msg.find("no header row: line 1 is all numbers"), std::string::npos) << msg;
  msg = input_error([&] {
    read_timeseries_csv(write("t.csv", "09:30,1.5,2.5\n09:31,2,3\n"), {"1", {"2", "3"}, ""}, 2);
  });
  EXPECT_NE(msg.find("no header row: line 1 looks like data (its time column holds '09:30'"),
            std::string::npos)
      << msg;
  // A first row whose value is missing (NA, or empty) is data as well: it was taken as the
  // header and lost without a word.
  for (const char* first : {"2024-01-01,NA\n", "2024-01-01,\n"}) {
    msg = input_error([&] {
      read_timeseries_csv(write("na.csv", std::string(first) + "2024-01-02,2\n2024-01-03,3\n"),
                          {"1", {"2"}, ""}, 1);
    });
    EXPECT_NE(msg.find("no header row: line 1 looks like data"), std::string::npos) << msg;
  }
  // Without --time-column as well (it said "no time column named 'timestamp'...").
  msg = input_error([&] { read_timeseries_csv(dated, {}, 1); });
  EXPECT_NE(msg.find("no header row: line 1 looks like data (its time column holds '2020-01-01'"),
            std::string::npos)
      << msg;
  // Years as column names under a named time column are a header.
  auto recs = read_timeseries_csv(write("y.csv", "date,2019,2020\n2020-01-01,1,2\n"), {}, 2);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].channel_names, (std::vector<std::string>{"2019", "2020"}));
}

TEST_F(TsCsv, NonNumericCell) {
  std::string p = write("bad.csv", "date,open,close\n1,1,2\n2,3,abc\n");
  std::string msg = input_error([&] { read_timeseries_csv(p, {}, 0); });
  EXPECT_NE(msg.find("bad.csv"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'close'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'abc'"), std::string::npos) << msg;
  // Partly numeric and non-finite cells are refused too.
  for (const char* cell : {"1.5x", "inf", "-Infinity", "1e999", "0x10", "1,5"}) {
    std::string q = write("b2.csv", std::string("date,a\n1,\"") + cell + "\"\n");
    EXPECT_THROW(read_timeseries_csv(q, {}, 0), InputError) << cell;
  }
  // The hints: a column of text in its first row (a ticker: the id column?), a word later on,
  // a known missing-value marker, a thousands separator or a decimal comma; none for a number
  // with other characters in it.
  auto hint_for = [&](const std::string& rows) {
    return input_error([&] { read_timeseries_csv(write("h.csv", "date,sym,a\n" + rows), {}, 0); });
  };
  msg = hint_for("1,MSFT,2\n");
  EXPECT_NE(msg.find("column 'sym': not a number: 'MSFT' (a column of text, such as a ticker or a "
                     "label? choose the numeric channels with --columns, or make a label column "
                     "the records' id with --id-column 'sym'"),
            std::string::npos)
      << msg;
  // A word further down is one stray cell, not a column of labels (no --id-column advice).
  msg = hint_for("1,2,3\n2,x,4\n");
  EXPECT_NE(msg.find("not a number: 'x' (a missing value is read as an empty cell, NA or NaN; "
                     "other text in a column of numbers is a damaged or hand-edited cell)"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find("--id-column"), std::string::npos) << msg;
  // The header line again (two files joined with cat): said so.
  msg = hint_for("1,2,3\ndate,sym,a\n2,3,4\n");
  EXPECT_NE(msg.find("line 3, column 'sym': not a number: 'sym' (the header line again: files "
                     "joined with cat?"),
            std::string::npos)
      << msg;
  msg = input_error(
      [&] { read_timeseries_csv(write("pm.csv", "date,PM2.5\n1,3\ndate,PM2.5\n2,4\n"), {}, 0); });
  EXPECT_NE(msg.find("not a number: 'PM2.5' (the header line again"), std::string::npos) << msg;
  msg = hint_for("1,2,3\n2,na,4\n");
  EXPECT_NE(msg.find("write this file's 'na' as one of those"), std::string::npos) << msg;
  msg = hint_for("1,2,3\n2,N/A,4\n");
  EXPECT_NE(msg.find("not a number: 'N/A' (sparsa reads a missing value as an empty cell, NA or "
                     "NaN; write this file's 'N/A' as one of those)"),
            std::string::npos)
      << msg;
  for (const char* cell : {"\"53,077,800\"", "\"60,5\""}) {
    msg = hint_for(std::string("1,2,3\n2,") + cell + ",4\n");
    EXPECT_NE(msg.find("(a thousands separator or a decimal comma? sparsa reads numbers written as "
                       "1234567.89"),
              std::string::npos)
        << msg;
  }
  msg = hint_for("1,1.5x,3\n");
  EXPECT_TRUE(msg.ends_with("not a number: '1.5x'")) << msg;
  // A line break, CR or tab inside a quoted cell is shown escaped: the message keeps its line.
  msg = input_error(
      [&] { read_timeseries_csv(write("b3.csv", "date,a\n1,\"1\r\n2\t\x01\"\n"), {}, 0); });
  EXPECT_NE(msg.find("'1\\r\\n2\\t\\x01'"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

// `text` gzip-compressed (zlib's gzip format).
std::string gzip_bytes(const std::string& text) {
  z_stream z{};
  deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(256 + text.size() * 2, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  z.avail_in = (uInt)text.size();
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = (uInt)out.size();
  deflate(&z, Z_FINISH);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  return out;
}

// Files that are not UTF-8 CSV text get a message that says what they are and what to do; one
// cell the line and column. Lines of spaces and tabs only are blank lines.
TEST_F(TsCsv, NotAUtf8CsvAndOddCells) {
  auto msg_of = [&](const std::string& name, const std::string& bytes) {
    return input_error([&] { read_timeseries_csv(write(name, bytes), {}, 0); });
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string("\x1f\x8b\x08\x00rest", 8),
       "gzip-compressed: decompress it first (zcat X.csv.gz"},
      {"BZh91AY&SY", "bzip2-compressed: decompress it first (bzcat FILE > X.csv)"},
      {"PK\x03\x04rest", "zip-compressed: decompress it first (unzip -p FILE > X.csv)"},
      {"\xFF\xFE"
       "d",
       "UTF-16"},
      {std::string("date,a\n1,2\n\0\0", 13), "binary data (a NUL byte at line 3)"},
      {"date,a\r1,2\r2,3\r", "lone CR"},
      {"date,a\r1,2\r2,3\r\n", "lone CR"},  // with the LF `echo >> FILE` leaves
      {"date,id,a\n1,Z\xFCrich,2\n", "line 2: not UTF-8 text (byte 0xFC)"},
      {"date,a\n1,2\n,3\n", "line 3: empty time in column 'date'"},
      {"date,a\n1,1e-400\n", "line 2, column 'a': too small for a double"},
      {">chr1\nACGT\n", "FASTA/FASTQ, not a CSV table: FASTA and FASTQ need a DNA model"},
      {gzip_bytes(">chr1\nACGT\n"), "gzip-compressed FASTA/FASTQ, not a CSV table"},
      {std::string("\x89HDF\r\n\x1A\n\0\0", 10), "an HDF5 file"},
      {"date;close\n2020-01-01;1\n", "looks separated by it, but sparsa reads comma-separated"},
      {"date;close\n2020-01-01;1,5\n", "after decimal commas to points: `sed 's/,/./g; s/;/,/g'`"},
      {"date\tclose\n2020-01-01\t1\n", "holding '\\t'"}};
  for (const auto& [bytes, want] : cases) {
    const std::string msg = msg_of("x.csv", bytes);
    EXPECT_NE(msg.find(want), std::string::npos) << want << " | " << msg;
    EXPECT_LT(msg.size(), 400u) << msg;
  }
  // A header of 5000 names is shown cut (20 names), not whole.
  std::string wide = "date";
  for (int i = 0; i < 5000; ++i) wide += ",c" + std::to_string(i);
  const std::string msg = input_error([&] {
    read_timeseries_csv(write("w.csv", wide + "\n1\n"), {"", {"zz"}, ""}, 0);
  });
  EXPECT_NE(msg.find("(5001 columns)"), std::string::npos) << msg.substr(0, 300);
  EXPECT_LT(msg.size(), 1000u);
  // Valid UTF-8 (names, timestamps) is read; blank lines of spaces and tabs are skipped.
  auto recs = read_timeseries_csv(
      write("u.csv", "date,id,a\n1,Z\xC3\xBCrich,2\n  \t \n2,Z\xC3\xBCrich,3\n\t\r\n"),
      {"", {}, "id"}, 0);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].name, "Z\xC3\xBCrich");
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"1", "2"}));
}

// The first row that goes back in time (-1: none), as time_order finds it.
int64_t first_backwards_row(const StringColumn& ts) { return time_order(ts).backwards; }

// A newest-first file (a common download) is embedded backwards: the time order of ISO-like
// timestamps, numbers and dates with the year last is checked so that it can be warned about;
// other forms are not judged (and said as such: TimeOrder::unread).
TEST(TsOrder, FirstBackwardsRow) {
  using V = StringColumn;
  EXPECT_EQ(first_backwards_row(V{"2024-01-02", "2024-01-03", "2024-01-03"}), -1);
  EXPECT_EQ(first_backwards_row(V{"2024-01-03", "2024-01-02", "2024-01-01"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2024-01-01 09:30", "2024-01-01 10:00", "2024-01-01 09:59"}), 2);
  EXPECT_EQ(first_backwards_row(V{"Jan 3", "Jan 2"}), -1);  // not ISO-like: not judged
  EXPECT_EQ(first_backwards_row(V{"10", "9"}), 1);          // numbers: compared as numbers
  EXPECT_EQ(first_backwards_row(V{"2024-01-01"}), -1);
  // A time of day alone (a Date,Time file's time column) goes back every midnight: not judged.
  EXPECT_EQ(first_backwards_row(V{"15:58", "15:59", "09:30"}), -1);
  EXPECT_EQ(first_backwards_row(V{"15:58:00.5", "09:30:00.0"}), -1);
  EXPECT_EQ(first_backwards_row(V{"9:58", "9:30"}), -1);
  // Text order is not time order for US or European dates, nor across a change of UTC offset
  // (02:30+02:00 is 00:30Z, before 02:00+01:00 = 01:00Z: compared as UTC, below).
  EXPECT_EQ(first_backwards_row(V{"12/30/2019", "12/31/2019", "01/02/2020"}), -1);
  // Day or month first with '.' or '-' (the characters of ISO, another order): not judged.
  EXPECT_EQ(first_backwards_row(V{"30.01.2024", "31.01.2024", "01.02.2024"}), -1);
  EXPECT_EQ(first_backwards_row(V{"30-01-2024", "31-01-2024", "01-02-2024"}), -1);
  EXPECT_EQ(first_backwards_row(V{"12-31-2019", "01-02-2020"}), -1);
  // Epoch seconds of one length: judged.
  EXPECT_EQ(first_backwards_row(V{"1700000060", "1700000000"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2020-10-25T02:30:00+02:00", "2020-10-25T02:00:00+01:00"}), -1);
  // Dates with the year last: by year always; by month and day where a field above 12 shows
  // which is the day (a newest-first Yahoo or Excel download in MM/DD/YYYY).
  EXPECT_EQ(first_backwards_row(V{"01/02/2020", "12/31/2019", "12/30/2019"}), 1);  // the year
  EXPECT_EQ(first_backwards_row(V{"12/31/2019", "12/30/2019"}), 1);   // month first: 31 > 12
  EXPECT_EQ(first_backwards_row(V{"31.01.2024", "30.01.2024"}), 1);   // day first
  EXPECT_EQ(first_backwards_row(V{"02/03/2024", "01/03/2024"}), -1);  // which is the day?
  EXPECT_EQ(first_backwards_row(V{"1/13/2024 09:30", "1/13/2024 09:00"}), 1);  // the time too
  EXPECT_EQ(first_backwards_row(V{"1/13/2024 9:30", "1/13/2024 10:00"}), -1);  // lengths differ
  // 12-hour times do not sort as text: not compared.
  EXPECT_EQ(first_backwards_row(V{"1/13/2024 9:00 AM", "1/13/2024 1:00 PM"}), -1);
  EXPECT_EQ(first_backwards_row(V{"01/13/2024 12:00 PM", "01/13/2024 01:00 PM"}), -1);
  // Epoch seconds before 1970 are negative.
  EXPECT_EQ(first_backwards_row(V{"-86400", "0", "86400"}), -1);
  EXPECT_EQ(first_backwards_row(V{"0", "-86400"}), 1);
  // ISO 8601's 'T' and ' ' mixed: one separator (text order put ' ' before 'T': a forward file
  // was warned about, and one going back was not).
  EXPECT_EQ(
      first_backwards_row(V{"2020-01-01T10:00:00", "2020-01-01 11:00:00", "2020-01-01T12:00:00"}),
      -1);
  EXPECT_EQ(first_backwards_row(V{"2020-01-01 10:00:00", "2020-01-01T09:00:00"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2020-1-1 10:00", "2020-1-2T09:00", "2020-1-2 08:00"}), 2);
  // One offset, with and without a fraction of a second: compared as instants, judged.
  EXPECT_EQ(
      time_order(V{"2024-01-01T10:00:00.000Z", "2024-01-01T11:00:00.000Z", "2024-01-01T09:00:00Z"})
          .backwards,
      2);
  EXPECT_EQ(time_order(V{"2024-01-01T10:00:00.5+00:00", "2024-01-01T11:00:00+00:00"}).unread, -1);
  // (a later row without its offset is the one said)
  EXPECT_EQ(
      time_order(V{"2024-01-01T10:00:00.5Z", "2024-01-01T11:00:00Z", "2024-01-01T12:00:00"}).unread,
      2);
  EXPECT_EQ(time_order(V{"-86400", "0"}).unread, -1);
  // What was not judged is said: the first row that breaks the first row's form, or the first
  // row where that form is none the check reads.
  EXPECT_EQ(time_order(V{"2024-01-01", "2024-01-02"}).unread, -1);
  EXPECT_EQ(time_order(V{"2024-01-02", "2001/07/13", "2024-01-01"}).unread, 1);
  EXPECT_EQ(time_order(V{"2024-01-02", "2001/07/13", "2024-01-01"}).backwards, -1);
  // A step backwards before a row that is not read is not said as one (the order was not judged).
  EXPECT_EQ(time_order(V{"20", "10", "x"}).backwards, -1);
  EXPECT_EQ(time_order(V{"20", "10", "x"}).unread, 2);
  EXPECT_EQ(time_order(V{"garbage", "2024-01-01"}).unread, 0);
  EXPECT_EQ(time_order(V{"Jan 3", "Jan 2"}).unread, 0);
  EXPECT_EQ(time_order(V{"12/31/2019", "2020-01-01"}).unread, 1);
  EXPECT_EQ(time_order(V{"15:58", "09:30"}).unread, -1);  // a time of day alone: not said
  EXPECT_EQ(time_order(V{"2020-10-25T02:30:00+02:00", "2020-10-25T02:00:00+01:00"}).unread, -1);
  EXPECT_EQ(first_backwards_row(V{"2020-10-25 02:30:00+02:00", "2020-10-25 02:00:00+01:00"}), -1);
  // Across a change of offsets, every row with its own: compared as UTC instants, also where one
  // is written Z (another length: Go's RFC 3339 writes a zero offset so).
  EXPECT_EQ(first_backwards_row(V{"2020-03-27T09:30:00Z", "2020-03-30T09:30:00+01:00",
                                  "2020-03-29T09:30:00+01:00"}),
            2);
  EXPECT_EQ(time_order(V{"2020-03-27T09:30:00Z", "2020-03-30T09:30:00+01:00"}).unread, -1);
  EXPECT_EQ(first_backwards_row(V{"2020-03-29T00:30:00Z", "2020-03-29T01:10:00+01:00"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2020-03-10 09:30:00-04:00", "2020-03-09 09:30:00-04:00",
                                  "2020-03-06 09:30:00-05:00"}),
            1);
  EXPECT_EQ(first_backwards_row(V{"2020-03-06 09:30:00-05:00", "2020-03-09 09:30:00-04:00"}), -1);
  // Text order back, UTC order forward (the repeated hour of a fall-back change): not backwards
  EXPECT_EQ(first_backwards_row(V{"2020-11-01T01:50:00-04:00", "2020-11-01T01:10:00-05:00"}), -1);
  EXPECT_EQ(first_backwards_row(V{"2020-11-01T01:10:00-05:00", "2020-11-01T01:50:00-04:00"}), 1);
  // Compact offsets and fractions of a second
  EXPECT_EQ(first_backwards_row(V{"2020-03-08T07:00:00.50-0500", "2020-03-08T08:00:00.25-0400"}),
            1);
  EXPECT_EQ(first_backwards_row(V{"2020-03-08T07:00:00.25-0500", "2020-03-08T09:00:00.50-0400"}),
            -1);
  // A row without an offset among rows with one: not judged, not said
  EXPECT_EQ(time_order(V{"2020-03-10 09:30:00-04:00", "2020-03-09 09:30:00-05:00",
                         "2020-03-01 09:30:00+xx:00"})
                .backwards,
            -1);
  // One offset throughout: judged.
  EXPECT_EQ(first_backwards_row(V{"2020-10-25T02:30:00+01:00", "2020-10-25T02:00:00+01:00"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2020-10-25T02:30:00Z", "2020-10-25T02:00:00Z"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2020-10-25T02:30:00-0500", "2020-10-25T02:00:00-0500"}), 1);
  // Whole-hour offsets (PostgreSQL's "+02") across a fall-back change: compared as UTC.
  EXPECT_EQ(first_backwards_row(V{"2024-10-27 02:00:00+02", "2024-10-27 02:30:00+02",
                                  "2024-10-27 02:00:00+01", "2024-10-27 02:30:00+01"}),
            -1);
  EXPECT_EQ(first_backwards_row(V{"2024-10-27 02:30:00+01", "2024-10-27 02:30:00+02"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2024-10-27 02:30:00+02", "2024-10-27 02:00:00+02"}), 1);
  // Year-first dates without their zeros: one length by chance, not in text order; compared by
  // year, month and day.
  EXPECT_EQ(first_backwards_row(V{"2024-9-28", "2024-9-29", "2024-9-30", "2024-10-1"}), -1);
  EXPECT_EQ(first_backwards_row(V{"2024-10-1", "2024-9-30", "2024-9-29"}), 1);
  EXPECT_EQ(first_backwards_row(V{"2024-9-30 10:00", "2024-10-1 09:00", "2024-10-1 08:00"}), 2);
  EXPECT_EQ(time_order(V{"2024-9-30", "2024-10-1", "2024-13-1"}).unread, 2);
  EXPECT_EQ(time_order(V{"2024-9-30 9:30", "2024-9-30 10:00"}).unread, 1);  // not compared
  EXPECT_EQ(time_order(V{"2024-01-01 09:30:00", "2024-01-01 09:30:00.500000"}).unread, 1);
  // Epoch nanoseconds (256 apart as doubles): compared as whole numbers.
  EXPECT_EQ(first_backwards_row(V{"1700000000123456789", "1700000000123456700"}), 1);
  EXPECT_EQ(first_backwards_row(V{"1700000000000000001", "1700000000000000002"}), -1);
  EXPECT_EQ(first_backwards_row(V{"1700000000.5", "1700000000", "1700000001"}), 1);
}

// Columns by header text first, then by 1-based number (pandas' unnamed index column as the time
// column), then by the text without surrounding spaces.
TEST_F(TsCsv, ColumnsByNumberAndTrimmed) {
  const std::string p = write("pd.csv", ",close,open,2\n10,1,2,7\n11,2,3,8\n");
  auto recs = read_timeseries_csv(p, {"1", {" open", "close"}, ""}, 2);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].timestamps.strings(), (std::vector<std::string>{"10", "11"}));
  EXPECT_EQ(recs[0].values[0], (std::vector<double>{2, 3}));  // open
  EXPECT_EQ(recs[0].values[1], (std::vector<double>{1, 2}));  // close
  // A header cell "2" wins over the second column; "3" is the third column.
  recs = read_timeseries_csv(p, {"1", {"2", "3"}, ""}, 2);
  EXPECT_EQ(recs[0].values[0], (std::vector<double>{7, 8}));
  EXPECT_EQ(recs[0].values[1], (std::vector<double>{2, 3}));
  // A number with spaces around it ("--columns '2, 3'"), where no header cell is " 3".
  recs = read_timeseries_csv(p, {"1", {" 3"}, ""}, 1);
  EXPECT_EQ(recs[0].values[0], (std::vector<double>{2, 3}));  // open
  std::string msg = input_error([&] { read_timeseries_csv(p, {"1", {"5"}, ""}, 1); });
  EXPECT_NE(msg.find("column '5' not found (a name, or a number: 1 = first; the header has 4 "
                     "columns)"),
            std::string::npos)
      << msg;
  msg = input_error([&] { read_timeseries_csv(p, {}, 0); });
  EXPECT_NE(msg.find("--time-column 1)"), std::string::npos) << msg;
  // A name that differs in case only: the header's spelling is suggested.
  msg = input_error([&] { read_timeseries_csv(p, {"1", {"Close"}, ""}, 1); });
  EXPECT_NE(msg.find("column 'Close' not found (a name, or a number: 1 = first); did you mean "
                     "'close'?"),
            std::string::npos)
      << msg;
  msg = input_error([&] { read_timeseries_csv(p, {"OPEN", {}, ""}, 1); });
  EXPECT_NE(msg.find("did you mean 'open'?"), std::string::npos) << msg;
  const std::string sp = write("sp.csv", "Date, Close\n2020-01-01,1\n");  // a space after ','
  msg = input_error([&] { read_timeseries_csv(sp, {"", {"close"}, ""}, 1); });
  EXPECT_NE(msg.find("did you mean 'Close'?"), std::string::npos) << msg;
}

// Intraday rows under a date-only time column repeat its text: counted so that it can be warned
// about.
TEST(TsOrder, RepeatedTimes) {
  using V = StringColumn;
  EXPECT_EQ(repeated_times(V{"1", "2", "3"}).first, -1);
  const RepeatedTimes r = repeated_times(V{"d1", "d1", "d1", "d2", "d2", "d3"});
  EXPECT_EQ(r.first, 1);
  EXPECT_EQ(r.count, 3);
}

// A step that overflows (diff of +-1e308, a log return beside a subnormal price) and a sum of
// |r| that overflows are refused naming what they can: the line and its values, or the column.
// check_series makes the same checks as tokenize_series without tokenising.
TEST_F(TsCsv, TransformOverflowNamesTheLine) {
  std::string p = write("ovf.csv", "timestamp,x\n2020-01-01,1e308\n2020-01-02,-1e308\n3,1\n");
  auto recs = read_timeseries_csv(p, {}, 1);
  for (bool check : {false, true}) {
    const ModelConfig c = ts_config(1, 8, 4.0, TsTransform::kDiff);
    std::string msg = input_error([&] {
      if (check)
        check_series(recs[0], c, p);
      else
        tokenize_series(recs[0], c, p);
    });
    EXPECT_NE(
        msg.find(
            "record 'ovf': line 3, column 'x': the difference from 1e+308 (line 2) to -1e+308"),
        std::string::npos)
        << msg;
  }
  p = write("sub.csv", "timestamp,price\n1,1.0\n2,1e-310\n3,1.2\n");
  recs = read_timeseries_csv(p, {}, 1);
  std::string msg =
      input_error([&] { check_series(recs[0], ts_config(1, 8, 4.0, TsTransform::kLogReturn), p); });
  EXPECT_NE(msg.find("line 4, column 'price': the log return from 1e-310 (line 3) to 1.2"),
            std::string::npos)
      << msg;
  // Every value finite, their sum not: the mean is (spec 1, step 2), so the record is scaled by
  // it (it was refused).
  p = write("big.csv", "timestamp,x\n1,1.5e308\n2,1.6e308\n3,1.7e308\n");
  recs = read_timeseries_csv(p, {}, 1);
  EXPECT_NO_THROW(check_series(recs[0], ts_config(1, 8, 4.0, TsTransform::kLevel), p));
  // log_return's nonzero values of one sign, and the channel count.
  p = write("z.csv", "timestamp,x\n1,2\n2,0\n");
  recs = read_timeseries_csv(p, {}, 1);
  msg =
      input_error([&] { check_series(recs[0], ts_config(1, 8, 4.0, TsTransform::kLogReturn), p); });
  EXPECT_NE(msg.find("line 3, column 'x': log_return cannot take the value 0"), std::string::npos)
      << msg;
  {
    const std::string q = write("sign.csv", "timestamp,x\n1,2\n2,3\n3,-1\n");
    const auto sr = read_timeseries_csv(q, {}, 1);
    const std::string m =
        input_error([&] { check_series(sr[0], ts_config(1, 8, 4.0, TsTransform::kLogReturn), q); });
    EXPECT_NE(m.find("line 4, column 'x': log_return from 3 (line 3) to -1 changes sign"),
              std::string::npos)
        << m;
  }
  msg = input_error([&] { check_series(recs[0], ts_config(2, 8, 4.0, TsTransform::kLevel), p); });
  EXPECT_NE(msg.find("the model has 2 channels, the record has 1"), std::string::npos) << msg;
}

TEST_F(TsCsv, RaggedRow) {
  std::string msg =
      input_error([&] { read_timeseries_csv(write("r.csv", "date,a,b\n1,2,3\n2,3\n"), {}, 0); });
  EXPECT_NE(msg.find("record 'r'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
  msg = input_error([&] {
    read_timeseries_csv(write("q.csv", "id,date,a\nx,1,2\ny,2,3,4\n"), {"", {}, "id"}, 0);
  });
  EXPECT_NE(msg.find("record 'y'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("must be quoted"), std::string::npos) << msg;
}

TEST_F(TsCsv, HeaderOnlyAndEmpty) {
  std::string msg = input_error([&] { read_timeseries_csv(write("h.csv", "date,a\n"), {}, 0); });
  EXPECT_NE(msg.find("no data rows"), std::string::npos) << msg;
  msg = input_error([&] { read_timeseries_csv(write("e.csv", ""), {}, 0); });
  EXPECT_NE(msg.find("no data rows"), std::string::npos) << msg;
}

TEST_F(TsCsv, ChannelCountMismatch) {
  std::string p = write("cc.csv", "date,a,b,c\n1,1,2,3\n");
  std::string msg = input_error([&] { read_timeseries_csv(p, {}, 2); });
  EXPECT_NE(msg.find("2 channels"), std::string::npos) << msg;
  EXPECT_NE(msg.find("3 columns"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--columns"), std::string::npos) << msg;
  msg = input_error([&] { read_timeseries_csv(p, {}, 1); });
  EXPECT_NE(msg.find("the model has 1 channel,"), std::string::npos) << msg;
  EXPECT_NE(msg.find("`channels = 3` in the config given to sparsa init"), std::string::npos)
      << msg;
  // A wide file's names are listed up to 20 (the message was 189 KB for 20,000 columns).
  std::string wide = "date", row = "1";
  for (int c = 0; c < 500; ++c) wide += ",c" + std::to_string(c), row += ",1";
  msg = input_error([&] { read_timeseries_csv(write("w.csv", wide + "\n" + row + "\n"), {}, 1); });
  EXPECT_NE(msg.find("'c19', ..."), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 1000u) << msg;
  // tokenize_series refuses a record whose channel count differs from the model's.
  auto recs = read_timeseries_csv(p, {}, 3);
  EXPECT_THROW(tokenize_series(recs[0], ts_config(2, 8, 4.0, TsTransform::kLevel), p), InputError);
}

TEST_F(TsCsv, LogReturnOfNonPositive) {
  std::string p = write("lr.csv", "date,a,b\n1,1,1\n2,2,2\n3,3,0\n4,4,1\n");
  auto recs = read_timeseries_csv(p, {}, 2);
  std::string msg = input_error(
      [&] { tokenize_series(recs[0], ts_config(2, 8, 4.0, TsTransform::kLogReturn), p); });
  EXPECT_NE(msg.find("lr.csv"), std::string::npos) << msg;
  EXPECT_NE(msg.find("record 'lr'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  // diff accepts the same data.
  EXPECT_NO_THROW(tokenize_series(recs[0], ts_config(2, 8, 4.0, TsTransform::kDiff), p));
  // A negative value next to a missing one is never in a ratio, so it is accepted.
  auto ok = read_timeseries_csv(write("ok.csv", "date,a\n1,-1\n2,\n3,2\n4,4\n"), {}, 1);
  Record r = tokenize_series(ok[0], ts_config(1, 8, 4.0, TsTransform::kLogReturn), p);
  EXPECT_EQ(r.tokens[0], 2);
  EXPECT_EQ(r.tokens[3], 3 + 5);  // ln 2 / ln 2 = 1 -> floor(5/8*8) = 5
}

// ---- real data ----

// The MSFT CSV is bundled in examples/ (so its test runs from a plain clone); the larger USD/CHF
// one comes from ../shared/data or SPARSA_DATA_DIR, and its test skips (reported as skipped)
// without it.
std::string data_file(const std::string& name) {
  std::vector<fs::path> roots;
#ifdef SPARSA_SOURCE_DIR
  if (fs::exists(fs::path(SPARSA_SOURCE_DIR) / "examples" / name))
    return (fs::path(SPARSA_SOURCE_DIR) / "examples" / name).string();
#endif
  if (const char* env = std::getenv("SPARSA_DATA_DIR")) roots.emplace_back(env);
#ifdef SPARSA_SOURCE_DIR
  roots.emplace_back(fs::path(SPARSA_SOURCE_DIR) / "shared" / "data");
  roots.emplace_back(fs::path(SPARSA_SOURCE_DIR) / ".." / "shared" / "data");
#endif
  for (const fs::path& r : roots) {
    fs::path p = r / "timeseries" / name;
    if (fs::exists(p)) return p.string();
  }
  return "";
}

TEST(TsRealData, MsftDailyOhlcv) {
  std::string p = data_file("msft_daily_ohlcv.csv");
  ASSERT_FALSE(p.empty()) << "examples/msft_daily_ohlcv.csv not found";
  auto recs = read_timeseries_csv(p, {}, 5);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].name, "msft_daily_ohlcv");
  EXPECT_EQ(recs[0].channel_names,
            (std::vector<std::string>{"open", "high", "low", "close", "volume"}));
  EXPECT_EQ(recs[0].timestamps.size(), 249u);
  EXPECT_EQ(recs[0].timestamps[0], "2000-09-27");
  EXPECT_DOUBLE_EQ(recs[0].values[3][0], 60.625);
  Record r = tokenize_series(recs[0], ts_config(5, 256, 4.0, TsTransform::kLogReturn), p);
  EXPECT_EQ(r.n_tokens(), 249);
  for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(r.tokens[c], 2);  // t = 0 has no return
  for (int32_t t : r.tokens) EXPECT_TRUE(t >= 2 && t < 3 + 256);
}

TEST(TsRealData, UsdChf30min) {
  std::string p = data_file("usdchf_30min.csv");
  if (p.empty()) GTEST_SKIP() << "usdchf_30min.csv not found";
  auto recs = read_timeseries_csv(p, {}, 1);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].values.size(), 1u);
  EXPECT_EQ(recs[0].values[0].size(), 62496u);
  EXPECT_EQ(recs[0].timestamps[0], "1996-04-01T00:00:00");
  EXPECT_DOUBLE_EQ(recs[0].values[0][0], 1.193);
  Record r = tokenize_series(recs[0], ts_config(1, 256, 4.0, TsTransform::kLogReturn), p);
  EXPECT_EQ(r.n_tokens(), 62496);
}

}  // namespace
}  // namespace sparsa
