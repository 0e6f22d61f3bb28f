#include "pipelines/embed/writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <type_traits>

#include "core/env.hpp"
#include "core/error.hpp"
#include "core/paths.hpp"
#include "core/signals.hpp"
#include "io/h5.hpp"

namespace sparsa {

namespace fs = std::filesystem;

std::string Journal::key_for(int64_t index, const std::string& name, int64_t n_records) {
  const int width =
      std::max<int>(6, (int)std::to_string(std::max<int64_t>(0, n_records - 1)).size());
  char num[32];
  std::snprintf(num, sizeof num, "%0*lld", width, (long long)index);
  std::string key = std::string(num) + "_";
  // HDF5-safe and readable: letters, digits, '.', '_', '-' kept; the rest becomes '_'.
  for (char c : name.substr(0, 64)) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    key += ok ? c : '_';
  }
  return key;
}

std::string Journal::part_path(int64_t index) const {
  char num[32];
  std::snprintf(num, sizeof num, "%06lld.h5", (long long)index);
  return dir_ + "/" + num;
}

// A finished part's file name: six or more digits (the index of its first record, %06lld),
// optionally '.' and a number (where an earlier run's part had the name), then ".h5".
static bool is_part_name(const std::string& name, int64_t* index) {
  const size_t stem = name.size() >= 3 ? name.size() - 3 : 0;
  if (stem < 6 || stem > 30 || name.compare(stem, 3, ".h5") != 0) return false;
  size_t digits = 0;
  while (digits < stem && name[digits] >= '0' && name[digits] <= '9') ++digits;
  if (digits < 6 || digits > 18) return false;
  if (digits < stem) {  // ".K"
    if (name[digits] != '.' || digits + 1 == stem) return false;
    for (size_t i = digits + 1; i < stem; ++i)
      if (name[i] < '0' || name[i] > '9') return false;
  }
  if (index) *index = std::stoll(name.substr(0, digits));
  return true;
}

// The record index (1-based) of a part's group key "NNNNNN_name" (key_for), or -1.
static int64_t key_index(const std::string& key) {
  size_t digits = 0;
  while (digits < key.size() && key[digits] >= '0' && key[digits] <= '9') ++digits;
  if (digits == 0 || digits > 18 || digits >= key.size() || key[digits] != '_') return -1;
  return std::stoll(key.substr(0, digits)) + 1;
}

// The records of a part file: index -> group key.
static std::map<int64_t, std::string> part_records(const h5::File& part) {
  std::map<int64_t, std::string> keys;
  for (const auto& key : part.list("/records"))
    if (const int64_t i = key_index(key); i > 0) keys[i] = key;
  return keys;
}

// An input_sha256 (64 hex digits) as its 32 bytes; false for anything else (a part without one).
static bool fp_bytes(std::string_view hex, std::array<uint8_t, 32>& out) {
  if (hex.size() != 64) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < 32; ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = uint8_t(hi << 4 | lo);
  }
  return true;
}

static std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string normalized_manifest(const std::string& manifest) {
  std::istringstream in(manifest);
  std::string out, line;
  while (std::getline(in, line)) {
    for (const char* key : {"input ", "regions_bed "})
      if (line.rfind(key, 0) == 0) {
        const size_t k = std::strlen(key);
        line = key + fs::path(line.substr(k)).lexically_normal().string();
      }
    out += line;
    if (!in.eof()) out += '\n';
  }
  return out;
}

