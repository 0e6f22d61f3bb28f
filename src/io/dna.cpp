// sparsa: DNA input (see dna.hpp). Reading goes through htslib so that plain, gzip and bgzip
// files behave the same, and regions use faidx so that names and coordinates match samtools.
#include "io/dna.hpp"

#include <htslib/bgzf.h>
#include <htslib/faidx.h>
#include <htslib/hts.h>
#include <htslib/kstring.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "core/env.hpp"
#include "core/error.hpp"
#include "core/file_text.hpp"
#include "core/progress.hpp"
#include "core/sha256.hpp"
#include "core/utf8.hpp"

namespace sparsa {
namespace {

// 256-entry lookup so that tokenising is one load per base (genomes are long).
constexpr std::array<int8_t, 256> make_token_table() {
  std::array<int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (char c : std::string_view("NRYSWKMBDHV")) {
    t[(unsigned char)c] = kTokN;
    t[(unsigned char)(c - 'A' + 'a')] = kTokN;
  }
  const std::pair<char, int8_t> bases[] = {
      {'A', kTokA}, {'C', kTokC}, {'G', kTokG}, {'T', kTokT}, {'U', kTokT}};
  for (auto [c, tok] : bases) {
    t[(unsigned char)c] = tok;
    t[(unsigned char)(c - 'A' + 'a')] = tok;
  }
  return t;
}
constexpr std::array<int8_t, 256> kTokenTable = make_token_table();

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || c == '\n';
}

// "'X' (0x58)"; non-printable bytes only as hex so that the message stays one readable line.
std::string show_char(unsigned char c) {
  if (c >= 0x20 && c < 0x7f) return "'" + std::string(1, (char)c) + "' (" + hex_byte(c) + ")";
  return hex_byte(c);
}

// A command that rewrites the input through `filter` (sed, tr): on the text of a gzip or bgzip
// file, through zcat and bgzip (run on the compressed bytes it would damage them, or do nothing).
std::string rewrite_advice(const std::string& filter, bool compressed) {
  return compressed ? "`zcat FILE | " + filter + " | bgzip > NEW.gz`"
                    : "`" + filter + " < FILE > NEW`";
}

// (line > 0: the file's line and the column in it, for `sed -n Np` or an editor)
std::string invalid_char_message(unsigned char c, long long line = 0, size_t column = 0,
                                 bool fastq = false, bool compressed = false) {
  const std::string at =
      line > 0 ? " at line " + std::to_string(line) + ", column " + std::to_string(column) : "";
  // FASTA: reading blanks as N would shift every later position. (A FASTQ read's quality line
  // counts its bases, so its blanks are the read's own damage: the general advice.)
  if (!fastq && (c == ' ' || c == '\t'))
    return "invalid character " + show_char(c) + at +
           " (blanks in a sequence line; samtools skips them): drop them with " +
           rewrite_advice("sed '/^>/!s/[[:blank:]]//g'", compressed) +
           " (--invalid-as-n would read each as an N)";
  return "invalid character " + show_char(c) + at + "; use --invalid-as-n to read it as N";
}

// Characters --invalid-as-n read as N in a record: how many, and the first (1-based position).
struct InvalidTally {
  int64_t count = 0, first_pos = 0;
  unsigned char first = 0;
  bool fastq = false;       // the record is a FASTQ read (the advice for blanks is FASTA's)
  bool compressed = false;  // the file is gzip or bgzip (the advice goes through zcat)
  // The record's warning for them ("" for none), after `earlier` (another warning, or "").
  std::string warning(const std::string& file, const std::string& record,
                      const std::string& earlier) const {
    if (count == 0) return earlier;
    return (earlier.empty() ? "" : earlier + "; ") +
           where(file, record, first_pos,
                 count_of(count, "invalid character") + " read as N (--invalid-as-n), the first " +
                     show_char(first) +
                     (!fastq && (first == ' ' || first == '\t')
                          ? " (blanks in sequence lines: each is an N here, so later positions "
                            "differ from samtools faidx's, which skips them; to drop them "
                            "instead: " +
                                rewrite_advice("sed '/^>/!s/[[:blank:]]//g'", compressed) + ")"
                          : std::string()));
  }
};

// Appends the tokens of `seq`; `first_pos` is the 1-based position of seq[0] in its record, so
// that errors point at the base the user can find with samtools faidx or an editor. `region`:
// seq is that region ("chr:start-end"), and an error also says which base of it.
void append_tokens(std::string_view seq, int64_t first_pos, bool invalid_as_n,
                   const std::string& file, const std::string& record, std::vector<int32_t>& out,
                   InvalidTally& tally, long long line = 0, const std::string& region = "") {
  // Grow geometrically: an exact reserve per line would copy the whole record on every line.
  if (out.capacity() < out.size() + seq.size())
    out.reserve(std::max(out.size() + seq.size(), 2 * out.capacity()));
  for (size_t i = 0; i < seq.size(); ++i) {
    int32_t tok = kTokenTable[(unsigned char)seq[i]];
    if (tok < 0) {
      if (!invalid_as_n)
        throw InputError(where(file, record, first_pos + (int64_t)i,
                               invalid_char_message((unsigned char)seq[i], line, i + 1, tally.fastq,
                                                    tally.compressed)) +
                         (region.empty()
                              ? ""
                              : " (base " + std::to_string(i + 1) + " of region " + region + ")"));
      tok = kTokN;
      if (tally.count++ == 0) {
        tally.first_pos = first_pos + (int64_t)i;
        tally.first = (unsigned char)seq[i];
      }
    }
    out.push_back(tok);
  }
}

std::string at_line(const std::string& file, long long line, const std::string& what) {
  return file + ": line " + std::to_string(line) + ": " + what;
}

// htslib prints its own "[E::fai_build3_core] ..." lines before sparsa's error, which names the
// file, record and line and says what to do: they are off unless SPARSA_HTSLIB_LOG is set.
void quiet_htslib() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (!env_on("SPARSA_HTSLIB_LOG")) hts_set_log_level(HTS_LOG_OFF);
  });
}
BGZF* open_bgzf(const std::string& path) {
  quiet_htslib();
  return bgzf_open(path.c_str(), "r");
}

// Why a record's name or header cannot be kept: it is not UTF-8 (names and descriptions are stored
// as UTF-8 strings); "" when it is.
std::string not_utf8(std::string_view text, const char* what) {
  const size_t bad = first_invalid_utf8(text);
  if (bad == std::string_view::npos) return "";
  return std::string(what) + " is not UTF-8 text (byte " + hex_byte((unsigned char)text[bad]) +
         "); names and descriptions are stored as UTF-8: convert the headers, e.g. iconv -f "
         "latin1 -t utf-8";
}

// Splits a header line (without its '>' or '@') samtools-style: blanks before the name are
// skipped (htslib's faidx does: `> chr1 x` is chr1), the name ends at the next whitespace; the
// description is the rest after that whitespace run, as the user wrote it (trailing blanks
// too, as htslib's kseq keeps them; a line's '\r' is gone before this).
void split_header(std::string_view text, std::string& name, std::string& description) {
  size_t s = 0;
  while (s < text.size() && is_space(text[s])) ++s;
  size_t i = s;
  while (i < text.size() && !is_space(text[i])) ++i;
  name.assign(text.substr(s, i - s));
  while (i < text.size() && is_space(text[i])) ++i;
  description.assign(text.substr(i));
}

// Why a file whose first line is `line` is not FASTA/FASTQ though it may start like it (a SAM
// header starts with '@'; a byte-order mark hides the '>'), or "".
// `compressed`: the file was decompressed (gzip or bgzip) to give `line`.
std::string not_fastx_reason(std::string_view line, bool compressed) {
  auto starts = [&](std::string_view magic) { return line.substr(0, magic.size()) == magic; };
  const char* convert =
      "convert it to FASTA/FASTQ first, e.g. `samtools fasta FILE > FILE.fa` (or `samtools "
      "fastq`)";
  if (starts("\x1F\x8B") && compressed)
    return "the decompressed data is gzip again: the file was compressed twice (gzip of a .gz "
           "file?); undo one, e.g. `zcat FILE | zcat | bgzip > NEW.fa.gz`";
  if (starts("\x1F\x8B"))  // read as plain text: its gzip header is incomplete
    return "gzip's magic bytes (1F 8B), but no gzip data could be read: the file is cut short "
           "(an interrupted download or copy?) or damaged; fetch it again (gzip -t FILE checks "
           "one)";
  if (starts("\xEF\xBB\xBF"))
    return "the file starts with a UTF-8 byte-order mark (EF BB BF), which FASTA, FASTQ and "
           "faidx indexes do not allow: remove it, e.g. " +
           rewrite_advice("sed '1s/^\\xEF\\xBB\\xBF//'", compressed);
  // @HD, @SQ, @RG and @PG lines go on with TAG:VALUE fields (a read named RG with a tab
  // before its description does not); @CO with free text.
  auto field = [&](size_t i) {
    return line.size() > i + 2 && std::isalpha((unsigned char)line[i]) &&
           std::isalnum((unsigned char)line[i + 1]) && line[i + 2] == ':';
  };
  for (const char* tag : {"@HD\t", "@SQ\t", "@RG\t", "@PG\t", "@CO\t"})
    if (starts(tag) && (tag[1] == 'C' || field(4)))
      return std::string("a SAM file (its header line ") + std::string(tag, 3) +
             " ...), not FASTQ: " + convert;
  if (starts("BAM\x01")) return std::string("a BAM file, not FASTA/FASTQ: ") + convert;
  if (starts("CRAM")) return std::string("a CRAM file, not FASTA/FASTQ: ") + convert;
  return "";
}

