// sparsa: DNA input. FASTA/FASTQ (plain, gzip, bgzip) through htslib's BGZF; regions through faidx.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/record.hpp"

namespace sparsa {

// DNA token ids (spec section 1).
enum DnaToken : int32_t {
  kTokPad = 0,
  kTokMask = 1,
  kTokN = 2,
  kTokA = 3,
  kTokC = 4,
  kTokG = 5,
  kTokT = 6
};

// Token of one sequence character, or -1 when the character is not valid sequence.
// A a -> 3, C c -> 4, G g -> 5, T t U u -> 6, N and IUPAC R Y S W K M B D H V (any case) -> 2.
int32_t dna_token(unsigned char c);
// Reverse complement of a token sequence in place: A<->T, C<->G, N->N (PAD/MASK unchanged).
void reverse_complement(std::vector<int32_t>& tokens);

struct DnaReadOptions {
  bool invalid_as_n = false;  // map invalid characters to N instead of failing
  // FaidxFetcher: build a missing faidx index (false: one rank of several, where rank 0 built it
  // first; a missing one is then an error, not a second writer of the same files).
  bool build_index = true;
};

// Streams the records of one FASTA or FASTQ file (format detected from the first byte: '>' or
// '@'), plain, gzip or bgzip. Throws InputError naming the file, the record and the 1-based
// position (or the line) for: invalid characters, empty records, duplicate names, truncated or
// corrupt compressed data, garbage before the first header, malformed FASTQ. '\r' is ignored.
class FastxReader {
 public:
  FastxReader(const std::string& path, DnaReadOptions opts);
  ~FastxReader();
  FastxReader(const FastxReader&) = delete;
  FastxReader& operator=(const FastxReader&) = delete;
  // Reads the next record into `rec` (kind DNA, n_channels 1, offset 0, region ""). False at EOF.
  bool next(Record& rec);
  bool fastq() const;  // a FASTQ (else a FASTA)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A requested region. `end` may be -1 for "to the end of the record".
struct RegionSpec {
  std::string text;   // as the user wrote it (or "BED line N"), for messages
  std::string name;   // record name
  int64_t begin = 0;  // 0-based inclusive
  int64_t end = -1;   // 0-based exclusive, or -1 for the end of the record
  std::string label;  // BED: the name column (4th; "" when absent or ".")
  // What the region's reading is worth a warning for ("" for none): a ':'-holding name and a lone
  // start, read as that record from the start on (a missing allele?).
  std::string warning;
};

// Parses samtools syntax "chr", "chr:start", "chr:start-end" (1-based inclusive, commas allowed
// in numbers). Names containing ':' are resolved against `known_names` when given (as htslib
// does: the whole text is a name if such a record exists). Throws ConfigError on bad syntax.
RegionSpec parse_region(const std::string& text, const std::vector<std::string>& known_names = {});

// A count as regions write it (samtools' hts_parse_decimal): digits, thousands commas, and an
// optional k, M or G suffix (10^3, 10^6, 10^9; 1.5k is 1500). False for anything else, a
// fraction that is not whole, or past 18 digits.
bool parse_token_count(std::string_view s, int64_t& out);
// Where `s` is a k, M or G count whose fraction does not come out whole (1.5001k), the number it
// is ("1500.1"), for an error message; else "".
std::string fractional_count(std::string_view s);

// The start of a FASTA/FASTQ file (plain, gzip or bgzip), up to about max_bytes of its text:
// the bytes read and the records begun in them (FASTA: header lines; FASTQ: every fourth line),
// and whether that was the whole file (an uncompressed FASTA larger than max_bytes: windows
// of max_bytes from its start, middle and end together). For estimates only: never throws on bad
// content (a file that cannot be opened or read gives what was read so far).
// Where the faidx index of `path` is, or is to be built: PATH.fai (and PATH.gzi for bgzip) beside
// it where they exist or its folder is writable; else (a shared reference folder that is read-only)
// in SPARSA_INDEX_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/sparsa/faidx, as NAME.HASH.fai (HASH of
// its absolute path). SPARSA_INDEX_DIR, where set, is used whenever no index is beside the file.
struct IndexFiles {
  std::string fai, gzi;
  bool cached = false;  // not beside the file
};
IndexFiles index_files(const std::string& path, bool bgzip);

struct InputSample {
  int64_t bytes = 0, records = 0;
  // Of `bytes`, the sequence's characters (a token each): not headers, FASTQ's '+' and quality
  // lines, nor line ends.
  int64_t sequence = 0;
  bool whole = false;
  // A compressed file not read whole: the compressed bytes that held the first `bytes` of text
  // (so its text is about file size x bytes / compressed); 0 otherwise.
  int64_t compressed = 0;
};
InputSample sample_records(const std::string& path, int64_t max_bytes);

// The record names of a FASTA or FASTQ read through from its start (header lines alone; FASTQ's
// every fourth line), for an input that cannot be indexed (plain gzip) among several that
// regions name: where no region names one of its records, it is only warned about.
std::vector<std::string> record_names(const std::string& path);
// Whether the file is gzip but not bgzip (faidx cannot index it).
bool plain_gzip(const std::string& path);

// Reads a BED file (0-based half-open; columns chrom, start, end, ...; "track", "browser" and
// '#' lines skipped). A zero-length interval (start = end: an insertion point, legal BED) holds
// no base to embed: skipped, its line added to `empty_lines` where given. Throws InputError
// naming the file and line.
std::vector<RegionSpec> read_bed(const std::string& path,
                                 std::vector<long long>* empty_lines = nullptr);

// Fetches regions of one FASTA/FASTQ file through its faidx index, building the index when it is
// missing (a plain-gzip input cannot be indexed: the error says to bgzip it). Each region becomes
// a Record with name = record name, region = "chr:start-end" (1-based inclusive, clipped to the
// record), offset = begin. Unknown names and empty/out-of-range regions are InputErrors.
class FaidxFetcher {
 public:
  FaidxFetcher(const std::string& path, DnaReadOptions opts);
  ~FaidxFetcher();
  FaidxFetcher(const FaidxFetcher&) = delete;
  FaidxFetcher& operator=(const FaidxFetcher&) = delete;
  std::vector<std::string> names() const;
  // "" or, when the file changed after its .fai was made (the index is older), a hint for a
  // message that the index may not list a record: " (FILE.fai is older than FILE: ...)".
  std::string stale_index_hint() const;
  // The line of a header named `name` in the file (which faidx's index leaves out because its
  // record is empty), or 0. Reads the file's headers: for a message only.
  long long empty_record_line(const std::string& name) const;
  // The tokens `region` gives, after fetch's checks (the same errors, without reading bases).
  int64_t tokens_of(const RegionSpec& region) const;
  // The warning for a region that ends past its record (cut there, as samtools does, by fetch),
  // naming the record's length; "" for one inside it. Said before any record is embedded.
  std::string cut_warning(const RegionSpec& region) const;
  Record fetch(const RegionSpec& region);
  // The length of the record named `name` (64-bit, also with an htslib whose faidx_seq_len is
  // an int); -1 for a name the index does not hold.
  int64_t record_length(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparsa
