// sparsa: ranks sharing this rank's CPUs (cpu_share.hpp).
#include "dist/cpu_share.hpp"

#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/error.hpp"
#include "dist/comm.hpp"

namespace sparsa {

std::string node_of_this_process() {
  std::string boot;
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  if (std::getline(in, boot) && !boot.empty()) return "boot " + boot;
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return std::string("host ") + name;
}

CpuClaim this_process_cpus() {
  CpuClaim c;
  c.node = node_of_this_process();
  // The mask, in a set as large as the kernel asks for (EINVAL: too small for its CPUs).
  for (int n = 1024; n <= (1 << 20) && c.cpus.empty(); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (!set) break;
    const size_t bytes = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(bytes, set);
    if (sched_getaffinity(0, bytes, set) == 0) {
      c.cpus.assign((size_t)n / 64, 0);
      for (int i = 0; i < n; ++i)
        if (CPU_ISSET_S(i, bytes, set)) c.cpus[(size_t)i / 64] |= uint64_t{1} << (i % 64);
      while (!c.cpus.empty() && c.cpus.back() == 0) c.cpus.pop_back();
      CPU_FREE(set);
      break;
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;  // (not known: it overlaps every mask)
  }
  return c;
}

int cpu_sharers(const std::vector<CpuClaim>& all, int me) {
  const CpuClaim& mine = all.at(me);
  int n = 0;
  for (const CpuClaim& o : all) {
    if (o.node != mine.node) continue;
    bool common = mine.cpus.empty() || o.cpus.empty();
    for (size_t w = 0; !common && w < mine.cpus.size() && w < o.cpus.size(); ++w)
      common = (mine.cpus[w] & o.cpus[w]) != 0;
    n += common;
  }
  return n;
}

// A claim on the wire: the node's length and bytes, then the mask's words (native order: the
// ranks of one job run the same binary).
static void put(std::vector<uint8_t>& b, const void* p, size_t n) {
  const auto* c = static_cast<const uint8_t*>(p);
  b.insert(b.end(), c, c + n);
}

int ranks_sharing_my_cpus(Comm& comm) {
  if (comm.size() == 1) return 1;
  const CpuClaim mine = this_process_cpus();
  std::vector<uint8_t> wire;
  const uint32_t node_len = (uint32_t)mine.node.size();
  put(wire, &node_len, 4);
  put(wire, mine.node.data(), node_len);
  put(wire, mine.cpus.data(), mine.cpus.size() * 8);
  std::vector<uint8_t> out;
  std::vector<int64_t> counts;
  {
    Watched w(comm, "the start-up exchange of the ranks' CPU masks (a rank that never started?)");
    comm.allgatherv(wire.data(), (int64_t)wire.size(), out, &counts);
  }
  std::vector<CpuClaim> all(counts.size());
  size_t at = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    const size_t end = at + (size_t)counts[r];
    uint32_t len = 0;
    if (end > out.size() || counts[r] < 4)
      throw SystemError("cpu claims: a short message from rank " + std::to_string(r));
    std::memcpy(&len, out.data() + at, 4);
    if (4 + (size_t)len > (size_t)counts[r] || ((size_t)counts[r] - 4 - len) % 8 != 0)
      throw SystemError("cpu claims: a malformed message from rank " + std::to_string(r));
    all[r].node.assign(reinterpret_cast<const char*>(out.data() + at + 4), len);
    all[r].cpus.resize(((size_t)counts[r] - 4 - len) / 8);
    if (!all[r].cpus.empty())
      std::memcpy(all[r].cpus.data(), out.data() + at + 4 + len, all[r].cpus.size() * 8);
    at = end;
  }
  return cpu_sharers(all, comm.rank());
}

}  // namespace sparsa