// What a first line that is not FASTA/FASTQ looks like instead, as advice ("" when unknown):
// compressed by a program htslib does not read, SAM records without a header, or a CSV table (a
// time series for a DNA model).
std::string not_fasta_advice(std::string_view line) {
  auto starts = [&](std::string_view magic) { return line.substr(0, magic.size()) == magic; };
  if (const OtherCompression z = other_compression(line); *z.name)
    return std::string(" (the file is ") + z.name +
           "-compressed, which sparsa does not read: recompress it, e.g. `" + z.cat +
           " FILE | bgzip > FILE.fa.gz`; plain, gzip and bgzip are read)";
  // SAM without a header: 11 or more tab-separated fields, the second a number (the flag).
  if (std::count(line.begin(), line.end(), '\t') >= 10) {
    const size_t a = line.find('\t'), b = line.find('\t', a + 1);
    const std::string_view flag = line.substr(a + 1, b - a - 1);
    if (!flag.empty() && flag.find_first_not_of("0123456789") == std::string_view::npos)
      return " (SAM alignment records: convert them to FASTA/FASTQ first, e.g. `samtools fasta "
             "FILE > FILE.fa`)";
  }
  if (starts("\xFF\xFE") || starts("\xFE\xFF"))
    return " (UTF-16 text: convert it to UTF-8 first, e.g. `iconv -f UTF-16 -t UTF-8 FILE > "
           "NEW.fa`)";
  if (hdf5_signature(line))
    return " (an HDF5 file, such as a sparsa checkpoint or embeddings file: --input takes "
           "FASTA/FASTQ, plain or gzip-compressed)";
  if (starts("\x7F"
             "ELF"))
    return " (an executable program, not FASTA/FASTQ)";
  // Binary data: a control byte other than a tab or CR (a NUL among them). Bytes that are not
  // UTF-8 alone are not binary: a Latin-1 table is still a table.
  if (std::any_of(line.begin(), line.end(), [](char c) {
        return (unsigned char)c < 0x20 && c != '\t' && c != '\r' && c != '\n';
      }))
    return " (binary data, not FASTA/FASTQ text)";
  if (line.find(',') != std::string_view::npos || line.find('\t') != std::string_view::npos)
    return " (it looks like a table: a time-series CSV needs a time-series model, and this one "
           "is a DNA model)";
  return "";
}

// Whether a bgzip file is BGZF blocks end to end (each header's BSIZE leads to the next): true
// for one cut exactly at a block boundary, false where other bytes follow the blocks (zero
// padding, another file appended) or a block is cut short. `gzip_at`: where given, the byte
// where a gzip member that is not BGZF follows one or more blocks (a plain gzip file appended:
// `cat a.fa.bgz b.fa.gz`), or -1.
bool bgzf_blocks_fill_file(const std::string& path, long long* gzip_at = nullptr) {
  if (gzip_at) *gzip_at = -1;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  long long at = 0;
  bool gzip_next = false;
  unsigned char h[18];
  while (true) {
    const size_t got = std::fread(h, 1, sizeof h, f);
    if (got == 0 && std::feof(f)) break;  // the last block ended at the file's end
    // gzip magic, deflate, FEXTRA; XLEN 6 with the "BC" subfield of length 2: BSIZE at 16
    if (got < sizeof h || h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 || !(h[3] & 4) ||
        h[12] != 'B' || h[13] != 'C') {
      gzip_next = got >= 3 && h[0] == 0x1f && h[1] == 0x8b && h[2] == 8;
      break;
    }
    at += (long long)(h[16] | (h[17] << 8)) + 1;
    if (std::fseek(f, (long)at, SEEK_SET) != 0) break;
  }
  std::fclose(f);
  std::error_code ec;  // (the file's own size: a seek past its end succeeds)
  const auto size = std::filesystem::file_size(path, ec);
  if (gzip_at && gzip_next && !ec && at > 0 && at < (long long)size) *gzip_at = at;
  return !ec && (long long)size == at;
}

// Whether a file whose BGZF blocks stop at `gzip_at` is whole bgzip (its blocks end with the
// 28-byte end-of-file block) then whole gzip members to the file's last byte (zlib's gzread
// ignores bytes after the last member; this does not).
bool whole_bgzip_then_gzip(const std::string& path, long long gzip_at) {
  static const unsigned char kEof[28] = {0x1f, 0x8b, 8,    4, 0, 0, 0, 0, 0, 0xff, 6, 0, 0x42, 0x43,
                                         2,    0,    0x1b, 0, 3, 0, 0, 0, 0, 0,    0, 0, 0,    0};
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  unsigned char tail[28];
  bool ok = gzip_at >= 28 && std::fseek(f, (long)(gzip_at - 28), SEEK_SET) == 0 &&
            std::fread(tail, 1, 28, f) == 28 && std::memcmp(tail, kEof, 28) == 0;
  z_stream z{};
  if (ok) ok = inflateInit2(&z, 15 + 16) == Z_OK;  // (gzip wrapper)
  if (ok) {
    std::vector<unsigned char> in(1 << 16), out(1 << 16);
    bool in_member = false;
    for (;;) {
      if (z.avail_in == 0) {
        z.avail_in = (uInt)std::fread(in.data(), 1, in.size(), f);
        z.next_in = in.data();
        if (z.avail_in == 0) break;  // the end of the file: whole only between members
      }
      z.next_out = out.data();
      z.avail_out = (uInt)out.size();
      in_member = true;
      const int r = inflate(&z, Z_NO_FLUSH);
      if (r == Z_STREAM_END) {
        in_member = false;
        inflateReset(&z);
      } else if (r != Z_OK && r != Z_BUF_ERROR) {
        in_member = true;  // bytes that are not gzip (zero padding, another kind of file)
        break;
      }
    }
    ok = !in_member && std::ferror(f) == 0;
    inflateEnd(&z);
  }
  std::fclose(f);
  return ok;
}

// Where a gzip or bgzip file stops decompressing, said for a message: htslib's reader drops the
// partly decompressed block where it fails (up to 64 KB of text), so zlib streams the file
// again here, as far as it goes. "" when zlib reads it whole (the damage is htslib's to say).
// `whole_too`: also say so where zlib reads the data whole (htslib then stopped at bytes after it).
// `lines_out`: where given, the lines that decompress.
std::string gzip_damage(const std::string& path, bool whole_too, long long* lines_out = nullptr) {
  gzFile z = gzopen(path.c_str(), "rb");
  if (!z) return "";
  // Small reads through a small buffer: a read that fails returns none of the bytes zlib
  // decompressed for it (up to twice the buffer), so the count is short by 1 KB at most.
  gzbuffer(z, 512);
  std::vector<char> buf(512);
  long long lines = 0, bytes = 0;
  int n = 0;
  while ((n = gzread(z, buf.data(), (unsigned)buf.size())) > 0) {
    bytes += n;
    lines += std::count(buf.data(), buf.data() + n, '\n');
  }
  int code = Z_OK;
  const char* msg = gzerror(z, &code);
  const bool cut = code == Z_BUF_ERROR;  // the input ended inside the compressed stream
  std::string why = msg && *msg ? msg : "unknown error";
  if (why.starts_with(path + ": ")) why.erase(0, path.size() + 2);
  gzclose(z);
  if (lines_out) *lines_out = lines;
  if (n == 0 && code == Z_OK && !whole_too) return "";
  long long gzip_at = -1;
  if (n == 0 && code == Z_OK && !bgzf_blocks_fill_file(path, &gzip_at) && gzip_at >= 0)
    return "a plain gzip part follows the bgzip blocks at byte " + std::to_string(gzip_at) +
           " (files joined with cat?), but the bgzip part before it lacks its end-of-file "
           "block (cut short?) or bytes follow the last gzip part (" +
           std::to_string(lines) +
           " lines decompress): recompress it from whole parts (zcat FILE | bgzip > NEW.gz)";
  if (n == 0 && code == Z_OK)  // zlib reads it whole: htslib stopped at bytes after the data
    return "the compressed data ends after line " + std::to_string(lines) + " (" +
           std::to_string(bytes) +
           " bytes, all of it), but bytes follow that are not gzip data (zero padding, or "
           "another file appended?), which htslib does not read: recompress it (zcat FILE | "
           "bgzip > NEW.gz)";
  const std::string read =
      lines > 0 ? "lines 1 to " + std::to_string(lines) + " (" + std::to_string(bytes) +
                      " bytes) decompress, "
                : "no whole line decompresses (" + std::to_string(bytes) + " bytes), ";
  return read + (cut ? "then the file ends inside the compressed data: it was cut short (an "
                       "interrupted download or copy?); fetch it again"
                     : "then the compressed data is corrupt (zlib: " + why +
                           "); fetch it again or recompress it from the source");
}

// Reads lines from a BGZF handle (plain, gzip or bgzip), counting them and dropping every '\r'
// (spec 1: line breaks and '\r' are not sequence), so CRLF files read exactly like LF files
// (bgzf_getline drops only one '\r').
class LineReader {
 public:
  explicit LineReader(const std::string& path) : path_(path) {
    fp_ = open_bgzf(path);
    if (!fp_) throw InputError(path + ": cannot open: " + std::strerror(errno));
    // Said before any record is embedded: at the file's end it came after every record.
    if (end_marker_missing()) {
      bgzf_close(fp_);
      fp_ = nullptr;
      throw no_end_marker();
    }
  }
  ~LineReader() {
    if (fp_) bgzf_close(fp_);
    std::free(ks_.s);
  }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // A bgzip file without its end-of-file marker, but for one whose BGZF blocks are followed by
  // gzip that zlib reads to the end (`cat a.fa.bgz b.fa.gz`): htslib reads that whole, and its
  // last member, read whole, shows it was not cut.
  bool end_marker_missing() {
    if (bgzf_compression(fp_) != 2 || bgzf_check_EOF(fp_) != 0) return false;
    long long gzip_at = -1;
    return bgzf_blocks_fill_file(path_, &gzip_at) || gzip_at < 0 ||
           !whole_bgzip_then_gzip(path_, gzip_at);
  }

  // A bgzip file whose end-of-file marker is missing: cut inside a block (zlib says where), or
  // exactly at a block boundary, which decompresses cleanly and looks just like a whole file.
  InputError no_end_marker() const {
    long long lines = 0;
    if (const std::string z = gzip_damage(path_, false, &lines); !z.empty())
      return InputError(path_ +
                        ": truncated or corrupt compressed data (bgzip end marker "
                        "missing): " +
                        z);
    if (!bgzf_blocks_fill_file(path_))  // bytes after the blocks: zlib says how many lines
      return InputError(
          joined(path_, "truncated or corrupt compressed data", gzip_damage(path_, true)));
    return InputError(
        path_ + ": the bgzip end-of-file marker is missing: lines 1 to " + std::to_string(lines) +
        " decompress cleanly, but a file cut at a block boundary looks just like this, so "
        "the records may go on past them (samtools says \"EOF marker is absent\" of it). "
        "Fetch or copy the file again; if it is known to be whole, compress it again "
        "(zcat FILE | bgzip > NEW)");
  }

  // "FILE: WHAT: WHY", but "FILE: WHY" where WHY says a gzip file follows bgzip blocks (the file
  // is neither truncated nor corrupt).
  static std::string joined(const std::string& file, const char* what, const std::string& why) {
    return file + ": " + (why.starts_with("a plain gzip part") ? "" : std::string(what) + ": ") +
           why;
  }