// DIR/MANIFEST made whole or not at all: written to MANIFEST.tmp, checked, flushed to the disk,
// then renamed over it. An unchecked write on a full disk left an empty MANIFEST, which made the
// journal's finished records another run's.
static void write_manifest(const std::string& dir, const std::string& manifest) {
  const std::string tmp = dir + "/MANIFEST.tmp", path = dir + "/MANIFEST";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = fd >= 0 ? 0 : errno;
  for (size_t done = 0; err == 0 && done < manifest.size();) {
    const ssize_t n = ::write(fd, manifest.data() + done, manifest.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      err = n < 0 ? errno : EIO;
    else
      done += (size_t)n;
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (fd >= 0 && ::close(fd) != 0 && err == 0) err = errno;
  std::error_code ec;
  if (err == 0) fs::rename(tmp, path, ec);
  if (err != 0 || ec) {
    const std::string why = err ? std::strerror(err) : ec.message();
    fs::remove(tmp, ec);
    throw SystemError(path + ": cannot write it: " + why +
                      (err == ENOSPC || err == EDQUOT ? " (disk full)"
                       : err == EFBIG && file_size_limit() >= 0
                           ? " (" + file_size_limit_text(file_size_limit()) + ")"
                           : "") +
                      "; a MANIFEST that was there is unchanged");
  }
}

// Replaces the whole line `from` of a manifest by `to`; false when no line is `from`.
static bool replace_line(std::string& manifest, const std::string& from, const std::string& to) {
  for (size_t at = 0; (at = manifest.find(from, at)) != std::string::npos; ++at) {
    const size_t end = at + from.size();
    if ((at == 0 || manifest[at - 1] == '\n') &&
        (end == manifest.size() || manifest[end] == '\n')) {
      manifest.replace(at, from.size(), to);
      return true;
    }
  }
  return false;
}

// Compared by key (a line's first word), not line by line: one more input would otherwise shift
// every line after it and name two unrelated lines ("'input b.fa' now vs 'pool none'").
std::string first_difference(const std::string& a, const std::string& b) {
  using Lines = std::vector<std::pair<std::string, std::vector<std::string>>>;  // key, its values
  auto entry = [](auto& lines, const std::string& key) {  // in the manifest's order
    return std::find_if(lines.begin(), lines.end(), [&](const auto& e) { return e.first == key; });
  };
  auto parse = [&](const std::string& text) {
    Lines out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      const size_t sp = line.find(' ');
      std::string key = line.substr(0, sp),
                  value = sp == std::string::npos ? "" : line.substr(sp + 1);
      auto it = entry(out, key);
      if (it == out.end()) it = out.insert(out.end(), {key, {}});
      it->second.push_back(std::move(value));
    }
    return out;
  };
  const Lines now = parse(a), before = parse(b);
  // The version line first: a journal of another version differs everywhere.
  if (!now.empty() && !before.empty() && now[0].first == "sparsa-journal" &&
      before[0].first == "sparsa-journal" && now[0].second != before[0].second)
    return "written by another version of sparsa: 'sparsa-journal " + before[0].second[0] +
           "', this one writes 'sparsa-journal " + now[0].second[0] + "'";
  auto values = [&](const Lines& l, const std::string& key) {
    const auto it = entry(l, key);
    return it == l.end() ? std::vector<std::string>{} : it->second;
  };
  auto join = [](const std::string& key, const std::vector<std::string>& v) {
    std::string out;  // built with append (GCC 12 warns falsely about "'" + std::string, PR 105651)
    for (const std::string& x : v)
      out.append(out.empty() ? "'" : ", '").append(key).append(" ").append(x).append("'");
    return out.empty() ? std::string("none") : out;
  };
  Lines keys = now;
  for (const auto& e : before)
    if (entry(keys, e.first) == keys.end()) keys.push_back(e);
  for (const auto& [key, unused] : keys) {
    const std::vector<std::string> x = values(now, key), y = values(before, key);
    if (x == y) continue;
    std::vector<std::string> added, gone = y;  // as multisets: y less what x has
    for (const std::string& v : x)
      if (auto it = std::find(gone.begin(), gone.end(), v); it != gone.end())
        gone.erase(it);
      else
        added.push_back(v);
    if (added.empty() && gone.empty())
      return key + " lines in another order: " + join(key, x) + " now vs " + join(key, y);
    if (gone.empty()) return join(key, added) + " added";
    if (added.empty()) return join(key, gone) + " no longer given";
    return join(key, x) + " now vs " + join(key, y);
  }
  return "";
}

bool Journal::present(const std::string& dir) {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename() != "LOCK" && e.path().filename() != kPreviousOutput) return true;
  return false;
}

bool Journal::only_manifest(const std::string& dir) {
  std::error_code ec;
  bool manifest = false;
  for (auto& e : fs::directory_iterator(dir, ec)) {
    const auto name = e.path().filename();
    if (name == "MANIFEST")
      manifest = true;
    else if (name != "LOCK")
      return false;
  }
  return manifest;
}

bool Journal::holds_previous_output() const {
  std::error_code ec;
  return fs::exists(fs::symlink_status(dir_ + "/" + kPreviousOutput, ec));
}

// The refusal for folder `dir` whose lock another live run holds, naming that run from what its
// LOCK file (open as `fd`) says.
static std::string in_use_message(const std::string& dir, int fd) {
  char who[256] = {0};
  const ssize_t got = pread(fd, who, sizeof who - 1, 0);
  std::string holder = got > 0 ? std::string(who, (size_t)got) : std::string("unknown");
  while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
  return dir + " is in use by another sparsa run (" + holder +
         "): wait for it to end, or stop it, before running on this output again (two runs "
         "would overwrite each other's records); if that host is down and its job gone, remove " +
         dir + "/LOCK";
}

// Takes the write lock (fcntl, so the kernel or the NFS server drops it when the process dies)
// on DIR/LOCK and writes who holds it there; returns the open descriptor, or -1 where the file
// system has no locks (then nothing stops two runs: docs/reliability.md). Another live run's lock
// stops this one: two runs on one output would delete and overwrite each other's parts.
static int lock_journal(const std::string& dir) {
  const std::string path = dir + "/LOCK";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw SystemError(path + ": cannot open the journal's lock: " + std::strerror(errno));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    const int err = errno;
    if (err == EACCES || err == EAGAIN) {
      const std::string why = in_use_message(dir, fd);
      ::close(fd);
      throw ConfigError(why);
    }
    ::close(fd);  // ENOLCK, ENOSYS, EOPNOTSUPP: a file system without locks
    return -1;
  }
  char host[128] = "?";
  gethostname(host, sizeof host - 1);
  const char* job = std::getenv("SLURM_JOB_ID");
  const std::string who = std::string("host ") + host + ", pid " + std::to_string(getpid()) +
                          (job ? std::string(", Slurm job ") + job : std::string()) + "\n";
  if (ftruncate(fd, 0) != 0 || pwrite(fd, who.data(), who.size(), 0) < 0) {
  }  // who holds it is for messages only
  return fd;
}

