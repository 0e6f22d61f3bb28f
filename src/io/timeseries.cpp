// sparsa: time-series CSV input and its tokenisation (spec section 1).
#include "io/timeseries.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "core/error.hpp"
#include "core/file_text.hpp"
#include "core/progress.hpp"
#include "core/utf8.hpp"

namespace sparsa {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// A cell as a message shows it (long cells are cut, so one bad row cannot flood the terminal):
// control characters (a CR or a line break inside a quoted cell, a tab) escaped, so that the
// message stays on its line; 40 characters at most.
std::string shown(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 40; ++i) {
    const unsigned char c = (unsigned char)s[i];
    if (c == '\r')
      out += "\\r";
    else if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7F) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02X", c);
      out += b;
    } else
      out += (char)c;
  }
  return s.size() <= 40 ? out : out + "...";
}

enum class CellKind { kNumber, kMissing, kInvalid, kNonFinite, kTiny };

// Parses one numeric cell. std::from_chars, not strtod, so a user's locale cannot change the
// decimal separator and the whole cell must be consumed.
CellKind parse_number(std::string_view s, double& out) {
  s = trim_blanks(s);
  out = kNaN;
  if (s.empty() || s == "NA" || iequals(s, "nan")) return CellKind::kMissing;
  if (s.front() == '+') {  // from_chars refuses an explicit plus sign; spreadsheets write one
    s.remove_prefix(1);
    if (s.empty() || s.front() == '-' || s.front() == '+') return CellKind::kInvalid;
  }
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec == std::errc::result_out_of_range && end == s.data() + s.size()) {
    // Out of range both ways: 1e999 does not fit a double, nor does 1e-400 (it underflows).
    const size_t e = s.find_first_of("eE");
    return e != std::string_view::npos && e + 1 < s.size() && s[e + 1] == '-'
               ? CellKind::kTiny
               : CellKind::kNonFinite;
  }
  if (ec != std::errc() || end != s.data() + s.size()) return CellKind::kInvalid;
  if (std::isnan(out)) return CellKind::kMissing;  // "-nan", "nan(123)" as printf writes them
  if (std::isinf(out)) return CellKind::kNonFinite;
  return CellKind::kNumber;
}

struct CsvRow {
  int64_t line = 0;  // 1-based line on which the row starts
  size_t n = 0;      // cells in this row: cells[0 .. n); the strings past n are kept for reuse
  std::vector<std::string> cells;
  std::vector<char> padded;  // whether an unquoted cell had blanks around it (dropped)
};

// RFC 4180-style splitter over the whole file text: "," separates cells, quoted cells may hold
// commas, "" and line breaks; LF and CRLF both end a row; blank lines are skipped (a data row
// always has a time column and a channel, so a blank line is never data).
class CsvScanner {
 public:
  // `text` must outlive the scanner.
  CsvScanner(std::string_view text, const std::string& path) : text_(text), path_(path) {
    if (text_.rfind("\xEF\xBB\xBF", 0) == 0) pos_ = 3;  // UTF-8 BOM written by spreadsheets
  }

  bool next(CsvRow& row) {
    row.n = 0;
    for (;;) {  // skip blank lines, also those of spaces and tabs only
      size_t p = pos_;
      while (p < text_.size() && (text_[p] == ' ' || text_[p] == '\t')) ++p;
      if (p >= text_.size()) {
        pos_ = p;
        break;
      }
      const bool lf = text_[p] == '\n';
      const bool crlf = text_[p] == '\r' && (p + 1 == text_.size() || text_[p + 1] == '\n');
      if (!lf && !crlf) break;  // a row starts at pos_
      pos_ = std::min(text_.size(), p + (lf ? 1 : 2));
      ++line_;
    }
    if (pos_ >= text_.size()) return false;
    row.line = line_;
    for (;;) {
      if (row.n == row.cells.size()) {
        row.cells.emplace_back();
        row.padded.push_back(0);
      }
      // (into a kept string: no allocation per cell)
      row.padded[row.n] = 0;
      read_cell(row.line, row.n + 1, row.cells[row.n], row.padded[row.n]);
      ++row.n;
      if (pos_ >= text_.size()) return true;
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == '\n' || at_crlf()) {
        pos_ += text_[pos_] == '\n' ? 1 : 2;
        ++line_;
        return true;
      }
      throw InputError(where(path_, "", 0,
                             "line " + std::to_string(row.line) +
                                 ": unexpected text after a closing quote in cell " +
                                 std::to_string(row.n)));
    }
  }

 private:
  bool at_crlf() const {
    return text_[pos_] == '\r' && (pos_ + 1 == text_.size() || text_[pos_ + 1] == '\n');
  }

  void read_cell(int64_t row_line, size_t number, std::string& cell, char& padded) {
    size_t p = pos_;
    while (p < text_.size() && (text_[p] == ' ' || text_[p] == '\t')) ++p;
    if (p < text_.size() && text_[p] == '"') {
      cell.clear();
      pos_ = p + 1;
      for (;;) {
        if (pos_ >= text_.size())
          throw InputError(where(path_, "", 0,
                                 "line " + std::to_string(row_line) + ", cell " +
                                     std::to_string(number) +
                                     ": unterminated quoted cell (its opening quote has no "
                                     "closing one before the end of the file)"));
        char c = text_[pos_++];
        if (c == '"') {
          if (pos_ < text_.size() && text_[pos_] == '"') {
            cell += '"';
            ++pos_;
          } else {
            break;
          }
        } else {
          if (c == '\n') ++line_;
          cell += c;
        }
      }
      while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) ++pos_;
      return;
    }
    size_t end = pos_;
    while (end < text_.size() && text_[end] != ',' && text_[end] != '\n') ++end;
    const std::string_view raw = std::string_view(text_).substr(pos_, end - pos_);
    const std::string_view v = trim_blanks(raw);
    // A CR inside a line (not CRLF's, which trim_blanks drops): lines ending in LF CR, lone CRs
    // after a first line ending in CRLF, or a stray one before a comma ("55.5\r,3"); it would
    // stay in a name or a timestamp, or be dropped from a number without a word.
    const size_t cr = raw.find('\r');
    const bool crlf = cr + 1 == raw.size() && (end == text_.size() || text_[end] == '\n');
    if (cr != std::string_view::npos && !crlf)
      throw InputError(
          where(path_, "", 0,
                "line " + std::to_string(row_line) +
                    ": a carriage return (\\r) inside the line, not before its "
                    "line feed: mixed or LF CR line ends? Convert them first "
                    "(tr -d '\\r' < FILE > NEW for LF CR, tr '\\r' '\\n' for lone CRs)"));
    pos_ = end;
    padded = v.size() + (crlf ? 1 : 0) != raw.size();
    cell.assign(v.data(), v.size());
  }

  std::string_view text_;
  std::string path_;
  size_t pos_ = 0;
  int64_t line_ = 1;
};