  // Next line into `line` (valid until the next call); false at the end of the file.
  bool next(std::string_view& line) {
    int r = bgzf_getline(fp_, '\n', &ks_);
    // Said as what could be read: compressed data comes in blocks, so the damage is somewhere
    // after the last line read, not necessarily on the next one.
    auto damaged = [&](const char* what) {
      const bool compressed = bgzf_compression(fp_) > 0;  // (else a read error: not zlib's)
      if (const std::string z = compressed ? gzip_damage(path_, true) : ""; !z.empty())
        return InputError(joined(path_, what, z));
      return InputError(path_ + ": " + what + ": " +
                        (line_no_ > 0 ? "lines 1 to " + std::to_string(line_no_) +
                                            " were read, the rest cannot be"
                                      : std::string("nothing could be read")));
    };
    // A read that fails inside a line returns the part before the failed block as if it were a
    // whole line (htslib drops the block: up to 64 KB), the error only in the handle's errcode:
    // checked here, before that part is taken for a line.
    if (r < -1 || (r >= 0 && fp_->errcode != 0))
      throw damaged("truncated or corrupt compressed data");
    if (r == -1) {
      // A bgzip file cut exactly at a block boundary decompresses cleanly; only the missing
      // end-of-file marker tells that records were lost.
      // (The constructor checks it first; this is for a file that changed since.)
      if (end_marker_missing()) throw no_end_marker();
      return false;
    }
    ++line_no_;
    size_t n = ks_.l;
    while (n > 0 && ks_.s[n - 1] == '\r') --n;
    inner_cr_ = std::memchr(ks_.s, '\r', n) != nullptr;
    if (inner_cr_) {  // a '\r' inside the line is not sequence either
      size_t k = 0;
      for (size_t i = 0; i < n; ++i)
        if (ks_.s[i] != '\r') ks_.s[k++] = ks_.s[i];
      n = k;
    }
    line = std::string_view(ks_.s, n);
    return true;
  }
  long long line_no() const { return line_no_; }
  BGZF* handle() { return fp_; }
  // gzip or bgzip (the advice to rewrite the file goes through zcat)
  bool compressed() { return bgzf_compression(fp_) > 0; }
  // Whether the last line had a '\r' inside it (dropped from `line`): in a header, lines that
  // end in a lone CR (classic Mac OS) made the whole file one line.
  bool inner_cr() const { return inner_cr_; }

 private:
  std::string path_;
  BGZF* fp_ = nullptr;
  kstring_t ks_ = {0, 0, nullptr};
  long long line_no_ = 0;
  bool inner_cr_ = false;
};

// A header line with a '\r' inside: refused (the name would silently lose it; a classic Mac file
// of lone-CR line ends reads as one header holding the whole file).
void refuse_inner_cr(const std::string& path, long long line_no, bool inner_cr, bool compressed) {
  if (inner_cr)
    throw InputError(at_line(path, line_no,
                             "a header line holds a carriage return (\\r) inside it: lines end in "
                             "a lone CR (classic Mac OS)? Convert them first: " +
                                 rewrite_advice("tr '\\r' '\\n'", compressed)));
}

// A NUL byte in a header or BED line: HDF5's string attributes and faidx's index end a name
// there, so two names would be cut to one (a repeat that no check sees) and descriptions short.
void refuse_nul(const std::string& path, long long line_no, std::string_view text,
                const char* what) {
  if (const size_t at = text.find('\0'); at != std::string_view::npos)
    throw InputError(at_line(path, line_no,
                             std::string(what) + " holds a NUL byte (0x00) at column " +
                                 std::to_string(at + 1) +
                                 ": binary data or a damaged file? Names and descriptions end "
                                 "there in HDF5 and in a faidx index, so it is refused"));
}

}  // namespace

int32_t dna_token(unsigned char c) { return kTokenTable[c]; }

void reverse_complement(std::vector<int32_t>& tokens) {
  std::reverse(tokens.begin(), tokens.end());
  for (auto& t : tokens) {
    // A(3)<->T(6), C(4)<->G(5): the pairs sum to 9. N, PAD and MASK stay.
    if (t >= kTokA && t <= kTokT) t = 9 - t;
  }
}

// ---------------------------------------------------------------------------------------------
// FastxReader

struct FastxReader::Impl {
  enum class Format { kUnknown, kFasta, kFastq };
  std::string path;
  DnaReadOptions opts;
  LineReader lines;
  Format format = Format::kUnknown;
  // FASTA records end at the next header, which is kept here for the following record.
  bool have_header = false;
  std::string header;  // without the leading '>' / '@'
  long long header_line = 0;
  // Record names seen: FASTA's whole (a repeat is an error, so it must be exact); a read set's as
  // 64-bit hashes (a repeat only warns, and a FASTQ of 100M reads would hold ~10 GB of names: a
  // false warning needs two names with one hash, about 1 in 4,000 runs at 10^8 reads).
  std::unordered_set<std::string> seen;
  std::unordered_set<size_t> seen_hashes;

  Impl(const std::string& p, DnaReadOptions o) : path(p), opts(o), lines(p) {}

  // Skips empty lines and lines of blanks alone; false at the end of the file.
  bool next_nonempty(std::string_view& line) {
    while (lines.next(line))
      if (!trim_blanks(line).empty()) return true;
    return false;
  }

  void detect_format() {
    std::string_view line;
    if (!next_nonempty(line)) throw InputError(path + ": empty file: no FASTA/FASTQ records");
    if (const std::string why = not_fastx_reason(line, lines.compressed()); !why.empty())
      throw InputError(at_line(path, lines.line_no(), why));
    if (line[0] == '>') {
      format = Format::kFasta;
    } else if (line[0] == '@') {
      format = Format::kFastq;
    } else {
      throw InputError(at_line(path, lines.line_no(),
                               "not FASTA/FASTQ: expected '>' or '@' before any sequence, found " +
                                   show_char((unsigned char)line[0]) + not_fasta_advice(line)));
    }
    keep_header(line);
  }

  void keep_header(std::string_view line) {
    refuse_inner_cr(path, lines.line_no(), lines.inner_cr(), lines.compressed());
    refuse_nul(path, lines.line_no(), line, "the header line");
    header.assign(line.substr(1));
    header_line = lines.line_no();
    have_header = true;
  }

  // Fills name/description from the kept header and checks the name.
  void start_record(Record& rec) {
    rec = Record{};
    split_header(header, rec.name, rec.description);
    rec.source = path;
    if (rec.name.empty())
      throw InputError(at_line(path, header_line, "header with an empty record name"));
    if (const std::string why = not_utf8(header, "header"); !why.empty())
      throw InputError(at_line(path, header_line, why));
    const bool repeated = format == Format::kFastq
                              ? !seen_hashes.insert(std::hash<std::string>{}(rec.name)).second
                              : !seen.insert(rec.name).second;
    if (repeated) {
      // A read set may repeat a name (an interleaved paired-end FASTQ gives both mates one
      // name): embedded, each under its own key, with a warning. A FASTA reference may not.
      if (format == Format::kFastq)
        rec.warning = where(path, rec.name, 0,
                            "line " + std::to_string(header_line) +
                                ": the name repeats an earlier read's (interleaved pairs?); both "
                                "are embedded, each under its own key (NNNNNN_name: its index "
                                "in the input first)");
      else
        throw InputError(where(path, rec.name, 0,
                               "duplicate record name (line " + std::to_string(header_line) +
                                   "): a FASTA's names must be unique (faidx would keep only "
                                   "the first under that name)"));
    }
  }

  bool next_fasta(Record& rec) {
    if (!have_header) return false;
    start_record(rec);
    have_header = false;
    const int64_t own_header = header_line;  // (keep_header below takes the next record's)
    std::string_view line;
    InvalidTally tally;
    tally.compressed = lines.compressed();
    while (lines.next(line)) {
      if (!line.empty() && line[0] == '>') {
        keep_header(line);
        break;
      }
      append_tokens(line, (int64_t)rec.tokens.size() + 1, opts.invalid_as_n, path, rec.name,
                    rec.tokens, tally, lines.line_no());
    }
    rec.warning = tally.warning(path, rec.name, rec.warning);
    rec.read_as_n = tally.count;
    if (rec.tokens.empty())
      throw InputError(
          where(path, rec.name, 0,
                "empty record: no sequence (line " + std::to_string(own_header) +
                    "); drop empty records first, e.g. `seqkit seq -m 1 FILE > NEW.fa`"));
    return true;
  }

  // Standard 4-line FASTQ: '@name desc', sequence, '+' [name], quality of the same length.
  bool next_fastq(Record& rec) {
    if (!have_header) {
      std::string_view line;
      if (!next_nonempty(line)) return false;
      if (line[0] != '@')
        throw InputError(at_line(
            path, lines.line_no(),
            "malformed FASTQ: expected an '@' header" +
                (prev_fastq_name.empty()
                     ? std::string()
                     : " after record '" + prev_fastq_name +
                           "' (a sequence or quality string wrapped over several lines? FASTQ "
                           "is read as four lines a record; join wrapped lines first, e.g. "
                           "`seqtk seq FILE`)")));
      keep_header(line);
    }
    have_header = false;
    start_record(rec);
    auto need_line = [&](std::string_view& line, const char* what) {
      if (!lines.next(line))
        throw InputError(at_line(path, lines.line_no() + 1,
                                 "record '" + rec.name + "': truncated FASTQ record (the file " +
                                     "ends): missing " + what));
    };
    std::string_view line;
    need_line(line, "sequence line");
    InvalidTally tally;
    tally.fastq = true;
    tally.compressed = lines.compressed();
    append_tokens(line, 1, opts.invalid_as_n, path, rec.name, rec.tokens, tally, lines.line_no());
    rec.warning = tally.warning(path, rec.name, rec.warning);
    rec.read_as_n = tally.count;
    if (rec.tokens.empty())
      throw InputError(
          where(path, rec.name, 0,
                "empty record: no sequence (line " + std::to_string(lines.line_no()) +
                    "); reads trimmed to nothing? Drop them first, e.g. `seqkit seq -m 1 "
                    "FILE > NEW.fq` (or cutadapt's -m 1)"));
    need_line(line, "'+' line");
    if (line.empty() || line[0] != '+') {
      // A second line of bases: a multi-line FASTQ, which is read only through --region (faidx).
      const bool bases = !line.empty() && std::all_of(line.begin(), line.end(), [](char c) {
        return kTokenTable[(unsigned char)c] >= 0;
      });
      throw InputError(at_line(path, lines.line_no(),
                               "malformed FASTQ record '" + rec.name + "': expected a '+' line" +
                                   (bases ? " (a second sequence line: FASTQ is read as four "
                                            "lines a record; join wrapped lines first, e.g. "
                                            "`seqtk seq FILE`)"
                                          : "")));
    }
    // (Blanks at the ends of the '+' line or the header do not make it another record's.)
    // The '+' line may repeat the name, with any description (samtools reads those too).
    std::string plus_name, plus_description;
    split_header(line.substr(1), plus_name, plus_description);
    if (!plus_name.empty() && plus_name != rec.name)
      throw InputError(
          at_line(path, lines.line_no(),
                  "malformed FASTQ record '" + rec.name + "': the '+' line names another record"));
    need_line(line, "quality line");
    // Phred+33 (and the old +64) qualities are '!' to '~': any other byte (a space, a tab, a
    // control or non-ASCII byte) is a damaged or mis-converted file, not a quality. A non-ASCII
    // byte is named before a length that differs (a terminal shows fewer characters).
    const int64_t qlen = (int64_t)line.size(), slen = (int64_t)rec.tokens.size();
    const long long qline = lines.line_no();
    const auto bad = std::find_if(line.begin(), line.end(), [](char c) {
      return (unsigned char)c < '!' || (unsigned char)c > '~';
    });
    if (bad != line.end() && (qlen == slen || (unsigned char)*bad >= 0x80)) {
      const size_t i = (size_t)(bad - line.begin());
      throw InputError(where(path, rec.name, (long long)i + 1,
                             "quality character " + show_char((unsigned char)*bad) + " at line " +
                                 std::to_string(qline) + ", column " + std::to_string(i + 1) +
                                 " is not a FASTQ quality ('!' to '~'); the file is damaged or "
                                 "was converted wrongly"));
    }
    if (qlen != slen) {
      std::string_view after;
      // The last line, short: the file was cut, or the line was written short (a cut file may
      // end at a line's end as well: said both ways).
      if (qlen < slen && !lines.next(after))
        throw InputError(at_line(
            path, qline,
            "record '" + rec.name + "': truncated FASTQ record (the file ends after " +
                std::to_string(qlen) + " of its " + std::to_string(slen) +
                " quality characters): an interrupted download or copy (fetch it again), or a "
                "quality line written short (quality length " +
                std::to_string(qlen) + ", sequence length " + std::to_string(slen) + ")"));
      throw InputError(where(path, rec.name, 0,
                             "quality length " + std::to_string(qlen) +
                                 " differs from sequence length " + std::to_string(slen) +
                                 " (line " + std::to_string(qline) + ")"));
    }
    prev_fastq_name = rec.name;
    return true;
  }
  std::string prev_fastq_name;  // the last FASTQ record read, for the next header's message
};

