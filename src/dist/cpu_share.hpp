// sparsa: how many ranks share this rank's CPUs, for the default thread count. Ranks that a
// launcher bound to CPUs of their own (srun -c N, mpirun --map-by slot:PE=N) each use all of
// theirs; ranks whose masks overlap (mpirun --bind-to none, or a socket bound to several ranks)
// divide them. Known from every rank's (node, affinity mask), gathered once at start-up.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

class Comm;

// The CPUs one process may run on (bit c of word c / 64: CPU c), on its node.
struct CpuClaim {
  std::string node;            // "boot <kernel boot id>", else "host <host name>"
  std::vector<uint64_t> cpus;  // empty: not known (then it counts as overlapping every claim)
};

// This process's node: "boot <id>", its kernel's boot id where Linux has one (containers of one
// node share it, whatever their host names; cloned nodes that share a host name do not), else
// "host <host name>".
std::string node_of_this_process();
// This process's claim: its node and its sched_getaffinity mask.
CpuClaim this_process_cpus();
// How many of `all` (all[me] included) run on all[me]'s node with a CPU in common with it.
int cpu_sharers(const std::vector<CpuClaim>& all, int me);
// Every rank's claim gathered over `comm` (a collective: every rank calls it), and
// cpu_sharers for this rank; 1 on a communicator of one.
int ranks_sharing_my_cpus(Comm& comm);

}  // namespace sparsa