// Column names in a message: at most 20, each cut at 40 characters.
std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < 20; ++i)
    s += (i ? ", '" : "'") + shown(names[i]) + "'";
  if (names.size() > 20) s += ", ... (" + std::to_string(names.size()) + " columns)";
  return s;
}
std::string join_header(const std::vector<std::string>& header) {
  return "header: " + join_names(header);
}

// Up to `cap` bytes of what gzip data `text` (its start, at least) decompresses to; 0 when none.
size_t gunzip_head(std::string_view text, char* out, size_t cap) {
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return 0;
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  z.avail_in = (uInt)std::min<size_t>(text.size(), 1 << 20);
  z.next_out = reinterpret_cast<Bytef*>(out);
  z.avail_out = (uInt)cap;
  inflate(&z, Z_SYNC_FLUSH);
  const size_t got = cap - z.avail_out;
  inflateEnd(&z);
  return got;
}

// Why a channel's cell may not be a number, in words a user can act on ("" when nothing fits):
// another program's missing-value marker (null, N/A, #N/A, None, -), a column of text (a ticker
// or a label: the records' id, or not a channel), or a number written with a thousands
// separator or a decimal comma (a quoted cell keeps its commas). `first`: no earlier row of the
// record had a value in this column.
std::string not_number_hint(std::string_view cell, CellKind kind, const std::string& column,
                            bool first) {
  if (kind != CellKind::kInvalid) return "";
  const std::string_view c = trim_blanks(cell);
  // The column's own name further down (PM2.5 as well): the header line again (files joined with
  // cat)
  if (c == trim_blanks(column))
    return " (the header line again: files joined with cat? Keep the first file's header alone, "
           "e.g. `awk 'FNR > 1 || NR == 1' a.csv b.csv > joined.csv`)";
  const bool digits = c.find_first_of("0123456789") != std::string_view::npos;
  if (digits) {
    if (c.find_first_not_of("0123456789,.+-") == std::string_view::npos &&
        c.find(',') != std::string_view::npos)
      return " (a thousands separator or a decimal comma? sparsa reads numbers written as "
             "1234567.89, with a point and no separators: `sed` or the program that wrote the "
             "file can drop them)";
    return "";
  }
  for (const char* m : {"null", "n/a", "#n/a", "none", "-", "--", ".", "?", "missing", "nil", "na"})
    if (iequals(c, m))
      return " (sparsa reads a missing value as an empty cell, NA or NaN; write this file's '" +
             std::string(c) + "' as one of those)";
  // Text from the column's first value on: a label, not a channel. Further down, one stray cell.
  if (first)
    return " (a column of text, such as a ticker or a label? choose the numeric channels with "
           "--columns, or make a label column the records' id with --id-column '" +
           column + "'; a missing value is read as an empty cell, NA or NaN)";
  return " (a missing value is read as an empty cell, NA or NaN; other text in a column of "
         "numbers is a damaged or hand-edited cell)";
}

// What the text is when it is not a UTF-8 CSV, in words a user can act on; "" when it may be one.
std::string not_csv_text(std::string_view text) {
  auto starts = [&](std::string_view magic) { return text.rfind(magic, 0) == 0; };
  auto line_of = [&](size_t at) {  // 1-based line of byte `at`
    return std::to_string(1 + std::count(text.begin(), text.begin() + (ptrdiff_t)at, '\n'));
  };
  if (starts("\x1f\x8b")) {
    // What it holds, from its first decompressed bytes: FASTA/FASTQ wants another model.
    char head[64];
    const size_t got = gunzip_head(text, head, sizeof head);
    if (got > 0 && (head[0] == '>' || head[0] == '@'))
      return "gzip-compressed FASTA/FASTQ, not a CSV table: FASTA and FASTQ need a DNA model, "
             "and this one is a time-series model";
    return "gzip-compressed: decompress it first (zcat X.csv.gz > X.csv); CSV is read as plain "
           "text";
  }
  if (hdf5_signature(text))
    return "an HDF5 file (a sparsa checkpoint or embeddings file?), not a CSV text";
  if (const OtherCompression z = other_compression(text); *z.name)
    return std::string(z.name) + "-compressed: decompress it first (" + z.cat +
           " FILE > X.csv); CSV is read as plain text";
  if (starts(">") || starts("@"))
    return "FASTA/FASTQ, not a CSV table: FASTA and FASTQ need a DNA model, and this one is a "
           "time-series model";
  if (starts("\xFF\xFE") || starts("\xFE\xFF"))
    return "UTF-16 text: convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8)";
  const size_t nul = text.find('\0');
  if (nul != std::string_view::npos)
    return "binary data (a NUL byte at line " + line_of(nul) + "), not a CSV text";
  {
    // Lone CRs (classic Mac OS), also with a final LF as `echo >> FILE` leaves: a CR not before
    // an LF ahead of the first LF, in the first line of any length.
    // (cr < lf, so text[cr + 1] exists where there is an LF.)
    const size_t lf = text.find('\n');
    const size_t cr = text.substr(0, lf).find('\r');
    if (cr != std::string_view::npos &&
        (lf == std::string_view::npos || (text[cr + 1] != '\n' && text[cr + 1] != '\r')))
      return "lines end in a lone CR (classic Mac OS): convert them first (tr '\\r' '\\n')";
  }
  if (const size_t bad = first_invalid_utf8(text); bad != std::string_view::npos)
    return "line " + line_of(bad) + ": not UTF-8 text (byte " + hex_byte((unsigned char)text[bad]) +
           "); convert the file first, e.g. iconv -f latin1 -t utf-8 (names and timestamps are "
           "stored as UTF-8)";
  return "";
}

