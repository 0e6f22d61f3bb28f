// sparsa: checks of output paths before anything is written.
#pragma once
#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/error.hpp"

namespace sparsa {

// True when something is at `path` that --force would replace: a file, a symbolic link to one, or
// a link to nothing ("a symbolic link to the missing X" goes into *what). Throws ConfigError
// (option: "--output") for a folder and for anything else that is not a file: a device, a FIFO or
// a socket would be replaced by an HDF5 file even with --force (-o /dev/null --force, run as root,
// would replace /dev/null), so they are refused outright.
inline bool output_path_taken(const std::string& path, const std::string& option,
                              std::string* what = nullptr) {
  namespace fs = std::filesystem;
  // "-" is standard output to samtools users; an HDF5 file needs a seekable file of its own.
  if (path == "-")
    throw ConfigError(option +
                      " -: sparsa writes HDF5, which cannot go to standard output; give "
                      "a file name (`sparsa inspect FILE` prints a summary)");
  std::error_code ec;
  const fs::file_status link = fs::symlink_status(path, ec);
  if (ec == std::errc::not_a_directory)  // out.txt/x.h5
    throw ConfigError(option + " " + path + ": the output folder " +
                      fs::absolute(path).parent_path().string() +
                      " is not a folder (a file of that name)");
  if (ec && ec != std::errc::no_such_file_or_directory)  // (a folder on the way not searchable)
    throw ConfigError(option + " " + path + ": cannot check it: " + ec.message());
  if (!fs::exists(link)) return false;
  std::error_code ec_target;
  const fs::file_status st = fs::status(path, ec_target);
  if (!fs::exists(st)) {  // a link to nothing, or to what cannot be reached (a loop)
    if (what)
      *what =
          "a symbolic link to " + (ec_target && ec_target != std::errc::no_such_file_or_directory
                                       ? "what cannot be reached (" + ec_target.message() + ")"
                                       : "the missing " + fs::read_symlink(path, ec).string());
    return true;
  }
  // (A link to a device is refused below like the device: -o /dev/stdout --force as root would
  // replace /dev's link. So is a link in /dev or /proc to a file: /dev/stdout with standard output
  // sent to a file, which --force would also replace with a file of its own.)
  if (fs::is_symlink(link)) {
    const std::string abs = fs::absolute(path, ec).lexically_normal().string();
    if (abs.rfind("/dev/", 0) == 0 || abs.rfind("/proc/", 0) == 0)
      throw ConfigError(option + " " + path +
                        " is a link to a stream (standard output or error?): sparsa writes its "
                        "output as a new HDF5 file renamed into place, --force or not; give a "
                        "file path (`sparsa inspect FILE` prints a summary)");
  }
  if (fs::is_regular_file(st)) return true;
  if (fs::is_directory(st))
    throw ConfigError(option + " " + path + " is a folder; give a file name");
  const char* kind = fs::is_character_file(st) ? "a character device"
                     : fs::is_block_file(st)   ? "a block device"
                     : fs::is_fifo(st)         ? "a FIFO (named pipe)"
                     : fs::is_socket(st)       ? "a socket"
                                               : "not a regular file";
  throw ConfigError(option + " " + path + " is " + kind +
                    ": sparsa writes its output as a new file and would replace it, --force or "
                    "not; give a file path (to discard the output, write it to a temporary file "
                    "and remove it)");
}

// The largest file this process may write (`ulimit -f`, RLIMIT_FSIZE) in bytes; -1 where there is
// no limit. A write past it fails with EFBIG (SIGXFSZ is ignored: ignore_file_size_signal).
inline int64_t file_size_limit() {
  struct rlimit r {};
  if (getrlimit(RLIMIT_FSIZE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return -1;
  return (int64_t)r.rlim_cur;
}

// " the file-size limit (ulimit -f) is N KB" for messages.
inline std::string file_size_limit_text(int64_t limit) {
  return "the file-size limit (ulimit -f) is " + std::to_string(limit >> 10) + " KB";
}

// OUT.tmp, where sparsa writes a file while it is made (then renames it to OUT): a file there is
// replaced when it is sparsa's, left by a run that crashed (empty, or an HDF5 file: the
// signature starts it, and `ours`, where given, judges its contents); anything else is the
// user's and is refused unless --force (force): a folder, device or FIFO outright, since it
// would fail the run only at its end.
inline void check_scratch_path(const std::string& tmp, const std::string& output, bool force,
                               bool (*ours)(const std::string& path) = nullptr) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(tmp, ec);
  if (!fs::exists(st)) return;
  const std::string where = "sparsa writes the output there while it is made (for --output " +
                            output + "); move it away or choose another --output";
  if (!fs::is_regular_file(st)) throw ConfigError(tmp + " exists and is not a file: " + where);
  char head[8] = {};
  size_t got = 0;
  if (std::FILE* f = std::fopen(tmp.c_str(), "rb")) {
    got = std::fread(head, 1, sizeof head, f);
    std::fclose(f);
  }
  static const char kHdf5[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  if (got == 0 || force) return;
  if (got == 8 && std::equal(head, head + 8, kHdf5)) {
    if (!ours || ours(tmp)) return;
    throw ConfigError(tmp + " is an HDF5 file that no sparsa run writes there: " + where +
                      ", or pass --force to replace it");
  }
  throw ConfigError(
      tmp + " exists and is not an HDF5 file, so not one a crashed sparsa run left: " + where +
      ", or pass --force to replace it");
}

// "OUT already exists (what); pass --force to replace it", for a path output_path_taken took.
inline ConfigError output_exists_error(const std::string& path, const std::string& what) {
  return ConfigError(path + " already exists" + (what.empty() ? std::string() : " (" + what + ")") +
                     "; pass --force to replace it");
}

// A named FIFO given where sparsa reads a small file once (init's --config, --regions): opening
// it waits for a writer, where no signal stops it, so a FIFO made by mkfifo is refused. Process
// substitution, <(...), passes /dev/fd/N, a link to a pipe with its writer running: taken.
inline void refuse_named_fifo(const std::string& path, const std::string& option) {
  std::error_code ec;
  if (std::filesystem::is_fifo(std::filesystem::symlink_status(path, ec)))
    throw ConfigError(option + " " + path +
                      " is a FIFO (named pipe): opening it would wait for a writer; give the "
                      "file itself, or a stream as <(command)");
}

}  // namespace sparsa