FastxReader::FastxReader(const std::string& path, DnaReadOptions opts)
    : impl_(std::make_unique<Impl>(path, opts)) {
  impl_->detect_format();
}

FastxReader::~FastxReader() = default;

bool FastxReader::fastq() const { return impl_->format == Impl::Format::kFastq; }

bool FastxReader::next(Record& rec) {
  return impl_->format == Impl::Format::kFasta ? impl_->next_fasta(rec) : impl_->next_fastq(rec);
}

// ---------------------------------------------------------------------------------------------
// Regions

namespace {

// Parses a non-negative integer with optional thousands commas; false on anything else. With
// `suffixes` (regions, as htslib's hts_parse_decimal reads them for samtools), a k, M or G suffix
// (any case) multiplies by 10^3, 10^6 or 10^9, after an optional fraction: 1.5k is 1500; a
// fraction that does not come out whole (1.2345k) is refused rather than cut, and `not_whole`
// (where given) gets the number it is ("1234.5") for the message.
bool parse_count(std::string_view s, int64_t& out, bool suffixes = false,
                 std::string* not_whole = nullptr) {
  int scale = 0;
  if (suffixes && !s.empty()) {
    const char last = s.back();
    scale = last == 'k' || last == 'K'   ? 3
            : last == 'm' || last == 'M' ? 6
            : last == 'g' || last == 'G' ? 9
                                         : 0;
    if (scale) s.remove_suffix(1);
  }
  std::string digits, frac;
  bool point = false;
  for (char c : s) {
    if (c == ',' && !point) continue;
    if (c == '.' && scale && !point) {
      point = true;
      continue;
    }
    if (c < '0' || c > '9') return false;
    (point ? frac : digits) += c;
  }
  if (digits.empty() && frac.empty()) return false;
  while (!frac.empty() && frac.back() == '0') frac.pop_back();
  auto without_leading_zeros = [](const std::string& d) {
    const size_t first = d.find_first_not_of('0');
    return first == std::string::npos ? std::string("0") : d.substr(first);
  };
  if ((int)frac.size() > scale) {  // not a whole number of bases
    if (not_whole)
      *not_whole = without_leading_zeros(digits + frac.substr(0, scale)) + "." + frac.substr(scale);
    return false;
  }
  digits = without_leading_zeros(digits + frac + std::string(scale - frac.size(), '0'));
  if (digits.size() > 18) return false;  // 18 digits cannot overflow int64
  out = std::stoll(digits);
  return true;
}

// Strict integer (optional leading '-') for BED columns.
bool parse_int(std::string_view s, int64_t& out) {
  bool neg = !s.empty() && s[0] == '-';
  std::string_view d = neg ? s.substr(1) : s;
  if (d.empty() || d.find(',') != std::string_view::npos || !parse_count(d, out)) return false;
  if (neg) out = -out;
  return true;
}

}  // namespace

bool parse_token_count(std::string_view s, int64_t& out) { return parse_count(s, out, true); }

std::string fractional_count(std::string_view s) {
  int64_t unused = 0;
  std::string not_whole;
  parse_count(s, unused, true, &not_whole);
  return not_whole;
}

RegionSpec parse_region(const std::string& text, const std::vector<std::string>& known_names) {
  RegionSpec r;
  r.text = text;
  auto bad = [&](const std::string& why) {
    return ConfigError("region '" + text + "': " + why +
                       " (expected NAME, NAME:START, NAME:START-END or NAME:-END, 1-based; "
                       "{NAME} or {NAME}:START-END for a name holding ':')");
  };
  if (text.empty()) throw bad("empty region");
  auto known = [&](std::string_view n) {
    return std::find(known_names.begin(), known_names.end(), n) != known_names.end();
  };
  // The range after the name's ':' (begin, end as in RegionSpec); false where it is not one.
  auto parse_range = [&](std::string_view range, bool strict) {
    auto no = [&](const char* why) {  // strict: the region's error; else "not a range"
      if (strict) throw bad(why);
      return false;
    };
    const size_t dash = range.find('-');
    int64_t start = 1, end = -1;
    // "NAME:-END" starts at 1 and "NAME:START-" runs to the record's end, as samtools reads them.
    // (a fraction of k, M or G that is not whole is said as the number it is: 1.5001k = 1500.1)
    auto bad_count = [&](const char* what, std::string_view count) {
      const std::string f = fractional_count(count);
      if (strict && !count.empty() && std::all_of(count.begin(), count.end(), [](char c) {
            return c >= '0' && c <= '9';
          }))  // digits alone that do not parse: too large for any sequence
        throw bad(std::string(what) + ": " + std::string(count) + " is past any sequence's length");
      if (f.empty() || !strict) return no(what);
      throw bad(std::string(what) + ": '" + std::string(count) + "' is " + f +
                ", not a whole number of bases");
    };
    if (dash != 0 && !parse_count(range.substr(0, dash), start, true))
      return bad_count("bad start", range.substr(0, dash));
    if (dash != std::string_view::npos && dash + 1 < range.size() &&
        !parse_count(range.substr(dash + 1), end, true))
      return bad_count("bad end", range.substr(dash + 1));
    if (dash == 0 && end == -1) return no("bad end");
    if (start < 1) return no("start must be >= 1");
    if (end != -1 && end < start) return no("end is before start");
    r.begin = start - 1;
    r.end = end;
    return true;
  };
  // {NAME} or {NAME}:RANGE (htslib's syntax): the name as written, ':' and all.
  if (text.front() == '{') {
    const size_t close = text.find('}');
    if (close == std::string::npos || close == 1) throw bad("'{' without a name and '}'");
    r.name = text.substr(1, close - 1);
    if (close + 1 == text.size()) return r;
    if (text[close + 1] != ':') throw bad("'}' must end the region or be followed by ':'");
    parse_range(std::string_view(text).substr(close + 2), true);
    return r;
  }
  const size_t colon = text.rfind(':');
  // As htslib does: a record whose whole name is the text is that record, unless the text also
  // reads as a range of another record: then it is ambiguous and refused (samtools faidx too).
  if (known(text)) {
    RegionSpec other = r;
    if (colon != std::string::npos && colon > 0 && known(std::string_view(text).substr(0, colon)) &&
        parse_range(std::string_view(text).substr(colon + 1), false)) {
      const std::string prefix = text.substr(0, colon);
      throw bad("ambiguous: a record is named '" + text + "', and record '" + prefix +
                "' has that range; write {" + text + "} for the first or {" + prefix +
                "}:" + text.substr(colon + 1) + " for the second");
    }
    r = other;
    r.name = text;
    return r;
  }
  if (colon == std::string::npos) {
    r.name = text;
    return r;
  }
  r.name = text.substr(0, colon);
  if (r.name.empty()) throw bad("empty record name");
  parse_range(std::string_view(text).substr(colon + 1), true);
  // A name holding ':' and a lone start after it: an allele missing from the file
  // (HLA-A*01:01:01:02 beside HLA-A*01:01:01) is read as another one's bases from there to its
  // end, as samtools reads it: warned about (the braces say it where it is meant).
  const std::string range = text.substr(colon + 1);
  if (r.name.find(':') != std::string::npos && range.find('-') == std::string::npos &&
      known(r.name))
    r.warning = "region '" + text + "': no record is named '" + text +
                "', so it is read as record '" + r.name + "' from base " + range +
                " to its end, as samtools reads it (a missing allele?); {" + r.name + "}:" + range +
                "- says that without this warning";
  return r;
}