// The header's columns resolved to indices: which is time, which is id, which are channels.
struct Columns {
  int64_t time = -1;
  int64_t id = -1;
  std::vector<int64_t> channels;
  std::vector<int64_t> time_others;  // the default rule's other candidates (RawSeries)
};

// The time column's names where --time-column is not given, in any case (yfinance's intraday
// downloads name it Datetime).
constexpr const char* kTimeNames[] = {"timestamp", "date", "time", "datetime"};

Columns resolve_columns(const std::vector<std::string>& header, const CsvOptions& opts,
                        const std::string& path) {
  auto fail = [&](const std::string& what) {
    throw InputError(where(path, "", 0, what + " (" + join_header(header) + ")"));
  };
  auto all_digits = [](const std::string& name) {
    return !name.empty() &&
           std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  // A column by its header text; else, where no header cell is that text, by its 1-based number
  // (an unnamed index column written by pandas: --time-column 1), or by the text without spaces
  // around it ("close, open").
  auto by_text_or_number = [&](const std::string& name) -> int64_t {
    auto it = std::find(header.begin(), header.end(), name);
    if (it != header.end()) return int64_t(it - header.begin());
    if (name.size() < 10 && all_digits(name)) {
      const int64_t k = std::stoll(name);
      return k >= 1 && k <= int64_t(header.size()) ? k - 1 : -1;
    }
    return -1;
  };
  // A name without the spaces and tabs around it.
  auto trimmed = [](const std::string& name) {
    const size_t b = name.find_first_not_of(" \t"), e = name.find_last_not_of(" \t");
    return b == std::string::npos ? name : name.substr(b, e + 1 - b);
  };
  auto find = [&](const std::string& name) -> int64_t {
    if (const int64_t c = by_text_or_number(name); c >= 0) return c;
    const std::string t = trimmed(name);  // (all blanks: unchanged)
    return t.size() == name.size() ? -1 : by_text_or_number(t);
  };
  // "; did you mean 'Close'?" where the name differs from a header's only in case (the header's
  // cells come trimmed: CsvScanner::cell)
  // A header name holding a comma ("close, adj") cannot be named in --columns, which a comma
  // splits: "; ... choose it by its number (2)".
  auto hint = [&](const std::string& name) -> std::string {
    for (const std::string& h : header)
      if (iequals(h, trimmed(name))) return "; did you mean '" + shown(h) + "'?";
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i].find(',') != std::string::npos && !trimmed(name).empty() &&
          header[i].find(trimmed(name)) != std::string::npos)
        return "; the header's '" + shown(header[i]) +
               "' holds a comma, which splits --columns: choose it by its number (" +
               std::to_string(i + 1) + ")";
    return "";
  };
  Columns cols;
  if (!opts.time_column.empty()) {
    cols.time = find(opts.time_column);
    if (cols.time < 0)
      fail("time column '" + opts.time_column + "' not found (a name, or a number: 1 = first)" +
           hint(opts.time_column));
  } else {
    // An exact name wins over a case-insensitive one, so "Date,date" picks "date".
    for (int pass = 0; pass < 2 && cols.time < 0; ++pass) {
      for (size_t i = 0; i < header.size() && cols.time < 0; ++i) {
        for (const char* want : kTimeNames) {
          if (pass == 0 ? header[i] == want : iequals(header[i], want)) cols.time = int64_t(i);
        }
      }
    }
    for (size_t i = 0; cols.time >= 0 && i < header.size(); ++i)
      for (const char* want : kTimeNames)
        if ((int64_t)i != cols.time && iequals(header[i], want)) cols.time_others.push_back(i);
    if (cols.time < 0) {
      // One column whose name holds another separator: the file is not comma-separated.
      std::string sep;
      if (header.size() == 1)
        for (const char* c : {";", "\t", "|"})
          if (header[0].find(c) != std::string::npos) sep = c;
      fail(sep.empty()
               ? std::string("no time column named 'timestamp', 'date', 'time' or 'datetime'; use "
                             "--time-column NAME or NUMBER (1 = first)") +
                     (!header.empty() && header[0].empty()
                          ? " (the first column has no name, as pandas writes its index: "
                            "--time-column 1)"
                          : "")
               : std::string("the header is one column holding '") + (sep == "\t" ? "\\t" : sep) +
                     "': the file looks separated by it, but sparsa reads comma-separated values "
                     "(convert it, e.g. `tr '" +
                     (sep == "\t" ? "\\t" : sep) + "' ','`" +
                     (sep == ";" ? ", after decimal commas to points: `sed 's/,/./g; s/;/,/g'`"
                                 : "") +
                     ")");
    }
  }
  if (!opts.id_column.empty()) {
    cols.id = find(opts.id_column);
    if (cols.id < 0) fail("id column '" + opts.id_column + "' not found" + hint(opts.id_column));
    if (cols.id == cols.time)
      fail("column '" + opts.id_column + "' is both the time and id column");
  }
  if (!opts.columns.empty()) {
    for (const std::string& name : opts.columns) {
      int64_t c = find(name);
      if (c < 0)
        fail("column '" + name + "' not found (a name, or a number: 1 = first" +
             (all_digits(trimmed(name)) ? "; the header has " + std::to_string(header.size()) +
                                              " column" + (header.size() == 1 ? "" : "s")
                                        : std::string()) +
             ")" + hint(name));
      if (c == cols.time) fail("column '" + name + "' is the time column, not a channel");
      if (c == cols.id) fail("column '" + name + "' is the id column, not a channel");
      if (std::count(cols.channels.begin(), cols.channels.end(), c))
        fail("column '" + name + "' is chosen twice");
      cols.channels.push_back(c);
    }
  } else {
    for (int64_t i = 0; i < int64_t(header.size()); ++i)
      if (i != cols.time && i != cols.id) cols.channels.push_back(i);
  }
  if (cols.channels.empty()) fail("no channel columns besides the time and id columns");
  // A column chosen by a name that appears twice in the header would be a silently arbitrary
  // choice; chosen by its number (or as one of "all the others"), it is not.
  auto by_number = [&](const std::string& text, int64_t c) {
    return header[c] != text && header[c] != trimmed(text);
  };
  std::vector<int64_t> named;  // columns chosen by their header text
  if (opts.time_column.empty() || !by_number(opts.time_column, cols.time))
    named.push_back(cols.time);
  if (cols.id >= 0 && !by_number(opts.id_column, cols.id)) named.push_back(cols.id);
  for (size_t k = 0; k < opts.columns.size(); ++k)
    if (!by_number(opts.columns[k], cols.channels[k])) named.push_back(cols.channels[k]);
  for (int64_t c : named) {
    if (std::count(header.begin(), header.end(), header[c]) > 1)
      fail("column '" + header[c] +
           "' appears more than once in the header: choose it by its number (1 = first), or "
           "rename one");
  }
  return cols;
}

}  // namespace

