#include "core/memory.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace sparsa {

namespace {
// The first number in file `path` (a cgroup's "max" or a missing file: -1).
int64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word.empty() || word[0] < '0' || word[0] > '9') return -1;
  try {
    return (int64_t)std::stoull(word);
  } catch (const std::exception&) {
    return -1;
  }
}

// A "key value" line of a memory.stat file (-1 where missing).
int64_t stat_value(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string k;
  int64_t v = 0;
  while (in >> k >> v)
    if (k == key) return v;
  return -1;
}

// What cgroup folder `dir` still allows: its limit less its usage, the page cache it can drop
// (inactive files: the inputs read, the journal's parts written) not counted as used; -1 where
// it sets no limit.
int64_t room_in(const std::string& dir, bool v2) {
  const int64_t limit = read_number(dir + (v2 ? "/memory.max" : "/memory.limit_in_bytes"));
  int64_t used = read_number(dir + (v2 ? "/memory.current" : "/memory.usage_in_bytes"));
  // (v1 says "no limit" with a number near 2^63)
  if (limit < 0 || used < 0 || limit >= (int64_t{1} << 60)) return -1;
  if (const int64_t cache =
          stat_value(dir + "/memory.stat", v2 ? "inactive_file" : "total_inactive_file");
      cache > 0)
    used = std::max<int64_t>(used - cache, 0);
  return std::max<int64_t>(limit - used, 0);
}
}  // namespace

// What the memory cgroups of this process still allow: the least room of its cgroup and those
// above it (Slurm sets a job's --mem on job_N and step_N, above the task's own), -1 where none
// sets a limit. cgroup v2: the "0::/path" line of /proc/self/cgroup; v1: the memory
// controller's line. A path outside the namespace's view (a container's) ends at its root.
int64_t cgroup_room(const std::string& proc_cgroup, const std::string& sys_cgroup) {
  std::ifstream in(proc_cgroup);
  int64_t least = -1;
  for (std::string line; std::getline(in, line);) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const bool v2 = line.compare(0, a, "0") == 0 && controllers.empty();
    if (!v2 && ("," + controllers + ",").find(",memory,") == std::string::npos) continue;
    const std::string root = v2 ? sys_cgroup : sys_cgroup + "/memory";
    for (std::filesystem::path p = line.substr(b + 1);; p = p.parent_path()) {
      if (const int64_t room = room_in(root + p.string(), v2); room >= 0)
        least = least < 0 ? room : std::min(least, room);
      if (p == p.root_path() || p.empty()) break;
    }
  }
  return least;
}

// The bytes of a "Key:  N kB" line of a /proc file (meminfo, self/status); -1 where missing.
static int64_t proc_kb_line(const char* path, const std::string& key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (line.compare(0, key.size(), key) == 0) {
      std::istringstream s(line.substr(key.size()));
      int64_t kb = 0;
      return s >> kb ? kb * 1024 : -1;
    }
  return -1;
}

int64_t address_space_room() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return -1;
  return (int64_t)rl.rlim_cur - std::max<int64_t>(0, proc_kb_line("/proc/self/status", "VmSize:"));
}

int64_t host_memory_available() {
  int64_t avail = proc_kb_line("/proc/meminfo", "MemAvailable:");
  const int64_t room = cgroup_room("/proc/self/cgroup", "/sys/fs/cgroup");
  if (room >= 0) avail = avail < 0 ? room : std::min(avail, room);
  return avail;
}

}  // namespace sparsa