std::vector<RegionSpec> read_bed(const std::string& path, std::vector<long long>* empty_lines) {
  std::vector<RegionSpec> out;
  LineReader lines(path);  // BGZF also lets bed.gz work
  std::string_view line;
  while (lines.next(line)) {
    const long long ln = lines.line_no();
    // A byte-order mark (a BED saved by a Windows editor) would become part of the first name.
    if (ln == 1 && line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);
    refuse_nul(path, ln, line, "the BED line");
    std::vector<std::string_view> cols;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && is_space(line[i])) ++i;
      size_t j = i;
      while (j < line.size() && !is_space(line[j])) ++j;
      if (j > i) cols.push_back(line.substr(i, j - i));
      i = j;
    }
    if (cols.empty() || cols[0][0] == '#' || cols[0] == "track" || cols[0] == "browser") continue;
    if (cols[0][0] == '>' || cols[0][0] == '@')
      throw InputError(at_line(path, ln,
                               "a FASTA/FASTQ header, not a BED line: --regions takes a BED file "
                               "(chrom, start, end a line); the sequences are --input"));
    // A line with tabs is read by its tab fields (BED's own separator): an empty field, as in
    // "chr1<TAB>2<TAB><TAB>10", is refused rather than read as the next column shifted into its
    // place (the whitespace split below would drop it and take 10 for the end).
    if (line.find('\t') != std::string_view::npos) {
      std::vector<std::string_view> fields;
      for (std::string_view rest = line;;) {
        const size_t tab = rest.find('\t');
        fields.push_back(trim_blanks(rest.substr(0, tab)));
        if (tab == std::string_view::npos) break;
        rest.remove_prefix(tab + 1);
      }
      static const char* const kColumn[] = {"chrom", "start", "end"};
      for (size_t k = 0; k < 3 && k < fields.size(); ++k)
        if (fields[k].empty())
          throw InputError(at_line(path, ln,
                                   "column " + std::to_string(k + 1) + " (" + kColumn[k] +
                                       ") is empty: two tabs in a row, or a tab before the first "
                                       "column?"));
      cols = std::move(fields);
    }
    if (cols.size() < 3)
      throw InputError(at_line(path, ln, "BED needs at least 3 columns (chrom start end)"));
    RegionSpec r;
    r.text = path + " line " + std::to_string(ln);  // names the BED line in messages
    r.name.assign(cols[0]);
    // (digits past int64's range are an integer too, just not a coordinate)
    auto not_int = [](std::string_view v) {
      const bool digits = !v.empty() && std::all_of(v.begin() + (v[0] == '-'), v.end(),
                                                    [](char ch) { return ch >= '0' && ch <= '9'; });
      return digits && v.size() > 1 ? " is past any sequence's length" : " is not an integer";
    };
    // A column-header line (`chrom start end`, as a spreadsheet writes it): BED has none
    if (!parse_int(cols[1], r.begin) && out.empty() &&
        std::none_of(cols[1].begin(), cols[1].end(),
                     [](char ch) { return ch >= '0' && ch <= '9'; }))
      throw InputError(at_line(path, ln,
                               "start '" + std::string(cols[1]) +
                                   "' is not an integer: a column-header line? BED has none; "
                                   "delete it or start it with '#'"));
    if (!parse_int(cols[1], r.begin))
      throw InputError(at_line(path, ln, std::string("start") + not_int(cols[1])));
    if (!parse_int(cols[2], r.end))
      throw InputError(at_line(path, ln, std::string("end") + not_int(cols[2])));
    if (r.begin < 0) throw InputError(at_line(path, ln, "start is negative"));
    if (r.end < r.begin) throw InputError(at_line(path, ln, "end must not be less than start"));
    if (r.end == r.begin) {
      if (empty_lines) empty_lines->push_back(ln);
      continue;
    }
    // The name column, stored as the record's region_name (UTF-8). BED is tab-separated, and a
    // name may hold spaces ("gene A"): with tabs on the line, cols are the tab fields.
    const std::string_view name = cols.size() >= 4 ? cols[3] : std::string_view();
    if (!name.empty() && name != ".") {
      r.label.assign(name);
      if (first_invalid_utf8(r.label) != std::string_view::npos)
        throw InputError(at_line(path, ln,
                                 "the name column is not UTF-8 text (it is stored as the "
                                 "record's region_name): convert the BED file, e.g. iconv -f "
                                 "latin1 -t utf-8"));
    }
    out.push_back(std::move(r));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// FaidxFetcher

// One line of a .fai (samtools' format): the record's length, the offset of its first base, the
// bases and bytes of a full line.
struct FaiEntry {
  int64_t length = 0, offset = -1, line_bases = 0, line_bytes = 0;
};

struct FaidxFetcher::Impl {
  std::string path;
  std::string fai_path, gzi_path;  // its index files (index_files: beside it, or in a cache)
  DnaReadOptions opts;
  faidx_t* fai = nullptr;
  bool fastq = false, bgzip = false;
  // From the .fai, as htslib loaded it: (hash of the name, offset of its line in the .fai), sorted,
  // 16 bytes a record whatever the index's size (a read set's index may hold millions), a line
  // read again when its record is first fetched; the records checked against the file, with their
  // descriptions.
  std::vector<std::pair<uint64_t, uint64_t>> fai_lines;
  std::map<std::string, std::string, std::less<>> descriptions;
  std::vector<int64_t> blocks;  // bgzip: the blocks' uncompressed starts (from the .gzi)
  bool blocks_read = false;     // (empty after reading: the .gzi is broken)
  // The file as check_fai_entry reads it, opened once (bgzip: its .gzi loaded once, not once a
  // record: a BED over many contigs of a bgzipped assembly reread the whole index each time).
  BGZF* check_fp = nullptr;
  bool check_opened = false, gzi_loaded = false;
  std::pair<std::string, int64_t> last_length{"", -1};  // record_length's last answer
  ~Impl() {
    if (fai) fai_destroy(fai);
    if (check_fp) bgzf_close(check_fp);
  }
};

namespace {

// Reads up to n bytes of the (uncompressed) file from offset pos. bgzip: seeks only to the
// start of a block (`blocks`: their uncompressed offsets, from the .gzi) and reads forward from
// there, because htslib asserts on a seek into a block past its end (a stale .gzi, or an offset
// past the end of the file). Returns the bytes read (fewer, or 0, at the end of the file), or -1
// when pos is past the end (`size`: the plain file's size; bgzip finds it by reading) or the data
// cannot be read.
ssize_t read_at(BGZF* fp, const std::vector<int64_t>* blocks, int64_t size, int64_t pos, char* buf,
                size_t n) {
  int64_t from = pos;
  if (blocks) {
    const auto it = std::upper_bound(blocks->begin(), blocks->end(), pos);
    from = it == blocks->begin() ? 0 : *(it - 1);
  } else if (pos > size) {
    return -1;
  }
  if (bgzf_useek(fp, (off_t)from, SEEK_SET) != 0) return -1;
  char skip[4096];
  for (int64_t left = pos - from; left > 0;) {
    const ssize_t got = bgzf_read(fp, skip, (size_t)std::min<int64_t>(left, sizeof skip));
    if (got <= 0) return -1;  // the file ends before pos
    left -= got;
  }
  return bgzf_read(fp, buf, n);
}

// The uncompressed offsets of a bgzip file's blocks, from its .gzi (a count, then pairs of
// compressed and uncompressed offsets, little-endian), with the first block's 0. Empty when the
// .gzi cannot be read or is not a sound index of `path` (its size, offsets that grow, blocks of
// at most 64 KB within the file): htslib asserts on a seek through a broken one.
std::vector<int64_t> gzi_block_starts(const std::string& path, const std::string& gzi_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto gzi_bytes = fs::file_size(gzi_path, ec);
  const auto file_bytes = ec ? 0 : fs::file_size(path, ec);
  std::ifstream in(gzi_path, std::ios::binary);
  uint64_t n = 0;
  if (ec || !in.read(reinterpret_cast<char*>(&n), 8) || gzi_bytes < 8 ||
      n != (gzi_bytes - 8) / 16 || (gzi_bytes - 8) % 16 != 0)
    return {};
  std::vector<int64_t> out;
  out.reserve(n + 1);
  out.push_back(0);
  uint64_t last_c = 0;
  for (uint64_t k = 0; k < n; ++k) {
    uint64_t pair[2];
    if (!in.read(reinterpret_cast<char*>(pair), 16)) return {};
    if (pair[0] <= last_c || pair[0] >= file_bytes || pair[1] <= (uint64_t)out.back() ||
        pair[1] - (uint64_t)out.back() > 65536)
      return {};
    last_c = pair[0];
    out.push_back((int64_t)pair[1]);
  }
  return out;
}

// What the file holds around a record that its .fai places at e.offset: the header line just
// before it (its name and description, spec 4's description of a region's record; not looked
// for past 64 KB) and, after the record's last base, a line end and then the next record's
// header (or, FASTQ, its '+' line) or the end of the file. `ok` is false where the file
// disagrees (it changed after the index was made), also where the index points past its end.
// `blocks`: a bgzip file's block starts (gzi_block_starts); null for a plain file.
struct FaiCheck {
  bool ok = true, header_found = false;
  std::string name, description;
};
// `fp`: the file, opened once by the fetcher; bgzip (`blocks`): `gzi_loaded` says whether its
// .gzi was loaded into fp.
FaiCheck check_fai_entry(const std::string& path, const FaiEntry& e, bool fastq,
                         const std::vector<int64_t>* blocks, BGZF* fp, bool gzi_loaded) {
  FaiCheck out;
  // An entry htslib cannot use (it divides by line_bases), or a bgzip record that reaches past
  // the blocks the .gzi lists (htslib asserts on a seek there), or a broken .gzi: no match.
  const int64_t full = e.line_bases > 0 ? (e.length - 1) / e.line_bases : 0;
  const int64_t after = e.offset + full * e.line_bytes + (e.length - full * e.line_bases);
  if (e.offset < 0 || e.length <= 0 || e.line_bases <= 0 || e.line_bytes < e.line_bases ||
      (blocks && (blocks->empty() || after > blocks->back() + 65536))) {
    out.ok = false;
    return out;
  }
  if (!fp) return out;  // (fetching fails on its own then)
  if (blocks && !gzi_loaded) {
    out.ok = false;
    return out;
  }
  std::error_code ec;
  const int64_t size = blocks ? 0 : (int64_t)std::filesystem::file_size(path, ec);
  for (int64_t window : {int64_t{4096}, int64_t{65536}}) {
    const int64_t start = std::max<int64_t>(0, e.offset - window);
    std::string buf((size_t)(e.offset - start), '\0');
    if (read_at(fp, blocks, size, start, buf.data(), buf.size()) != (ssize_t)buf.size() ||
        (!blocks && e.offset > size)) {
      out.ok = false;  // the index points past the end of the file
      break;
    }
    size_t end = buf.size();
    const bool line_ended = end > 0 && buf[end - 1] == '\n';
    while (end > 0 && (buf[end - 1] == '\n' || buf[end - 1] == '\r')) --end;
    const size_t nl = end == 0 ? std::string::npos : buf.rfind('\n', end - 1);
    if (line_ended && nl == std::string::npos && start > 0) continue;  // a longer header
    const size_t begin = nl == std::string::npos ? 0 : nl + 1;
    if (!line_ended || begin >= end || buf[begin] != (fastq ? '@' : '>')) {
      out.ok = false;  // the first base does not follow a header line
      break;
    }
    out.header_found = true;
    split_header(std::string_view(buf).substr(begin + 1, end - begin - 1), out.name,
                 out.description);
    break;
  }
  // The first of several lines: only bases, then its line end. htslib takes the record's bases a
  // line from this line's printable bytes, so a space or control byte here would pass the other
  // checks (later lines must match it byte for byte, the last may be shorter) and shift every
  // base fetched after it.
  if (out.ok && e.length > e.line_bases) {
    std::string line((size_t)e.line_bytes, '\0');
    if (read_at(fp, blocks, size, e.offset, line.data(), line.size()) != (ssize_t)line.size() ||
        line.back() != '\n') {
      out.ok = false;
    } else {
      size_t end = line.size() - 1;
      if (end > 0 && line[end - 1] == '\r') --end;
      for (size_t i = 0; i < end && out.ok; ++i)
        if (!std::isgraph((unsigned char)line[i])) out.ok = false;
    }
  }
  // The end: the byte after the last base ends a line, and what follows the line end (blank
  // lines skipped) is the next record's header, FASTQ's '+', or the end of the file.
  if (out.ok) {  // (`after`: past the last base, from the full lines before the last line)
    char buf[256];
    const ssize_t got = read_at(fp, blocks, size, after, buf, sizeof buf);
    if (got < 0) {
      out.ok = false;  // the record would end past the end of the file: it is shorter now
    } else {
      if (got > 0 && buf[0] != '\n' && buf[0] != '\r') out.ok = false;  // more bases: longer
      ssize_t i = 0;
      while (i < got && (buf[i] == '\n' || buf[i] == '\r')) ++i;
      if (i < got && buf[i] != (fastq ? '+' : '>')) out.ok = false;  // more lines: longer
    }
  }
  return out;
}

// The first place where a FASTA file breaks faidx's layout rule (every sequence line of a record
// but the last as long as the first; the last no longer), as "file: record 'X', line N: ...";
// "" if none is found. Only run to explain a failed index build.
std::string faidx_layout_error(const std::string& path) {
  try {
    LineReader lines(path);
    std::string_view line;
    std::string name;
    size_t width = 0;
    bool started = false;      // the record's first sequence line was seen (its length: width)
    long long short_line = 0;  // a line shorter than width, which must be the record's last
    size_t short_len = 0;
    while (lines.next(line)) {
      if (!line.empty() && line[0] == '>') {
        std::string description;
        split_header(line.substr(1), name, description);
        started = false;
        short_line = 0;
        continue;
      }
      const long long at = lines.line_no();
      auto fail = [&](long long n, const std::string& what) {
        return at_line(path, n,
                       "record '" + name + "': " + what +
                           "; faidx (--region) needs every sequence line of a record "
                           "but the last to be as long as the first (rewrap the file, "
                           "e.g. `seqtk seq -l 60`, or read it without --region)");
      };
      if (!started) {
        started = true, width = line.size();
        continue;
      }
      if (short_line != 0)
        return fail(short_line, "a line of " + std::to_string(short_len) +
                                    " bases before more sequence (lines of this record are " +
                                    std::to_string(width) + " long)");
      if (line.size() > width)
        return fail(at, "a line of " + std::to_string(line.size()) + " bases after lines of " +
                            std::to_string(width));
      if (line.size() < width) short_line = at, short_len = line.size();
    }
  } catch (const InputError&) {
  }
  return "";
}

// The first byte of record `name` (of any record: "") that is neither a base nor '\r' (a space, a
// tab, a control byte), as "file: record 'X': position P: ..."; "" if none. faidx counts only
// printable bytes as bases, so such a byte makes the index entry disagree with the file
// (check_fai_entry) or the index build fail, and a fetch would skip it, shifting every later
// position. Only run to explain those failures.
std::string non_base_in_record(const std::string& path, const std::string& name, bool fastq) {
  try {
    LineReader lines(path);
    std::string_view line;
    std::string at_name, description;
    // FASTQ: a header, sequence lines up to the '+' line, then quality lines until they are as
    // long as the sequence (a quality line may start with '@'); blank lines between records.
    enum { kHeader, kSequence, kQuality } state = kHeader;
    bool inside = false;
    int64_t pos = 0, quality = 0;  // bases of the record so far; its quality characters
    while (lines.next(line)) {
      const auto text_len = (int64_t)line.size() - (!line.empty() && line.back() == '\r');
      const bool header = fastq ? state == kHeader : !line.empty() && line[0] == '>';
      if (header) {
        if (line.empty()) continue;
        if (inside && !name.empty()) return "";  // the record ended clean
        if (fastq && line[0] != '@') return "";  // not the layout assumed: nothing to say
        split_header(line.substr(1), at_name, description);
        inside = name.empty() || at_name == name;
        pos = quality = 0;
        state = kSequence;
        continue;
      }
      if (fastq && state == kSequence && !line.empty() && line[0] == '+') {
        state = pos > 0 ? kQuality : kHeader;
        continue;
      }
      if (fastq && state == kQuality) {
        quality += text_len;
        if (quality >= pos) state = kHeader;
        continue;
      }
      if (!inside) {
        if (fastq) pos += text_len;  // (only to know where its quality ends)
        continue;
      }
      for (unsigned char c : line) {
        if (c == '\r') continue;
        if (kTokenTable[c] < 0 && !std::isgraph(c))
          return where(path, at_name, pos + 1,
                       "invalid character " + show_char(c) +
                           "; faidx would skip it and shift every later position, so a record "
                           "read through --region/--regions must hold bases only: fix the file, "
                           "or embed it without --region (where --invalid-as-n reads it as N)");
        ++pos;
      }
    }
  } catch (const InputError&) {
  }
  return "";
}

}  // namespace