namespace {

// A UTC offset at the end of an ISO-8601 time ("Z", "+02:00", "-0500", "+02" as PostgreSQL
// writes whole hours), or "".
std::string_view utc_offset(std::string_view t) {
  if (!t.empty() && t.back() == 'Z') return t.substr(t.size() - 1);
  for (size_t len : {size_t{6}, size_t{5}, size_t{3}})
    if (t.size() > len + 8 && (t[t.size() - len] == '+' || t[t.size() - len] == '-') &&
        std::all_of(t.end() - (ptrdiff_t)len + 1, t.end(),
                    [](char c) { return (c >= '0' && c <= '9') || c == ':'; }) &&
        t.find_first_of("T ", 8) != std::string_view::npos)  // a time part: "T" or " " (pandas)
      return t.substr(t.size() - len);
  return {};
}

}  // namespace

namespace {

// The decimal digits of t from k on, at most `max_digits` of them, as v (k moves past them);
// whether there were `min_digits` or more.
bool date_field(std::string_view t, size_t& k, int min_digits, int max_digits, int& v) {
  const size_t from = k;
  v = 0;
  while (k < t.size() && t[k] >= '0' && t[k] <= '9' && (int)(k - from) < max_digits)
    v = v * 10 + (t[k++] - '0');
  return (int)(k - from) >= min_digits;
}

// A date with the year last ("12/31/2019", "31.01.2024", "1-2-2020"), perhaps with a time after
// a space or 'T': its two leading fields, its year and what follows.
struct YearLast {
  int a = 0, b = 0, year = 0;
  std::string_view rest;
};
std::optional<YearLast> year_last(std::string_view t) {
  YearLast y;
  size_t k = 0;
  if (!date_field(t, k, 1, 2, y.a) || k >= t.size()) return std::nullopt;
  const char sep = t[k];
  if (sep != '/' && sep != '.' && sep != '-') return std::nullopt;
  ++k;
  if (!date_field(t, k, 1, 2, y.b) || k >= t.size() || t[k] != sep) return std::nullopt;
  ++k;
  if (!date_field(t, k, 4, 4, y.year)) return std::nullopt;
  if (k < t.size() && t[k] != ' ' && t[k] != 'T') return std::nullopt;
  if (y.a < 1 || y.b < 1 || y.a > 31 || y.b > 31) return std::nullopt;
  y.rest = t.substr(k);
  return y;
}

// A date with the year first whose month and day may lack their zero ("2024-9-28",
// "2024/10/1"), perhaps with a time after a space or 'T': year, month, day and what follows.
struct YearFirst {
  int year = 0, m = 0, d = 0;
  std::string_view rest;
};
std::optional<YearFirst> year_first(std::string_view t) {
  size_t k = 0;
  YearFirst y;
  if (!date_field(t, k, 4, 4, y.year) || k >= t.size()) return std::nullopt;
  const char sep = t[k];
  if (sep != '-' && sep != '/' && sep != '.') return std::nullopt;
  ++k;
  if (!date_field(t, k, 1, 2, y.m) || k >= t.size() || t[k] != sep) return std::nullopt;
  ++k;
  if (!date_field(t, k, 1, 2, y.d)) return std::nullopt;
  if (k < t.size() && t[k] != ' ' && t[k] != 'T') return std::nullopt;
  if (y.m < 1 || y.m > 12 || y.d < 1 || y.d > 31) return std::nullopt;
  y.rest = t.substr(k);
  return y;
}

// Whether two texts of one length have their digits in the same places ("2024-09-28" and
// "2024-10-01", not "2024-9-28" and "2024-10-1"): then text order is their order.
bool same_shape(std::string_view a, std::string_view b) {
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  for (size_t k = 0; k < a.size(); ++k)
    if (digit(a[k]) != digit(b[k])) return false;
  return true;
}

// An ISO-8601 time with its UTC offset ("2020-03-09 09:30:00-04:00", "2020-03-09T13:30Z",
// "...+0100") as UTC: seconds since 1970 and nanoseconds; nullopt for any other text.
std::optional<std::pair<int64_t, int64_t>> iso_instant(std::string_view t) {
  size_t k = 0;
  auto num = [&](int digits, int& v) {
    v = 0;
    for (int i = 0; i < digits; ++i, ++k) {
      if (k >= t.size() || t[k] < '0' || t[k] > '9') return false;
      v = v * 10 + (t[k] - '0');
    }
    return true;
  };
  auto is = [&](char c) { return k < t.size() && t[k] == c ? (++k, true) : false; };
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  if (!num(4, y) || !is('-') || !num(2, mo) || !is('-') || !num(2, d)) return std::nullopt;
  if (!is('T') && !is(' ')) return std::nullopt;
  if (!num(2, h) || !is(':') || !num(2, mi)) return std::nullopt;
  int64_t nanos = 0;
  if (is(':')) {
    if (!num(2, sec)) return std::nullopt;
    if (is('.')) {
      int digits = 0;
      for (; k < t.size() && t[k] >= '0' && t[k] <= '9'; ++k, ++digits)
        if (digits < 9) nanos = nanos * 10 + (t[k] - '0');
      if (digits == 0) return std::nullopt;
      for (; digits < 9; ++digits) nanos *= 10;
    }
  }
  int64_t offset = 0;  // seconds east of UTC
  if (!is('Z')) {
    const int sign = is('+') ? 1 : is('-') ? -1 : 0;
    int oh = 0, om = 0;
    if (sign == 0 || !num(2, oh)) return std::nullopt;
    // (minutes left out: "+02", whole hours)
    if (k < t.size() && (is(':'), !num(2, om))) return std::nullopt;
    offset = sign * (oh * 3600 + om * 60);
  }
  if (k != t.size() || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 24 || mi > 59 || sec > 60)
    return std::nullopt;
  // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
  const int yy = y - (mo <= 2);
  const int era = yy / 400;
  const int yoe = yy - era * 400;
  const int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  const int64_t days = int64_t(era) * 146097 + doe - 719468;
  return std::pair{days * 86400 + h * 3600 + mi * 60 + sec - offset, nanos};
}

// Text order with ISO 8601's two separators of date and time, 'T' and ' ', taken alike (a file
// may mix them: "2020-01-01T10:00" then "2020-01-01 11:00" is forwards): <0, 0 or >0.
int iso_compare(std::string_view a, std::string_view b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t k = 0; k < n; ++k) {
    const unsigned char x = a[k] == 'T' ? ' ' : a[k], y = b[k] == 'T' ? ' ' : b[k];
    if (x != y) return x < y ? -1 : 1;
  }
  return (a.size() > n) - (b.size() > n);
}