std::string Journal::in_use_by_another_run(const std::string& dir) {
  const int fd = ::open((dir + "/LOCK").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  const bool held = fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;  // (tests, takes none)
  const std::string why = held ? in_use_message(dir, fd) : "";
  ::close(fd);
  return why;
}

Journal::~Journal() {
  drop_group();
  release_lock();
}

// An earlier run's journal goes whole but for the lock this run holds, or the run stops: parts
// left behind (a file that could not be removed) would be taken for this run's finished records.
// Empties a journal folder but for the old output --force set aside and, with `keep_lock`, the
// lock this run holds (with `keep_manifest`, the run's MANIFEST).
static void clear_folder(const std::string& dir, bool keep_lock, std::error_code& ec,
                         bool keep_manifest = false) {
  for (auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename() != Journal::kPreviousOutput &&
        !(keep_lock && e.path().filename() == "LOCK") &&
        !(keep_manifest && e.path().filename() == "MANIFEST"))
      fs::remove_all(e.path(), ec);
}

void Journal::check_folder(const std::string& dir) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (fs::is_symlink(st))
    throw ConfigError(dir +
                      " is a symbolic link: sparsa keeps a run's journal in OUT.parts and "
                      "removes it when the output is in place, so it does not follow a link "
                      "there; remove the link (rm " +
                      dir + ") or choose another --output");
  if (!fs::is_directory(st)) return;  // (a file there: creating the folder says so)
  auto journal_entry = [](const fs::directory_entry& e) {
    std::error_code ec2;
    std::string name = e.path().filename().string();
    if (name == Journal::kPreviousOutput) return true;  // the old output, as --force set it aside
    if (name.rfind(".nfs", 0) == 0) return true;        // NFS: a removed file still open on a node
    if (!e.is_regular_file(ec2)) return false;
    if (name == "LOCK" || name == "MANIFEST" || name == "MANIFEST.tmp") return true;
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0)
      name.resize(name.size() - 4);  // a part being written when a run stopped
    return is_part_name(name, nullptr);
  };
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (!journal_entry(e))
      throw ConfigError(dir + " holds " + e.path().filename().string() +
                        ", which no sparsa run writes: sparsa keeps a run's journal in "
                        "OUT.parts, empties it to start over and removes it at the end, so it "
                        "does not use a folder with other files in it; move them (or the folder) "
                        "away, or choose another --output");
  if (ec) throw SystemError(dir + ": cannot list the journal folder: " + ec.message());
}

static void clear_or_throw(const std::string& dir) {
  std::error_code ec;
  clear_folder(dir, true, ec);
  if (ec || Journal::present(dir))
    throw SystemError(dir + ": cannot remove the earlier run's journal" +
                      (ec ? ": " + ec.message() : std::string()) + "; remove it by hand");
}

// A journal's MANIFEST text without its `compute ` lines (what computed the records: not part of
// what makes two runs the same run, so a resume on another kind of node continues), which go to
// `computes`.
static std::string split_computes(const std::string& text, std::vector<std::string>* computes) {
  std::istringstream in(text);
  std::string out, line;
  while (std::getline(in, line)) {
    if (line.rfind("compute ", 0) == 0) {
      computes->push_back(line.substr(8));
      continue;
    }
    out += line;
    if (!in.eof()) out += '\n';
  }
  return out;
}

