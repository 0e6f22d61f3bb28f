#include "core/memory.hpp"

#include <algorithm>
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

// What the memory cgroup of this process still allows (limit - usage), -1 where no limit is set.
// cgroup v2: the "0::/path" line of /proc/self/cgroup; v1: the line of the memory controller.
int64_t cgroup_room() {
  std::ifstream in("/proc/self/cgroup");
  for (std::string line; std::getline(in, line);) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    std::string limit, usage;
    if (line.compare(0, a, "0") == 0 && controllers.empty()) {
      limit = "/sys/fs/cgroup" + path + "/memory.max";
      usage = "/sys/fs/cgroup" + path + "/memory.current";
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      limit = "/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes";
      usage = "/sys/fs/cgroup/memory" + path + "/memory.usage_in_bytes";
    } else {
      continue;
    }
    const int64_t l = read_number(limit), u = read_number(usage);
    // (v1 says "no limit" with a number near 2^63)
    if (l >= 0 && u >= 0 && l < (int64_t{1} << 60)) return std::max<int64_t>(l - u, 0);
  }
  return -1;
}
}  // namespace

int64_t host_memory_available() {
  int64_t avail = -1;
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);)
    if (line.compare(0, 13, "MemAvailable:") == 0) {
      std::istringstream s(line.substr(13));
      int64_t kb = 0;
      if (s >> kb) avail = kb * 1024;
      break;
    }
  const int64_t room = cgroup_room();
  if (room >= 0) avail = avail < 0 ? room : std::min(avail, room);
  return avail;
}

}  // namespace sparsa