bool iso_like(std::string_view t) {
  for (char c : t)
    if (!((c >= '0' && c <= '9') || c == '-' || c == ':' || c == '.' || c == 'T' || c == 'Z' ||
          c == '+' || c == ' '))
      return false;
  // Year first (2024-01-31): dd.mm.yyyy, dd-mm-yyyy and mm-dd-yyyy pass the characters above
  // but do not sort as text.
  auto digit = [&](size_t k) { return t[k] >= '0' && t[k] <= '9'; };
  return t.size() >= 5 && digit(0) && digit(1) && digit(2) && digit(3) && t[4] == '-';
}

bool plain_number(std::string_view t) {  // epoch seconds and the like (before 1970: negative)
  if (!t.empty() && t[0] == '-') t.remove_prefix(1);
  return !t.empty() && t.find_first_not_of("0123456789.") == std::string_view::npos &&
         std::count(t.begin(), t.end(), '.') <= 1 && t != ".";
}

}  // namespace

TimeOrder time_order(const StringColumn& ts) {
  TimeOrder o;
  if (ts.size() < 2) return o;
  // A time of day alone (HH:MM...: a Date,Time file's time column) goes back every midnight:
  // neither judged nor said.
  const std::string_view t0 = ts[0];
  if (t0.size() >= 4 && t0[0] >= '0' && t0[0] <= '9' && (t0[1] == ':' || t0[2] == ':')) return o;
  auto unread = [&](size_t i) {  // (a step backwards found before is not a judgement either)
    return TimeOrder{-1, (int64_t)i};
  };
  if (plain_number(t0)) {  // numbers: compared as numbers (epoch seconds of any length)
    // Whole numbers exactly (epoch nanoseconds, ~1.7e18, are 256 apart as doubles), others
    // as doubles.
    auto whole = [](std::string_view t, int64_t& v) {
      const auto r = std::from_chars(t.data(), t.data() + t.size(), v);
      return r.ec == std::errc() && r.ptr == t.data() + t.size();
    };
    double prev = 0;
    int64_t prev_whole = 0;
    bool prev_is_whole = false;
    for (size_t i = 0; i < ts.size(); ++i) {
      if (!plain_number(ts[i])) return unread(i);
      int64_t w = 0;
      const bool is_whole = whole(ts[i], w);
      const double v = std::strtod(std::string(ts[i]).c_str(), nullptr);
      const bool back = is_whole && prev_is_whole ? w < prev_whole : v < prev;
      if (i > 0 && back && o.backwards < 0) o.backwards = (int64_t)i;
      prev = v;
      prev_whole = w;
      prev_is_whole = is_whole;
    }
    return o;
  }
  if (iso_like(t0)) {
    // Text order is time order for ISO-8601 texts of one length and one UTC offset (a file that
    // crosses a daylight-saving change of offsets sorts otherwise: not judged, not said).
    const size_t len = t0.size();
    const std::string_view offset = utc_offset(t0);
    // As UTC instants, where every row carries its offset: the order, or nullopt where a row's
    // text is no instant iso_instant reads (`failed`: that row).
    size_t failed = 0;
    auto by_instants = [&]() -> std::optional<TimeOrder> {
      TimeOrder u;
      std::optional<std::pair<int64_t, int64_t>> prev;
      for (size_t j = 0; j < ts.size(); ++j) {
        const auto at = iso_instant(ts[j]);
        if (!at) {
          failed = j;
          return std::nullopt;
        }
        if (prev && *at < *prev && u.backwards < 0) u.backwards = (int64_t)j;
        prev = at;
      }
      return u;
    };
    for (size_t i = 0; i < ts.size(); ++i) {
      if (!iso_like(ts[i])) return unread(i);
      // (another length with another offset: "...09:30:00Z" then "...09:30:00+01:00")
      const bool offsets = !offset.empty() && !utc_offset(ts[i]).empty();
      // One offset, another length ("...10:00:00.000Z" then "...09:00:00Z"): as instants, else
      // this row is the one said
      if ((ts[i].size() != len || !same_shape(ts[i], t0)) && offsets &&
          utc_offset(ts[i]) == offset) {
        if (const auto u = by_instants()) return *u;
        return unread(failed);
      }
      if ((ts[i].size() != len || !same_shape(ts[i], t0)) &&
          !(offsets && utc_offset(ts[i]) != offset)) {
        // Year-first dates without their zeros ("2024-9-30" then "2024-10-1"): compared by
        // year, month and day, then the time of day where two rows' times have one length.
        std::vector<YearFirst> d(ts.size());
        for (size_t j = 0; j < ts.size(); ++j) {
          const auto y = year_first(ts[j]);
          if (!y || !utc_offset(ts[j]).empty()) return unread(j);
          d[j] = *y;
        }
        for (size_t j = 1; j < d.size(); ++j) {
          const YearFirst &p = d[j - 1], &q = d[j];
          int c = q.year != p.year ? (q.year > p.year ? 1 : -1)
                  : q.m != p.m     ? (q.m > p.m ? 1 : -1)
                                   : (q.d > p.d) - (q.d < p.d);
          if (c == 0 && q.rest.size() == p.rest.size()) c = iso_compare(q.rest, p.rest);
          // (times of one day in two lengths, 9:30 and 10:00, or with and without a fraction:
          // not compared, and said)
          if (c == 0 && q.rest.size() != p.rest.size()) return unread(j);
          if (c < 0) {
            o.backwards = (int64_t)j;
            break;
          }
        }
        return o;
      }
      if (utc_offset(ts[i]) != offset) {
        // Offsets that change (a daylight-saving change): compared as UTC where every row
        // carries its offset, else neither judged nor said.
        if (const auto u = by_instants()) return *u;
        return TimeOrder{};
      }
    }
    for (size_t i = 1; i < ts.size(); ++i)
      if (iso_compare(ts[i], ts[i - 1]) < 0) {
        o.backwards = (int64_t)i;
        break;
      }
    return o;
  }
  if (year_last(t0)) {
    // The year decides; month and day too where a field above 12 shows which is the day
    // (12/31/2019: month first; 31.01.2024: day first); then the time of day, where two rows'
    // times have one length.
    std::vector<YearLast> d(ts.size());
    bool a_day = false, b_day = false;
    for (size_t i = 0; i < ts.size(); ++i) {
      const auto y = year_last(ts[i]);
      if (!y) return unread(i);
      d[i] = *y;
      a_day |= y->a > 12;
      b_day |= y->b > 12;
    }
    const bool known = a_day != b_day;  // both above 12 somewhere: not dates of one order
    for (size_t i = 1; i < d.size(); ++i) {
      const YearLast &p = d[i - 1], &q = d[i];
      int c = (q.year > p.year) - (q.year < p.year);
      if (c == 0 && known) {
        const int qm = a_day ? q.b : q.a, pm = a_day ? p.b : p.a;
        const int qd = a_day ? q.a : q.b, pd = a_day ? p.a : p.b;
        c = qm != pm ? (qm > pm ? 1 : -1) : (qd > pd) - (qd < pd);
        // (12-hour times, "9:00 AM" then "1:00 PM", do not sort as text: not compared)
        const bool letters = std::any_of(q.rest.begin(), q.rest.end(), [](char ch) {
          return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
        });
        if (c == 0 && !letters && q.rest.size() == p.rest.size()) c = q.rest.compare(p.rest);
      }
      if (c < 0) {
        o.backwards = (int64_t)i;
        break;
      }
    }
    return o;
  }
  return unread(0);
}