Journal::Journal(const std::string& output, const std::string& manifest, bool resume, bool force,
                 Comm& comm, const std::vector<std::string>& compute)
    : dir_(output + ".parts") {
  if (const char* e = std::getenv("SPARSA_GROUP_SECONDS"); e && *e) {
    double v = 0;
    if (!whole_number(e, 0, 1e6, &v))
      throw ConfigError(std::string("SPARSA_GROUP_SECONDS=") + e +
                        ": not a number of seconds (0 or more; 0: a part for every record)");
    group_seconds_ = v;
  } else {
    group_seconds_ = default_group_seconds(comm.size());
  }
  // Rank 0 decides; everyone learns the outcome (an error text, or the finished records: found_,
  // made by rank 0 and sent as it is).
  std::string error;
  int64_t error_is_config = 0;  // the error's type travels with its text
  if (comm.rank() == 0) {
    try {
      std::error_code ec;
      const bool existed = present(dir_);
      fs::create_directories(dir_, ec);
      if (ec) throw SystemError(dir_ + ": cannot create the journal folder: " + ec.message());
      // The lock before anything in the folder is read or removed, held from here on: another
      // run still at work here stops this one, whatever --resume or --force say, and two runs
      // started together cannot both clear and reuse the folder.
      lock_fd_ = lock_journal(dir_);
      // The journal's run, as this run takes it: --invalid-as-n added on --resume (the advice of
      // an invalid character's error) continues it, since the records finished without it held
      // no invalid character, so they are what this run would make.
      std::string old;
      std::vector<std::string> old_computes;
      auto with_computes = [&](const std::vector<std::string>& computes) {
        std::string text = manifest;
        for (const std::string& c : computes) text += "compute " + c + "\n";
        return text;
      };
      if (existed && resume) {
        old = normalized_manifest(split_computes(read_text(dir_ + "/MANIFEST"), &old_computes));
        if (std::string with = old; old != manifest &&
                                    replace_line(with, "invalid_as_n 0", "invalid_as_n 1") &&
                                    with == manifest) {
          write_manifest(dir_, with_computes(old_computes));  // this run's from here on
          old = manifest;
        }
      }
      // The old output an earlier --force run set aside goes when this run's output is in place:
      // only a run that asks for that (--force) or continues that run's journal may take it on.
      if (!force && fs::exists(fs::symlink_status(dir_ + "/" + kPreviousOutput, ec)) &&
          !(existed && resume && old == manifest))
        throw ConfigError(dir_ + "/" + kPreviousOutput + " is the old " + output +
                          " that an earlier --force run set aside; this run would remove it when "
                          "it finishes: pass --force to replace it, or move it back first to "
                          "keep it (mv " +
                          dir_ + "/" + kPreviousOutput + " " + output + ")");
      if (existed) {
        if (resume) {
          if (old != manifest && !force)
            throw ConfigError("--resume: " + dir_ + " was made by a different run (" +
                              first_difference(manifest, old) +
                              "); use the same model, inputs and options, or --force");
          if (old != manifest) {  // --resume --force: this run's journal continues, another goes
            discarded_ = first_difference(manifest, old);
            clear_or_throw(dir_);
          }
        } else if (!force && count_parts() > 0) {
          throw ConfigError(dir_ +
                            " holds the finished records of an earlier run: pass --resume "
                            "to continue it, or --force to start over");
        } else {  // --force, or nothing finished to keep (a killed run's MANIFEST and .tmp)
          clear_or_throw(dir_);
        }
      }
      // What computed the journal's records: a resume on another kind of node (other OpenBLAS
      // kernels, another GPU) adds its own, said by compute_note().
      auto quoted = [](const std::vector<std::string>& v) {
        std::string q;
        for (const std::string& c : v) q += (q.empty() ? "'" : ", '") + c + "'";
        return q;
      };
      std::vector<std::string> added;  // this run's kinds the journal does not hold
      if (existed && resume && old == manifest && fs::exists(dir_ + "/MANIFEST")) {
        computes_ = old_computes;
        for (const std::string& c : compute)
          if (!c.empty() && std::find(computes_.begin(), computes_.end(), c) == computes_.end()) {
            added.push_back(c);
            computes_.push_back(c);
          }
        if (!added.empty()) {
          if (!old_computes.empty())
            compute_note_ = quoted(old_computes) + "; this run adds " + quoted(added);
          try {
            write_manifest(dir_, with_computes(computes_));
          } catch (const SystemError&) {  // (a full disk: the resume goes on, said anyway)
          }
        }
      } else {
        for (const std::string& c : compute)
          if (!c.empty()) computes_.push_back(c);
      }
      if (!fs::exists(dir_ + "/MANIFEST")) write_manifest(dir_, with_computes(computes_));
      std::vector<std::pair<int64_t, std::string>> parts;
      for (auto& e : fs::directory_iterator(dir_)) {
        const std::string name = e.path().filename().string();
        if (int64_t index = 0; is_part_name(name, &index))
          parts.emplace_back(index, e.path().string());
        else if (name.find(".tmp") != std::string::npos)
          fs::remove(e.path(), ec);  // a part that was being written when the run stopped
      }
      std::sort(parts.begin(), parts.end());
      for (const auto& [first, path] : parts) {
        std::vector<std::pair<int64_t, std::string>> recs;  // index, input_sha256
        const int32_t file = part_id(path);
        try {
          const h5::File part = h5::File::open_read(path);
          for (const auto& [index, key] : part_records(part))
            recs.emplace_back(index, part.has_attr("/records/" + key, "input_sha256")
                                         ? part.attr_string("/records/" + key, "input_sha256")
                                         : std::string());
        } catch (const std::exception&) {  // unreadable: its first record is embedded again
          recs.assign(1, {first, std::string()});
        }
        for (const auto& [index, fp] : recs) {
          // An index no input reaches (a stray or damaged part name of up to 18 digits) is not
          // a record of this run; taken, it would size the tables by it.
          if (index < 1 || index > (int64_t{1} << 40)) continue;
          Found f;
          f.index = index;
          f.part = file;
          f.has_fp = fp_bytes(fp, f.fp);
          found_.push_back(f);
        }
      }
    } catch (const ConfigError& e) {
      error = e.what();
      error_is_config = 1;
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "journal error";
    }
  }
  if (comm.rank() != 0) discarded_.clear();  // rank 0 reports it
  // By index; a record several parts hold keeps the parts' order (sorted by their names, and
  // numbered in that order by part_id). In place: no second copy of the table.
  std::sort(found_.begin(), found_.end(), [](const Found& a, const Found& b) {
    return a.index != b.index ? a.index < b.index : a.part < b.part;
  });
  if (!error.empty()) found_.clear();
  int64_t sizes[3] = {(int64_t)error.size(), (int64_t)found_.size(), error_is_config};
  comm.broadcast(sizes, sizeof sizes, 0);
  error.resize(sizes[0]);
  if (sizes[0]) comm.broadcast(error.data(), sizes[0], 0);
  if (!error.empty()) {
    release_lock();  // no destructor runs for a constructor that throws
    if (sizes[2]) throw ConfigError(error);
    throw SystemError(error);
  }
  static_assert(std::is_trivially_copyable_v<Found>, "found_ is sent as its bytes");
  found_.resize(sizes[1]);  // (10^8 records: 4.8 GB, in pieces)
  broadcast_big(comm, found_.data(), sizes[1] * (int64_t)sizeof(Found));
  for (Found& f : found_) {
    if (comm.rank() != 0) f.part = -1;  // (parts_ is rank 0's)
    set_done(f.index, true);
  }
}

void Journal::set_done(int64_t index, bool done) {
  if (index < 0 || (!done && index >= (int64_t)done_.size())) return;
  if (index >= (int64_t)done_.size())
    done_.resize(std::max<size_t>(index + 1, 2 * done_.size()), 0);
  done_[index] = done;
}

int32_t Journal::part_id(const std::string& part) {
  auto [it, added] = part_ids_.try_emplace(part, (int32_t)parts_.size());
  if (added) parts_.push_back(part);
  return it->second;
}

