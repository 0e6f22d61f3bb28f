// Fuzzes FastxReader (FASTA/FASTQ, plain or gzip/bgzip): the input bytes are the file.
//
// Each input is read three ways:
//   1. as given, with invalid characters refused (the default CLI behaviour);
//   2. as given, with --invalid-as-n, which reads further into odd files;
//   3. wrapped in BGZF blocks (bgzip's framing), with --invalid-as-n. Compression must not
//      change what is read, so 2 and 3 must agree: the same records, or both refused.
#include <htslib/bgzf.h>
#include <htslib/hts_log.h>

#include <string>
#include <vector>

#include "core/error.hpp"
#include "fuzz_util.hpp"
#include "io/dna.hpp"

namespace {

using sparsa::fuzz::invariant_failed;

struct Outcome {
  bool ok = false;
  std::vector<sparsa::Record> records;
};

Outcome read_all(const std::string& path, bool invalid_as_n) {
  Outcome out;
  try {
    sparsa::FastxReader reader(path, sparsa::DnaReadOptions{invalid_as_n});
    sparsa::Record rec;
    while (reader.next(rec)) {
      if (rec.name.empty()) invariant_failed("a record with an empty name was returned");
      if (rec.tokens.empty()) invariant_failed("an empty record was returned");
      for (int32_t t : rec.tokens)
        if (t < sparsa::kTokN || t > sparsa::kTokT) invariant_failed("token out of range");
      out.records.push_back(std::move(rec));
    }
    out.ok = true;
  } catch (const sparsa::Error&) {
    // A refused input: fine.
  }
  return out;
}

// Level 0 (stored deflate blocks): the same BGZF framing as bgzip writes, without allocating the
// large compressor state (mmap and munmap under ASan) that cost more than the parse per input.
std::string write_bgzf(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = sparsa::fuzz::temp_path(name);
  BGZF* fp = bgzf_open(path.c_str(), "w0");
  if (!fp || (size && bgzf_write(fp, data, size) != (ssize_t)size) || bgzf_close(fp) != 0)
    invariant_failed("cannot write " + path);
  return path;
}

bool same_records(const Outcome& a, const Outcome& b) {
  if (a.records.size() != b.records.size()) return false;
  for (size_t i = 0; i < a.records.size(); ++i) {
    const auto& x = a.records[i];
    const auto& y = b.records[i];
    if (x.name != y.name || x.description != y.description || x.tokens != y.tokens) return false;
  }
  return true;
}

}  // namespace

// htslib's own messages ("[E::bgzf_read_block] ...") would flood the log at thousands of
// inputs per second; the InputError that follows them is what sparsa reports.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hts_set_log_level(HTS_LOG_OFF);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string plain = sparsa::fuzz::write_temp("in.fa", data, size);
  read_all(plain, false);
  const Outcome as_n = read_all(plain, true);

  // Bytes that are already gzip/bgzip would be compressed twice: no comparison for those.
  const bool compressed = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  if (!compressed) {
    const Outcome wrapped = read_all(write_bgzf("in.fa.gz", data, size), true);
    if (as_n.ok != wrapped.ok)
      invariant_failed(std::string("plain and bgzip-compressed copies disagree: plain ") +
                       (as_n.ok ? "read" : "refused") + ", bgzip " +
                       (wrapped.ok ? "read" : "refused"));
    if (as_n.ok && !same_records(as_n, wrapped))
      invariant_failed("plain and bgzip-compressed copies give different records");
  }
  return 0;
}