RepeatedTimes repeated_times(const StringColumn& ts) {
  RepeatedTimes r;
  for (size_t i = 1; i < ts.size(); ++i)
    if (ts[i] == ts[i - 1] && !ts[i].empty()) {
      if (r.first < 0) r.first = (int64_t)i;
      ++r.count;
    }
  return r;
}

std::vector<RawSeries> read_timeseries_csv(const std::string& path, const CsvOptions& opts,
                                           int64_t expected_channels) {
  const FileText file(path);
  const std::string_view text = file.view();
  if (const std::string why = not_csv_text(text); !why.empty())
    throw InputError(where(path, "", 0, why));
  CsvScanner scanner(text, path);
  CsvRow row;
  if (!scanner.next(row)) throw InputError(where(path, "", 0, "no data rows (the file is empty)"));
  const std::vector<std::string> header(row.cells.begin(), row.cells.begin() + (ptrdiff_t)row.n);
  {
    double unused = 0;
    bool all_numbers = std::all_of(header.begin(), header.end(), [&](const std::string& s) {
      return parse_number(s, unused) == CellKind::kNumber;
    });
    if (all_numbers)
      throw InputError(where(path, "", 0,
                             "no header row: line 1 is all numbers; the first line must name the "
                             "columns"));
  }
  // Line 1 read as data rather than names: its time cell reads as a time and the columns after
  // it as numbers (or missing values: no header names a column so). A header of years,
  // "date,2019,2020", still has a time column named "date".
  auto time_like = [](std::string_view t) {
    if (t.empty() || t[0] < '0' || t[0] > '9') return false;
    bool sep = false, digits_only = true;
    for (char c : t) {
      if (c == '-' || c == '/' || c == ':') sep = true;
      if (c < '0' || c > '9') digits_only = false;
      if (!((c >= '0' && c <= '9') || c == '-' || c == '/' || c == ':' || c == '.' || c == 'T' ||
            c == 'Z' || c == '+' || c == ' '))
        return false;
    }
    return sep || (digits_only && t.size() >= 8);
  };
  auto data_like = [&](int64_t time, const std::vector<int64_t>& channels) {
    double unused = 0;
    return time_like(header[time]) && std::all_of(channels.begin(), channels.end(), [&](int64_t c) {
             const CellKind k = parse_number(header[c], unused);
             return k == CellKind::kNumber || k == CellKind::kMissing;
           });
  };
  auto no_header = [&](int64_t time, const char* what) {
    return InputError(where(path, "", 0,
                            "no header row: line 1 looks like data (its time column holds '" +
                                shown(header[time]) + "' and " + what +
                                "); the first line must name the columns: add one (e.g. `sed -i "
                                "'1i timestamp,close' FILE`)"));
  };
  if (opts.time_column.empty() && header.size() >= 2) {
    // No --time-column: before "no column named timestamp, date, ...", a first line of data
    std::vector<int64_t> rest(header.size() - 1);
    std::iota(rest.begin(), rest.end(), int64_t{1});
    if (data_like(0, rest)) throw no_header(0, "the columns after it numbers or missing values");
  }
  const Columns cols = resolve_columns(header, opts, path);
  // Columns chosen by number in a file without a header: line 1 would be taken as the names
  // and its row lost.
  if (data_like(cols.time, cols.channels))
    throw no_header(cols.time, "its chosen columns numbers or missing values");
  const int64_t n_channels = int64_t(cols.channels.size());
  if (expected_channels > 0 && n_channels != expected_channels) {
    std::vector<std::string> names;
    for (int64_t c : cols.channels) names.push_back(header[c]);
    const std::string chosen = join_names(names);
    // A chosen column named like the time (Date,Time,Close: 'Time' taken as a channel)
    std::string timeish;
    for (int64_t c : cols.channels)
      if (std::find(cols.time_others.begin(), cols.time_others.end(), c) != cols.time_others.end())
        timeish = header[c];
    throw InputError(where(
        path, "", 0,
        "the model has " + count_of(expected_channels, "channel") + ", but the file has " +
            count_of(n_channels, "column") + " chosen (" + chosen + "); choose " +
            std::to_string(expected_channels) + " with --columns" +
            (timeish.empty() && n_channels > expected_channels
                 ? ", or embed all " + std::to_string(n_channels) +
                       " with a model of that many (`channels = " + std::to_string(n_channels) +
                       "` in the config given to sparsa init)"
                 : std::string()) +
            (timeish.empty()
                 ? std::string()
                 : " ('" + timeish + "' is named like a time column; the time column is '" +
                       header[cols.time] +
                       "': is the time split over two columns? sparsa reads one, so join them "
                       "into one column first)")));
  }

  std::vector<RawSeries> records;
  std::unordered_map<std::string, size_t> record_of_id;  // id value -> index into records
  std::vector<char> id_padded;  // whether each record's first id cell had blanks around it
  const std::string file_record = std::filesystem::path(path).stem().string();
  while (scanner.next(row)) {
    auto line = [&] { return "line " + std::to_string(row.line); };  // for messages only
    if (row.n != header.size()) {
      // The record it belongs to where that can be told: the file's, or the id cell's.
      const std::string record = cols.id < 0               ? file_record
                                 : (size_t)cols.id < row.n ? shown(row.cells[cols.id])
                                                           : std::string();
      throw InputError(where(
          path, record, 0,
          line() + ": " + std::to_string(row.n) + (row.n == 1 ? " cell" : " cells") +
              ", but the header has " + std::to_string(header.size()) +
              (row.n > header.size() ? " (a comma inside a value must be quoted)"
                                     : " (a missing value is an empty cell: keep its comma)")));
    }
    size_t r = 0;
    if (cols.id >= 0) {
      const std::string& id = row.cells[cols.id];
      if (id.empty())
        throw InputError(
            where(path, "", 0, line() + ": empty id in column '" + header[cols.id] + "'"));
      auto [it, inserted] = record_of_id.try_emplace(id, records.size());
      if (inserted) {
        records.emplace_back().name = id;
        records.back().id_first_line = row.line;
        id_padded.push_back(row.padded[cols.id]);
      }
      r = it->second;
      if (row.padded[cols.id] != id_padded[r] && records[r].id_blanks_line == 0)
        records[r].id_blanks_line = row.line;
    } else if (records.empty()) {
      records.emplace_back().name = file_record;
    }
    RawSeries& rec = records[r];
    if (rec.values.empty()) {
      rec.values.resize(n_channels);
      for (int64_t c : cols.channels) rec.channel_names.push_back(header[c]);
      rec.time_name = header[cols.time];
      for (int64_t c : cols.time_others) rec.time_others.push_back(header[c]);
    }
    // (NA, NaN or blanks: a missing time, as R's write.csv writes one; a row has no place
    // without its time)
    if (double unused = 0; parse_number(row.cells[cols.time], unused) == CellKind::kMissing)
      throw InputError(where(path, rec.name, 0,
                             line() + ": " +
                                 (row.cells[cols.time].empty()
                                      ? std::string("empty time")
                                      : "missing time ('" + shown(row.cells[cols.time]) + "')") +
                                 " in column '" + header[cols.time] + "'"));
    rec.timestamps.push_back(row.cells[cols.time]);
    rec.source_rows.push_back(row.line);
    for (int64_t k = 0; k < n_channels; ++k) {
      const std::string& cell = row.cells[cols.channels[k]];
      double v = 0;
      CellKind kind = parse_number(cell, v);
      if (kind == CellKind::kInvalid || kind == CellKind::kNonFinite || kind == CellKind::kTiny) {
        const std::string what = kind == CellKind::kInvalid     ? "not a number"
                                 : kind == CellKind::kNonFinite ? "not a finite number"
                                                                : "too small for a double";
        // A channel named like the time (Date beside time): the time is split over two columns
        const bool timeish = std::find(cols.time_others.begin(), cols.time_others.end(),
                                       cols.channels[k]) != cols.time_others.end();
        throw InputError(where(path, rec.name, 0,
                               line() + ", column '" + header[cols.channels[k]] + "': " + what +
                                   ": '" + shown(cell) + "'" +
                                   (timeish ? " (the time column is '" + header[cols.time] +
                                                  "', and '" + header[cols.channels[k]] +
                                                  "' is named like one too: is the time split "
                                                  "over two columns? --time-column and --columns "
                                                  "choose)"
                                            : not_number_hint(cell, kind, header[cols.channels[k]],
                                                              rec.values[k].empty()))));
      }
      rec.values[k].push_back(v);
    }
  }
  if (records.empty()) throw InputError(where(path, "", 0, "no data rows (only a header)"));
  return records;
}