IndexFiles index_files(const std::string& path, bool bgzip) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const IndexFiles beside{path + ".fai", path + ".gzi", false};
  if (fs::exists(beside.fai, ec) && (!bgzip || fs::exists(beside.gzi, ec))) return beside;
  std::string dir = env_text("SPARSA_INDEX_DIR");
  if (dir.empty()) {
    fs::path parent = fs::path(path).parent_path();
    if (parent.empty()) parent = ".";
    if (access(parent.c_str(), W_OK) == 0) return beside;
    if (const std::string xdg = env_text("XDG_CACHE_HOME"); !xdg.empty())
      dir = xdg + "/sparsa/faidx";
    else if (const std::string home = env_text("HOME"); !home.empty())
      dir = home + "/.cache/sparsa/faidx";
    else
      return beside;  // (said as a folder that is not writable)
  }
  // One file name per input: its base name, then a hash of its absolute path (two genome.fa of
  // two folders do not share an index).
  Sha256 h;
  h.update_field(fs::weakly_canonical(fs::absolute(path, ec), ec).string());
  const std::string key =
      dir + "/" + fs::path(path).filename().string() + "." + h.hex().substr(0, 16);
  return {key + ".fai", key + ".gzi", true};
}

namespace {

// Why faidx could not be loaded, in words a user can act on.
std::string faidx_failure(const std::string& path, const IndexFiles& ix, int compression,
                          bool fastq) {
  if (compression == 1) {
    // reads.fa.gz -> reads.fa.bgz, as docs/formats.md writes it
    const bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
    std::string to = (gz ? path.substr(0, path.size() - 3) : path) + ".bgz";
    // (A folder the user cannot write, an installed example or a shared genome: the copy goes
    // to the current folder.)
    const std::string dir = std::filesystem::path(path).parent_path().string();
    if (::access(dir.empty() ? "." : dir.c_str(), W_OK) != 0)
      to = std::filesystem::path(to).filename().string();
    return path + " is gzip-compressed but not bgzip-compressed: faidx needs `bgzip` (zcat " +
           shell_quote(path) + " | bgzip > " + shell_quote(to) + ") or an uncompressed file";
  }
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const bool have_fai = fs::exists(ix.fai, ec);
  if (!have_fai && !ix.cached && access(dir.c_str(), W_OK) != 0)
    return path + ": cannot build the faidx index " + ix.fai + ": directory " + dir.string() +
           " is not writable, and HOME is not set for a cache (set SPARSA_INDEX_DIR to a folder "
           "of your own)";
  if (!have_fai && ix.cached)
    return path + ": cannot build its faidx index in " + fs::path(ix.fai).parent_path().string() +
           " (set SPARSA_INDEX_DIR to a folder of your own)";
  // htslib reads an index's lines into 64 KB: a record name of about 65,500 bytes or more (a
  // whole description glued to the name) makes any index of the file unreadable, rebuilt or not.
  if (have_fai) {
    std::ifstream in(ix.fai, std::ios::binary);
    long long ln = 0;
    for (std::string line; std::getline(in, line);)
      if (++ln, line.size() + 1 >= 0x10000) {
        const size_t tab = line.find('\t');
        return path + ": record " + std::to_string(ln) + " (named '" +
               printable(line.substr(0, 40)) + "...') has a name of " +
               std::to_string(tab == std::string::npos ? line.size() : tab) +
               " bytes: its faidx index line (the name and its numbers) is " +
               std::to_string(line.size() + 1) +
               " bytes, more than htslib reads (65,535). --region needs the index; shorten the "
               "names, keeping them unique, e.g. " +
               rewrite_advice("awk '/^>/{print substr($1, 1, 1000); next} {print}'",
                              compression > 0) +
               " (or embed without --region)";
      }
  }
  if (have_fai)
    return path + ": cannot load its faidx index " + ix.fai +
           (compression == 2 ? " (or " + ix.gzi + ")" : std::string()) +
           ": not an index of this file? Remove it and sparsa builds it again" +
           (ix.cached ? std::string() : ", or run `samtools faidx " + path + "`");
  if (std::string why = non_base_in_record(path, "", fastq); !why.empty()) return why;
  if (!fastq)
    if (std::string why = faidx_layout_error(path); !why.empty()) return why;
  return path + ": cannot build its faidx index (" + ix.fai +
         "); faidx needs every sequence line of a record but the last to have the same "
         "length";
}

std::vector<std::pair<uint64_t, uint64_t>> fai_line_table(const std::string& fai_path);

// Whether the index `fai` was made before PATH last changed (false when either cannot be looked
// at).
bool index_older_than_file(const std::string& path, const std::string& fai_path) {
  std::error_code e1, e2;
  const auto fai = std::filesystem::last_write_time(fai_path, e1);
  const auto file = std::filesystem::last_write_time(path, e2);
  return !e1 && !e2 && fai < file;
}

}  // namespace

