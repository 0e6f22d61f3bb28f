// Fuzzes region parsing: parse_region (samtools syntax) and read_bed, and fetches what they give
// from a small fixed FASTA through faidx, so that odd coordinates reach FaidxFetcher::fetch.
//
// The input is used twice: each of its first lines is a region text (as given to --region), and
// the whole input is a BED file (as given to --bed).
#include <htslib/hts_log.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "fuzz_util.hpp"
#include "io/dna.hpp"

namespace {

using sparsa::fuzz::invariant_failed;

// Record names of the fixed FASTA, including names with ':' (HLA alleles, names that look like a
// region), which parse_region must resolve against the known names as htslib does.
const std::vector<std::string>& known_names() {
  static const std::vector<std::string> names = {"chr1", "chr2:10-20", "HLA-A*01:01:01:01", "chrM"};
  return names;
}

sparsa::FaidxFetcher& fetcher() {
  static sparsa::FaidxFetcher* f = [] {
    const std::string fasta =
        ">chr1 first\n"
        "ACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGT\n"
        "ACGTNNNNRYACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTAC\n"
        "ACGTA\n"
        ">chr2:10-20\n"
        "GGGGCCCCAAAATTTT\n"
        ">HLA-A*01:01:01:01\n"
        "acgtnacgtn\n"
        ">chrM\n"
        "A\n";
    const std::string path = sparsa::fuzz::write_temp(
        "ref.fa", reinterpret_cast<const uint8_t*>(fasta.data()), fasta.size());
    return new sparsa::FaidxFetcher(path, sparsa::DnaReadOptions{});
  }();
  return *f;
}

void fetch(const sparsa::RegionSpec& r) {
  if (r.name.empty()) invariant_failed("a region with an empty name was accepted");
  if (r.begin < 0 || (r.end != -1 && r.end <= r.begin))
    invariant_failed("an empty or negative region was accepted: " + r.text);
  try {
    sparsa::Record rec = fetcher().fetch(r);
    const int64_t want = (r.end == -1 ? rec.offset + rec.n_tokens() : r.end) - r.begin;
    if (rec.n_tokens() < 1 || rec.n_tokens() > want || rec.offset != r.begin)
      invariant_failed("fetched region has the wrong extent: " + r.text);
  } catch (const sparsa::Error&) {
    // unknown name, out of range: refused with a message
  }
}

}  // namespace

// htslib's own messages ("[E::bgzf_read_block] ...") would flood the log at thousands of
// inputs per second; the InputError that follows them is what sparsa reports.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hts_set_log_level(HTS_LOG_OFF);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  size_t start = 0;
  for (int n = 0; n < 16 && start <= text.size(); ++n) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    const std::string line(text.substr(start, nl - start));
    start = nl + 1;
    for (const std::vector<std::string>& names : {std::vector<std::string>{}, known_names()}) {
      try {
        fetch(sparsa::parse_region(line, names));
      } catch (const sparsa::Error&) {
      }
    }
  }

  const std::string bed = sparsa::fuzz::write_temp("regions.bed", data, size);
  try {
    for (const auto& r : sparsa::read_bed(bed)) fetch(r);
  } catch (const sparsa::Error&) {
  }
  return 0;
}