void Journal::set_source(int64_t index, int32_t part) {
  if (index >= (int64_t)source_.size())
    source_.resize(std::max<size_t>(index + 1, 2 * source_.size()), -1);
  source_[index] = part;
}

// The index's entries of found_ (sorted by index), as [lo, hi).
template <class V>
static auto found_range(V& found, int64_t index) {
  auto lo = std::lower_bound(found.begin(), found.end(), index,
                             [](const auto& f, int64_t i) { return f.index < i; });
  auto hi = lo;
  while (hi != found.end() && hi->index == index) ++hi;
  return std::pair{lo, hi};
}

void Journal::forget_found(int64_t index) {
  auto [lo, hi] = found_range(found_, index);
  for (; lo != hi; ++lo) lo->live = false;
}

bool Journal::same_record(int64_t index, const std::string& fingerprint) {
  std::array<uint8_t, 32> fp{};
  if (!fp_bytes(fingerprint, fp)) return false;
  auto [lo, hi] = found_range(found_, index);
  for (auto it = lo; it != hi; ++it) {
    if (!it->live || !it->has_fp || it->fp != fp) continue;
    if (it->part >= 0) set_source(index, it->part);  // rank 0: the part assembled
    forget_found(index);                             // checked: kept as a record of this run
    return true;
  }
  return false;
}

bool Journal::unreadable(int64_t index) const {
  auto [lo, hi] = found_range(found_, index);
  for (auto it = lo; it != hi; ++it)
    if (it->live && it->has_fp) return false;
  return true;
}

void Journal::redo(int64_t index) {
  set_done(index, false);
  forget_found(index);
  if (part_of(index) >= 0) source_[index] = -1;
}

int64_t Journal::count_parts_in(const std::string& dir) {
  int64_t n = 0;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (is_part_name(name, nullptr)) ++n;
  }
  return n;
}

bool Journal::parts_open() const {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0 &&
        is_part_name(name.substr(0, name.size() - 4), nullptr))
      return true;
  }
  return false;
}

// Each record once: a group made again after its input changed (NNNNNN.1.h5) leaves the old
// group's copies of the changed records beside the new ones.
int64_t Journal::count_records() const {
  int64_t n = 0;
  std::vector<bool> seen;  // (a damaged key's huge index goes to `far`, not into this table)
  std::set<int64_t> far;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir_, ec)) {
    if (!is_part_name(e.path().filename().string(), nullptr)) continue;
    try {
      for (const auto& [index, key] : part_records(h5::File::open_read(e.path().string()))) {
        if (index >= (int64_t{1} << 28)) {
          n += far.insert(index).second;
          continue;
        }
        if ((int64_t)seen.size() <= index) seen.resize(index + 1);
        if (!seen[index]) n += (seen[index] = true);
      }
    } catch (const std::exception&) {  // unreadable: none
    }
  }
  return n;
}

void Journal::remove() {
  drop_group();
  release_lock();
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

// The MANIFEST stays with the old output: it says which run the old output waits for, so that
// this command with --resume (what `sparsa inspect` and the messages advise) may take it on.
void Journal::remove_but_previous_output() {
  if (!holds_previous_output()) return remove();
  drop_group();
  release_lock();
  std::error_code ec;
  clear_folder(dir_, false, ec, true);
}

// Closed before the folder is removed: NFS keeps a file that is still open as .nfsXXXX, and the
// folder (empty but for it) would stay beside the output.
void Journal::release_lock() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
}