FaidxFetcher::FaidxFetcher(const std::string& path, DnaReadOptions opts)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->opts = opts;
  int compression = 0;
  enum fai_format_options format = FAI_FASTA;
  bool has_text = false;    // a first non-empty line
  bool end_marker = false;  // a bgzip file's end-of-file marker is there
  {
    // Peek at the first line: faidx must be told FASTQ, and garbage gets a clear message here
    // rather than faidx's own.
    LineReader lines(path);
    compression = bgzf_compression(lines.handle());
    end_marker = compression == 2 && bgzf_check_EOF(lines.handle()) == 1;
    std::string_view line;
    bool any = false;
    try {
      while ((any = lines.next(line)) && line.empty()) {
      }
    } catch (const InputError&) {
      if (compression != 1) throw;  // a broken plain gzip still gets the bgzip hint below
    }
    has_text = any && !line.empty();
    if (has_text) {
      if (const std::string why = not_fastx_reason(line, compression > 0); !why.empty())
        throw InputError(at_line(path, lines.line_no(), why));
      refuse_inner_cr(path, lines.line_no(), lines.inner_cr(), lines.compressed());
      if (line[0] == '@') {
        format = FAI_FASTQ;
      } else if (line[0] != '>') {
        throw InputError(at_line(path, lines.line_no(),
                                 "not FASTA/FASTQ: expected '>' or '@'" + not_fasta_advice(line)));
      }
    }
  }
  impl_->fastq = format == FAI_FASTQ;
  impl_->bgzip = compression == 2;
  // bgzip blocks, then a plain gzip part (`cat a.fa.bgz b.fa.gz`): read whole without regions,
  // but faidx would index the blocks alone and miss the records after them.
  // (LineReader let a bgzip file without its end marker through only so)
  if (long long gzip_at = -1;
      impl_->bgzip && !end_marker && !bgzf_blocks_fill_file(path, &gzip_at) && gzip_at >= 0)
    throw InputError(path + ": a plain gzip part follows the bgzip blocks at byte " +
                     std::to_string(gzip_at) +
                     " (files joined with cat?): faidx, which reads regions, needs bgzip end to "
                     "end: recompress it (zcat FILE | bgzip > NEW.gz); without regions it is "
                     "read whole");
  namespace fs = std::filesystem;
  std::error_code ec;
  const IndexFiles ix = index_files(path, impl_->bgzip);
  impl_->fai_path = ix.fai;
  impl_->gzi_path = ix.gzi;
  // sparsa's own cached index of a file rewritten since (a pipeline's step before it): made
  // again, as no one else keeps it. (An index beside the file may be a user's or samtools':
  // a stale one is refused, naming it, when a record is fetched.)
  if (ix.cached && opts.build_index) {
    const auto file_time = fs::last_write_time(path, ec);
    for (const std::string& f : {ix.fai, ix.gzi})
      if (std::error_code e2; !ec && fs::exists(f, e2) && fs::last_write_time(f, e2) < file_time)
        fs::remove(f, e2);
  }
  const bool missing = !fs::exists(ix.fai, ec) || (impl_->bgzip && !fs::exists(ix.gzi, ec));
  if (missing && compression != 1) {  // (plain gzip cannot be indexed: said below)
    if (!opts.build_index)
      throw SystemError(path + ": its faidx index " + ix.fai +
                        (impl_->bgzip ? " (or " + ix.gzi + ")" : std::string()) +
                        ", which rank 0 built, is not visible here (a network file system "
                        "that caches what is absent?): build it first with `samtools faidx " +
                        path + "`, then run again");
    // An index sparsa builds: htslib keeps the first of two records of one name and drops the
    // second without a word (its warning is muted), so --region would silently reach the
    // first. A FASTA may not repeat a name (read whole, it is refused), so the headers are read
    // once first (an extra pass over a file indexed for the first time). An index that exists
    // was made by samtools, which warned about it.
    if (format == FAI_FASTA) {
      LineReader lines(path);
      std::unordered_map<std::string, long long> first_at;
      std::string_view line;
      std::string name, description;
      while (lines.next(line)) {
        if (line.empty() || line[0] != '>') continue;
        refuse_inner_cr(path, lines.line_no(), lines.inner_cr(),
                        lines.compressed());  // htslib's name ends there
        refuse_nul(path, lines.line_no(), line, "the header line");
        split_header(line.substr(1), name, description);
        if (const auto [it, fresh] = first_at.try_emplace(name, lines.line_no()); !fresh)
          throw InputError(at_line(path, lines.line_no(),
                                   "record name '" + name + "' repeats the record at line " +
                                       std::to_string(it->second) +
                                       ": a faidx index (--region) keeps only the first of "
                                       "them; FASTA names must be unique: rename one"));
      }
    }
    // Built under temporary names and renamed into place (.gzi first): another process never
    // sees a half-written index.
    const std::string tmp = "." + std::to_string(getpid()) + ".tmp";
    if (ix.cached) {  // the input's folder is not writable (or SPARSA_INDEX_DIR says where)
      fs::create_directories(fs::path(ix.fai).parent_path(), ec);
      std::fprintf(stderr, "[sparsa] %s: its faidx index goes to %s%s\n", path.c_str(),
                   ix.fai.c_str(),
                   env_text("SPARSA_INDEX_DIR").empty()
                       ? " (its folder is not writable; SPARSA_INDEX_DIR chooses another)"
                       : " (SPARSA_INDEX_DIR)");
    }
    if (fai_build3(path.c_str(), (ix.fai + tmp).c_str(), (ix.gzi + tmp).c_str()) == 0) {
      if (impl_->bgzip) fs::rename(ix.gzi + tmp, ix.gzi, ec);
      if (!ec) fs::rename(ix.fai + tmp, ix.fai, ec);
    }
    fs::remove(ix.fai + tmp, ec);
    fs::remove(ix.gzi + tmp, ec);
  }
  impl_->fai = fai_load3_format(path.c_str(), ix.fai.c_str(), ix.gzi.c_str(), 0, format);
  if (!impl_->fai) throw InputError(faidx_failure(path, ix, compression, format == FAI_FASTQ));
  // The index's lines as htslib loaded them (a removal or rebuild after this is said at the
  // record's first fetch).
  impl_->fai_lines = fai_line_table(ix.fai);
  if (faidx_nseq(impl_->fai) == 0 && !missing &&
      has_text)  // (htslib loads an empty .fai without a word)
    throw InputError(path + ": its faidx index " + ix.fai +
                     " lists no records: not an index of this file? Remove it and sparsa "
                     "builds it again, or run `samtools faidx " +
                     path + "`");
}

std::string FaidxFetcher::stale_index_hint() const {
  if (!index_older_than_file(impl_->path, impl_->fai_path)) return "";
  return " (" + impl_->fai_path + " is older than " + impl_->path +
         ": made before the file changed? Remove it and sparsa builds it again, or run "
         "`samtools faidx " +
         impl_->path + "`)";
}

long long FaidxFetcher::empty_record_line(const std::string& name) const {
  try {
    LineReader lines(impl_->path);
    std::string_view line;
    std::string n, d;
    // Only the first 256 MB of text is looked at: the hint must not read a whole genome for a
    // typo in a region's name.
    constexpr long long kCap = 256ll << 20;
    long long header = 0, text = 0;  // header: the line of the header named so, while unsettled
    bool more = true;
    while ((more = lines.next(line)) && text < kCap) {
      text += (long long)line.size() + 1;
      const bool is_header = !line.empty() && line[0] == '>';
      if (header > 0) {
        if (is_header) return header;   // the next line is a header: the record is empty
        if (!line.empty()) header = 0;  // a sequence line: not empty
        continue;
      }
      if (!is_header) continue;
      split_header(line.substr(1), n, d);
      if (n == name) header = lines.line_no();
    }
    if (header > 0 && !more) return header;  // the file's last record, empty
  } catch (const std::exception&) {  // a courtesy for a message: none where it cannot be read
  }
  return 0;
}

FaidxFetcher::~FaidxFetcher() = default;

std::vector<std::string> FaidxFetcher::names() const {
  std::vector<std::string> out;
  int n = faidx_nseq(impl_->fai);
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.emplace_back(faidx_iseq(impl_->fai, i));
  return out;
}

namespace {

// Where a region lies in its record, after the checks fetch makes (the record exists; the region
// starts inside it and is not empty); `end` is cut at the record's end, as samtools does.
struct RegionSpan {
  int64_t begin = 0, end = 0, len = 0;
};
// len: the record's length (FaidxFetcher::record_length: htslib before 1.18 gives an int).
RegionSpan region_span(const std::string& path, const faidx_t* fai, const RegionSpec& region,
                       int64_t len) {
  if (!faidx_has_seq(fai, region.name.c_str())) {
    std::string known;
    int n = faidx_nseq(fai);
    for (int i = 0; i < n && i < 5; ++i) known += std::string(i ? ", " : "") + faidx_iseq(fai, i);
    if (n > 5) known += ", ... (" + std::to_string(n) + " records)";
    throw InputError(path + ": region '" + region.text + "': no record named '" + region.name +
                     "'; known: " + known);
  }
  RegionSpan r;
  r.len = len;
  r.begin = region.begin;
  r.end = region.end == -1 ? r.len : std::min<int64_t>(region.end, r.len);
  if (r.begin < 0)
    throw InputError(
        where(path, region.name, 0, "region '" + region.text + "' starts before the record"));
  if (r.begin >= r.len)
    throw InputError(where(path, region.name, 0,
                           "region '" + region.text + "' starts after the end of the record (" +
                               std::to_string(r.len) + " bases)"));
  if (r.end <= r.begin)
    throw InputError(where(path, region.name, 0, "region '" + region.text + "' is empty"));
  return r;
}

// The .fai's lines as (hash of the name, byte offset of the line), sorted; empty when it cannot
// be read (htslib loaded it already, so that is a race with its removal: the check is skipped).
std::vector<std::pair<uint64_t, uint64_t>> fai_line_table(const std::string& fai_path) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  std::ifstream in(fai_path, std::ios::binary);
  std::string line;
  uint64_t off = 0;
  while (std::getline(in, line)) {
    const size_t tab = line.find('\t');
    if (tab != std::string::npos)
      out.emplace_back(std::hash<std::string_view>{}(std::string_view(line).substr(0, tab)), off);
    off += line.size() + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The entry of record `name` from its line of the .fai, found by the table above; false when the
// index has no such line. Throws when the table has a line for the name's hash but the .fai no
// longer holds it there: the index was removed or rebuilt during the run (htslib keeps the one it
// loaded), and the check against the file cannot be made.
bool find_fai_line(const std::string& fai_path,
                   const std::vector<std::pair<uint64_t, uint64_t>>& table, std::string_view name,
                   FaiEntry* e) {
  const uint64_t h = std::hash<std::string_view>{}(name);
  auto it = std::lower_bound(table.begin(), table.end(), std::make_pair(h, uint64_t{0}));
  if (it == table.end() || it->first != h) return false;
  auto changed = [&] {
    return InputError(fai_path +
                      ": the index changed while sparsa was reading it (removed or "
                      "rebuilt by another program?): record '" +
                      std::string(name) + "' is not where it was; run again once it is final");
  };
  std::ifstream in(fai_path, std::ios::binary);
  if (!in)  // (removed by another program, or too many files open: errno says which)
    throw InputError(fai_path + ": cannot open it again to find record '" + std::string(name) +
                     "': " + std::strerror(errno) + " (removed during the run? ulimit -n?)");
  std::string line;
  for (; it != table.end() && it->first == h; ++it) {
    in.clear();
    if (!in.seekg((std::streamoff)it->second) || !std::getline(in, line)) throw changed();
    const std::string_view got = std::string_view(line).substr(0, line.find('\t'));
    // A line whose name has another hash is not the line the table saw there.
    if (std::hash<std::string_view>{}(got) != h) throw changed();
    if (got != name) continue;  // two names of one hash: the other one's line
    std::istringstream cols(line.substr(got.size()));
    FaiEntry x;
    if (!(cols >> x.length >> x.offset >> x.line_bases >> x.line_bytes)) throw changed();
    *e = x;
    return true;
  }
  return false;
}

}  // namespace

// A record's length, 64-bit: htslib before 1.18 has only faidx_seq_len, an int (a record past
// 2^31 - 1 bases, as some amphibian and lungfish chromosomes are, came out wrong or negative), so
// there the .fai's own line is read (the last name's kept: a BED's lines come a record at a time).
int64_t FaidxFetcher::record_length(const std::string& name) const {
#if HTS_VERSION >= 101800
  return faidx_seq_len64(impl_->fai, name.c_str());
#else
  Impl& I = *impl_;
  if (I.last_length.first != name) {
    FaiEntry e;
    I.last_length = {name, find_fai_line(I.fai_path, I.fai_lines, name, &e)
                               ? e.length
                               : (int64_t)faidx_seq_len(I.fai, name.c_str())};
  }
  return I.last_length.second;
#endif
}

int64_t FaidxFetcher::tokens_of(const RegionSpec& region) const {
  const RegionSpan r = region_span(impl_->path, impl_->fai, region, record_length(region.name));
  return r.end - r.begin;
}

std::string FaidxFetcher::cut_warning(const RegionSpec& region) const {
  const RegionSpan r = region_span(impl_->path, impl_->fai, region, record_length(region.name));
  if (region.end <= r.len) return "";
  return impl_->path + ": region '" + region.text + "' ends past record '" + region.name + "' (" +
         std::to_string(r.len) + " bases): embedded to its end, bases " +
         std::to_string(r.begin + 1) + "-" + std::to_string(r.len) +
         " (a BED or region from another assembly?)";
}

Record FaidxFetcher::fetch(const RegionSpec& region) {
  const std::string& path = impl_->path;
  const faidx_t* fai = impl_->fai;
  const RegionSpan span = region_span(path, fai, region, record_length(region.name));
  const int64_t begin = span.begin, end = span.end;

  std::string description;
  // A record is checked against the file the first time it is fetched: an index made before the
  // file changed would read another record's bases, or too few, without an error.
  // (Before faidx reads: its own read of a stale index can hit an assertion in htslib.)
  FaiEntry entry;
  if (auto d = impl_->descriptions.find(region.name); d != impl_->descriptions.end()) {
    description = d->second;
  } else if (find_fai_line(impl_->fai_path, impl_->fai_lines, region.name, &entry)) {
    if (impl_->bgzip && !impl_->blocks_read) {
      impl_->blocks = gzi_block_starts(path, impl_->gzi_path);
      impl_->blocks_read = true;
    }
    if (!impl_->check_opened) {
      errno = 0;
      impl_->check_fp = open_bgzf(path);
      // (Without it the check would be skipped: with hundreds of inputs the process may run out
      // of file descriptors, each input holding faidx's and this one.)
      if (!impl_->check_fp)
        throw SystemError(path + ": cannot open it again to check its faidx index" +
                          (errno ? std::string(": ") + std::strerror(errno) : std::string()) +
                          " (too many inputs open at once? ulimit -n)");
      impl_->check_opened = true;
      impl_->gzi_loaded = impl_->check_fp && impl_->bgzip &&
                          bgzf_index_load(impl_->check_fp, impl_->gzi_path.c_str(), nullptr) == 0;
    }
    const FaiCheck c =
        check_fai_entry(path, entry, impl_->fastq, impl_->bgzip ? &impl_->blocks : nullptr,
                        impl_->check_fp, impl_->gzi_loaded);
    if (c.header_found && (c.name + c.description).find('\0') != std::string::npos)
      throw InputError(where(path, region.name, 0,
                             "its header line holds a NUL byte (0x00): binary data or a damaged "
                             "file? Names and descriptions end there in HDF5 and in a faidx "
                             "index, so it is refused"));
    if (!c.ok || (c.header_found && c.name != region.name)) {
      if (const std::string why = non_base_in_record(path, region.name, impl_->fastq); !why.empty())
        throw InputError(why);
      const bool older = index_older_than_file(path, impl_->fai_path);
      throw InputError(path + ": its faidx index " + impl_->fai_path +
                       " does not match it: record '" + region.name +
                       "' is not where the index puts it" +
                       (older ? " (the index is older than the file: the file changed after it "
                                "was indexed)"
                              : "") +
                       "; remove " + impl_->fai_path +
                       (impl_->bgzip ? " and " + impl_->gzi_path : std::string()) +
                       " and sparsa builds it again, or run `samtools faidx " + path + "`" +
                       (impl_->bgzip && impl_->blocks.empty() ? " (its .gzi is damaged)" : ""));
    }
    description = c.description;
    impl_->descriptions.emplace(region.name, description);
  }

  hts_pos_t got = 0;
  // faidx takes a 0-based inclusive end.
  char* seq = faidx_fetch_seq64(fai, region.name.c_str(), begin, end - 1, &got);
  if (!seq || got != end - begin) {
    std::free(seq);
    throw InputError(where(path, region.name, 0,
                           "cannot read region '" + region.text +
                               "' through faidx (file changed since its .fai was built?)"));
  }
  Record rec;
  rec.name = region.name;
  rec.description = description;
  // Names and descriptions are stored as UTF-8 strings (as for records read whole).
  for (const auto& [text, what] : {std::pair{&rec.name, "name"}, {&rec.description, "header"}})
    if (const std::string why = not_utf8(*text, what); !why.empty()) {
      std::free(seq);
      throw InputError(where(path, region.name, 0, why));
    }
  rec.source = path;
  rec.region = region.name + ":" + std::to_string(begin + 1) + "-" + std::to_string(end);
  rec.region_name = region.label;
  rec.offset = begin;
  try {
    InvalidTally tally;
    tally.fastq = impl_->fastq;
    tally.compressed = impl_->bgzip;
    append_tokens(std::string_view(seq, (size_t)got), begin + 1, impl_->opts.invalid_as_n, path,
                  region.name, rec.tokens, tally, 0, rec.region);
    rec.warning = tally.warning(path, region.name, rec.warning);
    rec.read_as_n = tally.count;
  } catch (...) {
    std::free(seq);
    throw;
  }
  std::free(seq);
  return rec;
}

bool plain_gzip(const std::string& path) {
  BGZF* fp = open_bgzf(path);
  if (!fp) return false;
  const bool gz = bgzf_compression(fp) == 1;
  bgzf_close(fp);
  return gz;
}

std::vector<std::string> record_names(const std::string& path) {
  std::vector<std::string> names;
  LineReader lines(path);
  std::string_view line;
  bool fastq = false;
  long long n = 0;
  std::string name, description;
  while (lines.next(line)) {
    if (n == 0 && line.empty()) continue;
    if (n++ == 0) fastq = line[0] == '@';
    if (fastq ? (n - 1) % 4 == 0 : (!line.empty() && line[0] == '>')) {
      split_header(line.substr(1), name, description);
      names.push_back(name);
    }
  }
  return names;
}

InputSample sample_records(const std::string& path, int64_t max_bytes) {
  InputSample out;
  BGZF* fp = open_bgzf(path);
  if (!fp) return out;
  kstring_t ks{0, 0, nullptr};
  int64_t lines = 0;
  bool fastq = false;
  int r = 0;
  while (out.bytes < max_bytes && (r = bgzf_getline(fp, '\n', &ks)) >= 0) {
    if (lines == 0) fastq = ks.l > 0 && ks.s[0] == '@';
    const bool header = fastq ? lines % 4 == 0 : (ks.l > 0 && ks.s[0] == '>');
    if (header) ++out.records;
    if (fastq ? lines % 4 == 1 : !header) out.sequence += (int64_t)ks.l;
    ++lines;
    out.bytes += (int64_t)ks.l + 1;
  }
  out.whole = r == -1;
  // A compressed file not read whole: how many compressed bytes that text took (zlib's offset
  // after as much text; gzoffset counts what it has consumed, not what it has buffered). Reads
  // compress 2-3x where a genome's FASTA compresses ~4x: a fixed ratio misjudged the records.
  if (!out.whole && bgzf_compression(fp) > 0 && out.bytes > 0) {
    if (gzFile z = gzopen(path.c_str(), "rb")) {
      // A small buffer: zlib decompresses reads of twice its size or more straight into ours,
      // so the input consumed is that of the text read, not of 16 KB more held in its buffer.
      gzbuffer(z, 1024);
      std::vector<char> buf(64 << 10);
      int64_t text = 0;
      int n = 0;
      while (text < out.bytes &&
             (n = gzread(z, buf.data(),
                         (unsigned)std::min<int64_t>(buf.size(), out.bytes - text))) > 0)
        text += n;
      if (text == out.bytes) out.compressed = std::max<int64_t>(1, (int64_t)gzoffset(z));
      gzclose(z);
    }
  }
  // An uncompressed FASTA not read whole: two more windows, from its middle and its end (a
  // genome followed by many short records looked like one record from its start alone, and the
  // free-space check passed a run that then filled the disk). Each window starts at the line
  // after its offset; the sample is the three windows together.
  if (!out.whole && !fastq && bgzf_compression(fp) == 0) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && st.st_size > max_bytes) {
      for (const int64_t at : {(int64_t)st.st_size / 2, (int64_t)st.st_size - max_bytes}) {
        // (bgzf_seek takes a virtual offset, block address << 16: for a file that is not
        // compressed, the block address is the byte offset)
        if (bgzf_seek(fp, at << 16, SEEK_SET) < 0 || bgzf_getline(fp, '\n', &ks) < 0) break;
        int64_t got = 0;
        while (got < max_bytes && bgzf_getline(fp, '\n', &ks) >= 0) {
          if (ks.l > 0 && ks.s[0] == '>')
            ++out.records;
          else
            out.sequence += (int64_t)ks.l;
          got += (int64_t)ks.l + 1;
        }
        out.bytes += got;
      }
    }
  }
  std::free(ks.s);
  bgzf_close(fp);
  return out;
}

}  // namespace sparsa
