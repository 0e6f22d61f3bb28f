// sparsa core: large host arrays.
#pragma once
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace sparsa {

// v = n value-initialized elements in fresh memory whose pages are first advised huge
// (transparent huge pages, where the kernel allows them; advice only). A record's arrays are GBs
// and every fresh 4 KB page costs a fault: 4 GB of new pages took 17 s on a 2-core VM, 6 s advised.
// The pages are first touched by the OpenMP threads in 64 MB pieces (the faults shared; on a
// machine of several sockets each piece lands near a thread that works on it), polling `cancel`
// (may be null) between pieces: true when it asked to stop, v then empty. dna-base's four arrays
// of a 1 Mb record are 8 GB, ~20 s of faults on one core of that VM, where no stop was seen.
template <class T, class Cancel = bool (*)()>
bool resize_huge(std::vector<T>& v, size_t n, Cancel cancel = nullptr) {
  static_assert(std::is_trivially_copyable_v<T>, "pages are touched as raw bytes");
  v.clear();
  v.shrink_to_fit();
  v.reserve(n);
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t a = ((uintptr_t)v.data() + kHuge - 1) & ~(kHuge - 1),
                  e = (uintptr_t)(v.data() + n) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
  constexpr size_t kPiece = size_t{64} << 20;
  const size_t bytes = n * sizeof(T), pieces = (bytes + kPiece - 1) / kPiece;
  char* base = reinterpret_cast<char*>(v.data());
  std::atomic<bool> stopped{false};
#pragma omp parallel for schedule(dynamic, 1) if (pieces > 1)
  for (size_t i = 0; i < pieces; ++i) {
    if (stopped.load(std::memory_order_relaxed)) continue;
    if (cancel && cancel()) {
      stopped = true;
      continue;
    }
    std::memset(base + i * kPiece, 0, std::min(kPiece, bytes - i * kPiece));
  }
  if (stopped) {
    v.clear();
    v.shrink_to_fit();
    return true;
  }
  // The elements proper: a second, serial pass, but over pages in memory now (a plain memset at
  // memory speed, ~1 s for dna-base's 8 GB). The touch above wrote the reserved storage as raw
  // bytes before any element was made there (storage from the allocator, T trivially copyable);
  // a vector with a default-initialising allocator would spare this pass, at the price of
  // another type for every activation array.
  v.resize(n);
  return false;
}

// Bytes of host memory this process can still take: /proc/meminfo's MemAvailable, lowered to
// what its memory cgroup allows (a Slurm job's --mem, a container's limit) where one is set; -1
// when neither can be read. Past it the kernel's OOM killer ends the process without a word.
int64_t host_memory_available();
// The cgroup part of it: the least room (limit less usage, inactive page cache counted as free)
// of the memory cgroups that `proc_cgroup` (/proc/self/cgroup) names and those above them, under
// `sys_cgroup` (/sys/fs/cgroup; v1's controller in its memory/ folder); -1 where none sets a limit.
int64_t cgroup_room(const std::string& proc_cgroup, const std::string& sys_cgroup);
// Bytes of address space this process may still map under its RLIMIT_AS (`ulimit -v`, a Slurm
// VSizeFactor): the limit less its VmSize now; -1 where there is no limit. Mapped, not used:
// OpenBLAS maps a 128 MB buffer for each thread that calls it, a thread's stack 8 MB.
int64_t address_space_room();
// OpenBLAS's buffer for each thread that calls it, and a thread's stack: what an address-space
// limit must leave for each CPU thread.
constexpr int64_t kBlasThreadBytes = (int64_t{128} + 8) << 20;

}  // namespace sparsa