namespace {
// The record's group, its attributes and its (empty) embedding dataset.
std::string write_head(h5::File& f, int64_t index, const RecordOutput& r, bool f16) {
  const Record& rec = *r.record;
  const std::string g = "/records/" + Journal::key_for(index - 1, rec.name);
  f.create_group(g);
  std::vector<h5::File::NewAttr> attrs = {
      {"name", rec.name},  {"description", rec.description}, {"source", rec.source},
      {"kind", r.kind},    {"length", "", r.length, true},   {"region", rec.region},
      {"strand", r.strand}};
  if (!rec.region_name.empty()) attrs.push_back({"region_name", rec.region_name});
  if (rec.read_as_n > 0) attrs.push_back({"invalid_as_n", "", rec.read_as_n, true});
  if (!r.fingerprint.empty()) attrs.push_back({"input_sha256", r.fingerprint});
  f.add_new_attrs(g, attrs);
  f.create_rows(g + "/embedding", r.n_out_total, r.d, f16 ? h5::Dtype::kF16 : h5::Dtype::kF32);
  return g;
}

void write_tail(h5::File& f, const std::string& g, const RecordOutput& r, bool shared);

// The whole record: its group, its rows [r.row0, r.row0 + r.n_rows), bins, global sets and
// timestamps; `shared`: several ranks write this file (parallel HDF5).
void write_whole(h5::File& f, int64_t index, const RecordOutput& r, bool f16, bool shared) {
  const std::string g = write_head(f, index, r, f16);
  if (r.rows16) {
    if (!f16) throw SystemError("internal: float16 rows for a float32 output");
    f.write_f16_rows_collective(g + "/embedding", r.row0, r.n_rows, r.d, r.rows16);
  } else {
    f.write_rows_collective(g + "/embedding", r.row0, r.n_rows, r.d, r.rows);
  }
  write_tail(f, g, r, shared);
}

// The bins of rows [r.row0, r.row0 + r.n_rows), the global sets and the timestamps; `shared`:
// several ranks write this file (parallel HDF5).
void write_tail(h5::File& f, const std::string& g, const RecordOutput& r, bool shared) {
  const Record& rec = *r.record;
  std::vector<int64_t> s(r.n_rows), e(r.n_rows);
  for (int64_t i = 0; i < r.n_rows; ++i) {
    s[i] = r.starts[i] + rec.offset;
    e[i] = r.ends[i] + rec.offset;
  }
  f.create_vector_i64(g + "/bin_start", r.n_out_total);
  f.create_vector_i64(g + "/bin_end", r.n_out_total);
  f.write_i64_rows_collective(g + "/bin_start", r.row0, r.n_rows, s.data());
  f.write_i64_rows_collective(g + "/bin_end", r.row0, r.n_rows, e.data());
  f.write_i64(g + "/global_positions", {r.n_layers, r.n_global}, r.global_positions);
  f.write_f32(g + "/global_scores", {r.n_layers, r.n_global}, r.global_scores);
  if (!rec.timestamps.empty()) {
    // Time series are short enough that every rank holds the starts of all bins.
    // The time at each bin's first row, then at its last (the time an embedding row is known
    // as of: a bin's rows end there).
    std::vector<std::string> ts(r.n_rows);
    if (shared) throw SystemError("internal: time-series records are written by one rank");
    for (int64_t i = 0; i < r.n_rows; ++i) ts[i] = std::string(rec.timestamps[r.starts[i]]);
    f.write_strings(g + "/timestamps", ts);
    // (where every bin is one row, --pool none or bin:1, it would be timestamps again; a pooled
    // run writes it for every record, a series of one row included, so that a reader of a panel
    // finds it in each)
    bool wide = r.pooled;
    for (int64_t i = 0; i < r.n_rows && !wide; ++i) wide = r.ends[i] - r.starts[i] > 1;
    if (wide) {
      for (int64_t i = 0; i < r.n_rows; ++i) ts[i] = std::string(rec.timestamps[r.ends[i] - 1]);
      f.write_strings(g + "/timestamps_end", ts);
    }
  }
  if (!rec.ts_scale.empty())
    f.write_f64(g + "/ts_scale", {(int64_t)rec.ts_scale.size()}, rec.ts_scale.data());
}
}  // namespace

void Journal::write_part(int64_t index, const RecordOutput& r, bool f16, bool parallel,
                         Comm& comm) {
  const std::string tmp = part_path(index) + ".tmp";
  const bool writer = parallel || comm.rank() == 0;
  const int64_t bytes = r.n_out_total * (r.d * (f16 ? 2 : 4) + 16);  // rows, bin_start, bin_end
  if (writer) {
    // Parallel HDF5's create, writes and close are MPI-IO collectives: watched like any other, so
    // a rank that dies inside them does not leave the others waiting.
    std::optional<Watched> watched;
    if (parallel) watched.emplace(comm, "a parallel HDF5 write of a record's part", bytes);
    h5::File f = parallel ? h5::File::create_parallel(tmp) : h5::File::create(tmp);
    write_whole(f, index, r, f16, parallel && comm.size() > 1);
    f.close();
  }
  if (parallel) {
    comm.barrier();  // every rank's rows are in the file before it is renamed
  } else if (comm.size() > 1) {
    // Rank 0 wrote a split record's part alone (serial HDF5, or a time series): the others wait
    // for it here, allowed the bytes' time, rather than in their next collective, which allows
    // the timeout alone.
    Watched watched(comm, "rank 0's write of a record's part", bytes);
    comm.barrier();
  }
  if (comm.rank() == 0)
    commit_part(tmp, {index});
  else
    set_done(index, true);  // written by this run
}

void Journal::commit_part(const std::string& tmp, const std::vector<int64_t>& indices) {
  // A part of an earlier run may have this name and still hold records this run resumed from
  // (a group whose first record was embedded again): never replaced, this part takes NNNNNN.K.
  const std::string base = part_path(indices.front());
  std::string final_part = base;
  std::error_code ec;
  for (int k = 1; fs::exists(final_part, ec); ++k)
    final_part = base.substr(0, base.size() - 3) + "." + std::to_string(k) + ".h5";
  fs::rename(tmp, final_part, ec);
  if (ec) throw SystemError(final_part + ": cannot finish the part: " + ec.message());
  for (int64_t index : indices) {
    set_done(index, true);
    forget_found(index);  // written by this run: no earlier fingerprint applies
    set_source(index, part_id(final_part));
  }
  last_part_ = std::chrono::steady_clock::now();
}

void Journal::write_grouped(int64_t index, const RecordOutput& r, bool f16) {
  if (!group_) {
    auto g = std::make_unique<Group>();
    g->tmp = part_path(index) + ".tmp";
    g->file = std::make_unique<h5::File>(h5::File::create(g->tmp));
    group_ = std::move(g);
  }
  Group& G = *group_;
  try {
    write_whole(*G.file, index, r, f16, false);
  } catch (...) {
    drop_group();  // the file may be damaged: the group's records are embedded again
    throw;
  }
  G.indices.push_back(index);
  G.bytes += r.n_rows * r.d * (f16 ? 2 : 4);
  if ((int64_t)G.indices.size() >= kGroupRecords || G.bytes >= kGroupBytes) flush_group();
  flush_group_if_due();
}

void Journal::flush_group_if_due() {
  if (group_ &&
      std::chrono::duration<double>(std::chrono::steady_clock::now() - last_part_).count() >=
          group_seconds_)
    flush_group();
}

