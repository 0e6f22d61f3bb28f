// sparsa: a file's text, mapped from the page cache rather than copied into the heap.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace sparsa {

// A CSV of many GB is parsed whole (its records' rows must all be known before the first is
// embedded): its mapped pages are the kernel's to drop and read again, not the process's
// anonymous memory. Falls back to reading the file (one that cannot be mapped, or an empty one).
// A file truncated by another program while it is mapped would end the process with a bare
// SIGBUS: a handler (installed with the first mapping) names the file instead, and ends the
// process with exit status 1 (the run's journal stays for --resume; nothing is at the output
// path). Up to 64 files are watched at once; a fault elsewhere goes to the handler before ours, or
// ends the process as SIGBUS's default action does.
class FileText {
 public:
  explicit FileText(const std::string& path);
  ~FileText();
  FileText(const FileText&) = delete;
  FileText& operator=(const FileText&) = delete;
  std::string_view view() const {
    return map_ ? std::string_view(static_cast<const char*>(map_), size_) : read_;
  }
  bool mapped() const { return map_ != nullptr; }

 private:
  static std::string read_file_text(const std::string& path);
  void* map_ = nullptr;
  size_t size_ = 0;
  int slot_ = -1;  // in the SIGBUS handler's table
  std::string read_;
};

// Whether `bytes` start as an HDF5 file does (its 8-byte signature; a line reader sees only
// these first 4, the line ending inside it): a checkpoint or embeddings file given as text.
inline bool hdf5_signature(std::string_view bytes) { return bytes.starts_with("\x89HDF"); }

// The compression `bytes` start with that sparsa does not read (bzip2, xz, zstd, zip) and the
// command that decompresses it to standard output, e.g. {"xz", "xzcat"}; {"", ""} for none.
struct OtherCompression {
  const char* name;
  const char* cat;
};
inline OtherCompression other_compression(std::string_view bytes) {
  if (bytes.starts_with("BZh") && bytes.size() > 3 && bytes[3] >= '1' && bytes[3] <= '9')
    return {"bzip2", "bzcat"};
  if (bytes.starts_with("\xFD"
                        "7zXZ"))
    return {"xz", "xzcat"};
  if (bytes.starts_with("\x28\xB5\x2F\xFD")) return {"zstd", "zstdcat"};
  if (bytes.starts_with("PK\x03\x04")) return {"zip", "unzip -p"};
  return {"", ""};
}

}  // namespace sparsa