std::vector<double> ts_transform(const std::vector<double>& x, TsTransform t) {
  if (t == TsTransform::kLevel) return x;
  std::vector<double> r(x.size(), kNaN);
  for (size_t i = 1; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(x[i - 1])) continue;
    if (t == TsTransform::kDiff) {
      r[i] = x[i] - x[i - 1];
    } else if ((x[i] > 0 && x[i - 1] > 0) || (x[i] < 0 && x[i - 1] < 0)) {
      // NOTE: ln(x_t / x_{t-1}) exactly as the spec writes it, not ln x_t - ln x_{t-1}: the two
      // differ in the last bits and tokens must be reproducible (and the ratio of two negative
      // values is defined). A zero or a change of sign stays NaN here; checked_transform refuses
      // it with a message before calling this.
      r[i] = std::log(x[i] / x[i - 1]);
    }
  }
  return r;
}

double ts_scale(const std::vector<double>& r) {
  // Sequential double sum in index order: the result must not depend on threads or sharding.
  double sum = 0;
  int64_t n = 0;
  for (double v : r) {
    if (std::isnan(v)) continue;
    sum += std::fabs(v);
    ++n;
  }
  if (n == 0) return 1.0;
  // A sum past the largest double (values near 1e308) whose mean is finite: the same mean, of
  // |r| / M times M (M the largest |r|); other records keep the plain sum's bits.
  if (std::isinf(sum)) {
    double m = 0, scaled = 0;
    for (double v : r)
      if (!std::isnan(v)) m = std::max(m, std::fabs(v));
    for (double v : r)
      if (!std::isnan(v)) scaled += std::fabs(v) / m;
    return scaled / double(n) * m;
  }
  double mean = sum / double(n);
  return mean == 0 ? 1.0 : mean;
}

int32_t ts_token(double z, int64_t bins, double clip) {
  if (std::isnan(z)) return 2;
  double b = std::floor((z + clip) / (2.0 * clip) * double(bins));
  // Clamp while still a double: a huge z (or +-inf) would overflow the integer conversion.
  b = std::min(std::max(b, 0.0), double(bins - 1));
  return int32_t(3 + int64_t(b));
}

namespace {

std::string series_line_of(const RawSeries& raw, int64_t t) {
  return t < int64_t(raw.source_rows.size()) ? "line " + std::to_string(raw.source_rows[t])
                                             : "row " + std::to_string(t + 1);
}

std::string number_text(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

// The record has the model's number of channels.
void check_channel_count(const RawSeries& raw, const ModelConfig& config, const std::string& path) {
  if (int64_t(raw.values.size()) != config.channels)
    throw InputError(where(path, raw.name, 0,
                           "the model has " + count_of(config.channels, "channel") +
                               ", the record has " + std::to_string(raw.values.size())));
}

// Channel c's transform r and its scale s_c, after the checks that make its tokens well defined:
// log_return's pairs nonzero and of one sign, every r finite, their mean finite. Each error names
// the line that causes it.
struct Transformed {
  std::vector<double> r;
  double scale = 1;
};
Transformed checked_transform(const RawSeries& raw, int64_t c, const ModelConfig& config,
                              const std::string& path) {
  const std::vector<double>& x = raw.values[c];
  const int64_t n_rows = int64_t(raw.timestamps.size());
  if (int64_t(x.size()) != n_rows)
    throw InputError(where(path, raw.name, 0,
                           channel_label(raw, c) + " has " + std::to_string(x.size()) +
                               " values for " + std::to_string(n_rows) + " timestamps"));
  if (config.ts_transform == TsTransform::kLogReturn) {
    // Only values that enter a ratio matter: a lone value between missing cells is unused.
    // ln(x_t / x_{t-1}) is defined for two nonzero values of one sign (negative ones too).
    const auto refuse = [&](int64_t u, const std::string& what) {
      throw InputError(where(path, raw.name, 0,
                             series_line_of(raw, u) + ", " + channel_label(raw, c) +
                                 ": log_return " + what +
                                 " (ln(x_t / x_{t-1}) needs two nonzero values of one sign; use "
                                 "ts_transform = \"diff\" or \"level\")"));
    };
    for (int64_t t = 1; t < n_rows; ++t) {
      if (std::isnan(x[t]) || std::isnan(x[t - 1])) continue;
      for (int64_t u : {t - 1, t})
        if (x[u] == 0) refuse(u, "cannot take the value 0");
      if ((x[t] > 0) != (x[t - 1] > 0))
        refuse(t, "from " + number_text(x[t - 1]) + " (" + series_line_of(raw, t - 1) + ") to " +
                      number_text(x[t]) + " changes sign");
    }
  }
  std::vector<double> r = ts_transform(x, config.ts_transform);
  for (int64_t t = 0; t < n_rows; ++t) {
    if (std::isnan(r[t]) || std::isfinite(r[t])) continue;
    // diff or log_return of two finite values: the step overflows (1e308 after -1e308, or a
    // price of 1e-310 beside 1.2)
    throw InputError(where(
        path, raw.name, 0,
        series_line_of(raw, t) + ", " + channel_label(raw, c) + ": " +
            (config.ts_transform == TsTransform::kDiff ? "the difference " : "the log return ") +
            "from " + number_text(x[t - 1]) + " (" + series_line_of(raw, t - 1) + ") to " +
            number_text(x[t]) + " is not a finite number; check these values"));
  }
  const double scale = ts_scale(r);  // (finite: every r is, checked above, so their mean is too)
  return {std::move(r), scale};
}

}  // namespace

std::string channel_label(const RawSeries& raw, int64_t c) {
  return c < int64_t(raw.channel_names.size()) ? "column '" + raw.channel_names[c] + "'"
                                               : "channel " + std::to_string(c);
}

void check_series(const RawSeries& raw, const ModelConfig& config, const std::string& path) {
  check_channel_count(raw, config, path);
  for (int64_t c = 0; c < config.channels; ++c) checked_transform(raw, c, config, path);
}

Record tokenize_series(RawSeries raw, const ModelConfig& config, const std::string& path) {
  const int64_t n_channels = config.channels;
  const int64_t n_rows = int64_t(raw.timestamps.size());
  check_channel_count(raw, config, path);
  if (config.ts_bins < 1 || !(config.ts_clip > 0))
    throw ConfigError("ts_bins must be >= 1 and ts_clip > 0");

  Record rec;
  rec.name = raw.name;
  rec.source = path;
  rec.n_channels = n_channels;
  // Which columns went in, in the output (the record's description attribute): "columns
  // close,volume; time date" (names as the header has them; "(unnamed)" for an empty cell).
  if (!raw.channel_names.empty()) {
    // A name holding ',', ';' or '"' is quoted as a CSV cell, so the list splits back.
    auto cell = [](const std::string& n) {
      if (n.empty()) return std::string("(unnamed)");
      if (n.find_first_of(",;\"") == std::string::npos) return n;
      std::string q = "\"";
      for (char ch : n) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
      return q + "\"";
    };
    rec.description = "columns ";
    for (size_t c = 0; c < raw.channel_names.size(); ++c)
      rec.description += (c ? "," : "") + cell(raw.channel_names[c]);
    rec.description += "; time " + cell(raw.time_name);
  }
  rec.tokens.assign(size_t(n_rows * n_channels), 0);  // [n_rows, n_channels]
  rec.ts_scale.assign(size_t(n_channels), 1.0);
  for (int64_t c = 0; c < n_channels; ++c) {  // (a channel at a time: one transform held)
    const Transformed tr = checked_transform(raw, c, config, path);
    rec.ts_scale[size_t(c)] = tr.scale;
    for (int64_t t = 0; t < n_rows; ++t)
      rec.tokens[size_t(t * n_channels + c)] =
          ts_token(tr.r[t] / tr.scale, config.ts_bins, config.ts_clip);
  }
  rec.timestamps = std::move(raw.timestamps);  // last: the checks above count them
  return rec;
}

}  // namespace sparsa