void Journal::gather_sources(Comm& comm) {
  // Each rank's text: its part paths ("P path"), then "index part" lines numbering them from 0
  // (a few bytes a record, not its path); a "B" line starts a rank's text.
  std::string mine;
  if (comm.rank() != 0) {
    mine = "B\n";
    for (const std::string& p : parts_) mine += "P " + p + '\n';
    for (size_t index = 0; index < source_.size(); ++index)
      if (source_[index] >= 0)
        mine += std::to_string(index) + ' ' + std::to_string(source_[index]) + '\n';
  }
  std::vector<uint8_t> all;
  comm.gatherv(mine.data(), (int64_t)mine.size(), all, nullptr, 0);
  if (comm.rank() != 0) return;
  std::istringstream in(std::string(all.begin(), all.end()));
  std::vector<std::string> theirs;  // the paths of the rank being read
  for (std::string line; std::getline(in, line);) {
    if (line == "B") {
      theirs.clear();
    } else if (line.rfind("P ", 0) == 0) {
      theirs.push_back(line.substr(2));
    } else if (const size_t sp = line.find(' '); sp != std::string::npos) {
      const int64_t index = std::stoll(line.substr(0, sp));
      const auto part = (size_t)std::stoll(line.substr(sp + 1));
      if (part < theirs.size() && part_of(index) < 0)
        set_source(index, part_id(theirs[part]));  // rank 0's own win
    }
  }
}

void Journal::flush_group() {
  if (!group_) return;
  std::unique_ptr<Group> g = std::move(group_);
  try {
    g->file->close();
    g->file.reset();
    if (!g->indices.empty()) commit_part(g->tmp, g->indices);
  } catch (...) {
    g->file.reset();
    std::remove(g->tmp.c_str());
    throw;
  }
  if (g->indices.empty()) std::remove(g->tmp.c_str());
}

void Journal::drop_group() {
  if (!group_) return;
  try {
    if (group_->file) group_->file->close();
  } catch (...) {  // the error that got us here is the one to report
  }
  group_->file.reset();
  std::remove(group_->tmp.c_str());
  group_.reset();
}

PartStream::PartStream(Journal& j, int64_t index, const RecordOutput& r, bool f16)
    : journal_(j),
      index_(index),
      f16_(f16),
      d_(r.d),
      n_rows_(r.n_out_total),
      tmp_(j.part_path(index) + ".tmp") {
  file_ = std::make_unique<h5::File>(h5::File::create(tmp_));
  group_ = write_head(*file_, index, r, f16);
}

PartStream::~PartStream() {
  if (finished_) return;
  try {
    if (file_) file_->close();
  } catch (...) {  // the error that got us here is the one to report
  }
  file_.reset();
  std::remove(tmp_.c_str());
}

void PartStream::check_rows(int64_t row0, int64_t n_rows) const {
  if (row0 < 0 || n_rows < 0 || row0 + n_rows > n_rows_ || finished_)
    throw SystemError("internal: rows " + std::to_string(row0) + ".." +
                      std::to_string(row0 + n_rows) + " do not fit the part of " +
                      std::to_string(n_rows_) + " rows");
}

void PartStream::rows(int64_t row0, int64_t n_rows, const uint16_t* rows16) {
  check_rows(row0, n_rows);
  written_ += n_rows;
  if (!f16_) throw SystemError("internal: float16 rows for a float32 output");
  file_->write_f16_rows_collective(group_ + "/embedding", row0, n_rows, d_, rows16);
}

void PartStream::rows(int64_t row0, int64_t n_rows, const float* rows) {
  check_rows(row0, n_rows);
  written_ += n_rows;
  // A block of rows a write: a float16 file's conversion buffer (in the writer) stays small.
  const int64_t block = std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(1, d_));
  for (int64_t r0 = 0; r0 < n_rows; r0 += block)
    file_->write_rows_collective(group_ + "/embedding", row0 + r0, std::min(block, n_rows - r0), d_,
                                 rows + r0 * d_);
}

void PartStream::finish(const RecordOutput& r) {
  if (r.n_out_total != n_rows_ || r.row0 != 0 || r.n_rows != n_rows_)
    throw SystemError("internal: the streamed part's bins do not match its rows");
  if (written_ != n_rows_)  // rows never written would read back as zeros
    throw SystemError("internal: " + std::to_string(written_) + " rows written of " +
                      std::to_string(n_rows_));
  write_tail(*file_, group_, r, false);
  file_->close();
  file_.reset();
  journal_.commit_part(tmp_, {index_});
  finished_ = true;
}

static void set_file_attrs(h5::File& f, const FileAttrs& a) {
  f.set_attr("/", "format", std::string("sparsa-embeddings"));
  f.set_attr("/", "format_version", (int64_t)1);
  f.set_attr("/", "sparsa_version", a.sparsa_version);
  f.set_attr("/", "model_sha256", a.model_sha256);
  f.set_attr("/", "model_config", a.model_config);
  f.set_attr("/", "command_line", a.command_line);
  f.set_attr("/", "created_utc", a.created_utc);
  f.set_attr("/", "pool", a.pool);
  f.set_attr("/", "dtype", a.dtype);
  f.set_attr("/", "run_manifest", a.manifest);
  if (!a.working_directory.empty()) f.set_attr("/", "working_directory", a.working_directory);
  if (!a.compute.empty()) f.set_attr("/", "compute", a.compute);
}

// Moves `from` to `output` (one rename: the output appears whole or not at all), then drops the
// journal. If the rename fails, an assembled OUT.tmp is removed; a journal part is kept.
void Journal::finish_as(const std::string& from, const std::string& output) {
  std::error_code ec;
  fs::rename(from, output, ec);
  if (ec) {
    if (from.compare(0, dir_.size(), dir_) != 0) std::remove(from.c_str());
    throw SystemError(output + ": cannot move the finished output into place: " + ec.message());
  }
  set_output_in_place();  // a signal now would only stop the journal's removal, exit non-zero
  // A crashed run's OUT.tmp (or one --force replaces: check_scratch_path let only those through)
  // when this output did not go through OUT.tmp: a one-record part renamed into place.
  if (const std::string stale = output + ".tmp";
      from != stale && fs::is_regular_file(fs::symlink_status(stale, ec)))
    fs::remove(stale, ec);
  release_lock();
  fs::remove_all(dir_, ec);
  if (ec || fs::exists(dir_))
    std::fprintf(stderr,
                 "[sparsa] warning: %s: cannot remove the finished run's journal (%s); "
                 "remove it by hand (the output is complete)\n",
                 dir_.c_str(), ec ? ec.message().c_str() : "files remain");
}

std::string Journal::source_of(int64_t index) const {
  // Every record of this run is in source_: resumed (same_record), written here, or written by
  // another rank (gather_sources).
  const int32_t part = part_of(index);
  if (part < 0)
    throw SystemError(dir_ + ": record " + std::to_string(index) +
                      " is in no part (a journal damaged by a crash or changed by hand?); rerun "
                      "with --force to start over");
  return parts_[part];
}

void Journal::assemble(const FileAttrs& a, int64_t n_records, const std::string& output,
                       const std::function<void(int64_t)>& tick) {
  auto open_part = [&](const std::string& path, bool rw) {
    try {
      return rw ? h5::File::open_rw(path) : h5::File::open_read(path);
    } catch (const Error& e) {
      throw SystemError(std::string(e.what()) +
                        " (a journal part damaged by a crash?); rerun with --force to start over");
    }
  };
  const std::string first = source_of(1);
  if (n_records == 1) {
    // One record: its part becomes the output. The file attributes and `complete` are added in
    // place and the part is renamed, instead of every row being copied into a new file (a genome
    // with --pool none is written once, not twice). A run stopped in between finds the part,
    // attributes and all, on --resume and does the same again (setting an attribute twice is
    // allowed); until the rename nothing is at the output path. (A part that also holds records
    // of an earlier run's longer input is copied from instead.)
    bool alone = false;
    {
      h5::File f = open_part(first, true);
      alone = part_records(f).size() == 1 && f.list("/records").size() == 1;
      if (alone) {
        set_file_attrs(f, a);
        f.set_attr("/", "complete", (int64_t)1);  // last: a file without it is not a result
      }
      f.close();
    }
    if (alone) {
      finish_as(first, output);
      return;
    }
  }
  const std::string tmp = output + ".tmp";
  set_finishing(output.c_str(), tmp.c_str());  // a second Ctrl-C from here removes tmp
  struct EndFinishing {
    ~EndFinishing() { set_finishing(nullptr, nullptr); }
  } end_finishing;
  {
    h5::File out = h5::File::create(tmp);
    try {
      // Each part is opened once and its records copied (the output lists records by name, so
      // the order of copying does not show): other ranks' groups interleave with this rank's.
      std::vector<std::string> order;
      std::map<std::string, std::vector<int64_t>> by_part;
      for (int64_t i = 1; i <= n_records; ++i) {
        const std::string path = i == 1 ? first : source_of(i);
        auto [it, added] = by_part.try_emplace(path);
        if (added) order.push_back(path);
        it->second.push_back(i);
      }
      // The copies' room first (the parts' sizes, a little more for the file's own structure):
      // a disk that fills during H5Ocopy crashed HDF5 1.10 (exit 139); reserved, it stops here
      // with "disk full" and the journal kept for --resume.
      int64_t need = 1 << 20;
      for (const std::string& path : order) {
        std::error_code ec;
        const auto bytes = fs::file_size(path, ec);
        if (!ec) need += (int64_t)bytes + (int64_t)bytes / 64;
      }
      try {
        out.reserve(need);
      } catch (const SystemError& e) {
        throw SystemError(std::string(e.what()) + "; the journal (" + dir_ +
                          ") keeps every record: once that is fixed (more room, or a higher "
                          "file-size limit), run the same command with --resume to write the "
                          "file");
      }
      set_file_attrs(out, a);
      out.create_group("/records");
      for (const std::string& path : order) {
        const h5::File part = open_part(path, false);
        const std::map<int64_t, std::string> keys = part_records(part);
        for (int64_t i : by_part[path]) {
          const auto k = keys.find(i);
          if (k == keys.end())
            throw SystemError(path + ": holds no record " + std::to_string(i) +
                              " (a journal part damaged by a crash?); rerun with --force to "
                              "start over");
          // The part's key has 6+ digits; the output's as many as the last index takes.
          const std::string& key = k->second;
          if (tick) tick(part.storage_bytes("/records/" + key + "/embedding"));
          out.copy_from(
              part, "/records/" + key,
              "/records/" + key_for(i - 1, "", n_records) + key.substr(key.find('_') + 1));
        }
      }
      out.set_attr("/", "complete", (int64_t)1);  // last: a file without it is not a result
      if (tick) tick(0);
      out.close();
    } catch (...) {
      std::remove(tmp.c_str());
      throw;
    }
  }
  finish_as(tmp, output);
}

}  // namespace sparsa
