// sparsa: the communicator. One flat interface, one level of implementations: a single process
// (no MPI needed at run time) and MPI; the CUDA backend exchanges device buffers over NCCL
// (dist/comm_nccl.hpp), bootstrapped over this one.
// Every rank must make the same collective calls in the same order.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sparsa {

// A point-to-point transfer of one exchange: `bytes` bytes to or from `peer`.
struct Transfer {
  int peer;
  void* data;
  int64_t bytes;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* name() const = 0;
  virtual void barrier() = 0;
  // Rank 0, during work of unbounded length that the others wait for (assembling the output),
  // before each piece of it: a sign of life for wait_for_root, announcing that the next piece
  // moves about `bytes` bytes. The waiting ranks then allow SPARSA_COMM_TIMEOUT plus the time
  // those bytes take at kSlowestBytesPerSecond until the next sign. A message goes at most every
  // second (a quarter of the timeout where that is shorter), and at once for a piece that may take
  // longer than that. Never throws (a sign that cannot be sent is warned about once and only
  // shortens the others' wait); no-op on other ranks.
  virtual void heartbeat(int64_t bytes = 0) { (void)bytes; }
  // Every rank, after such work: returns once rank 0 has called it too. The others' wait is
  // watched from one heartbeat to the next instead of as a whole, so the watchdog ends the job if
  // rank 0 dies or hangs while the work itself may take hours; srun does not end the step for a
  // rank that hangs.
  virtual void wait_for_root() { barrier(); }
  // Arms the watchdog around collective work done outside this interface that moves about
  // `bytes` bytes (a parallel-HDF5 write: MPI-IO's collectives would wait forever for a rank that
  // hung inside them): SPARSA_COMM_TIMEOUT plus their time at kSlowestBytesPerSecond. Calls of
  // this interface inside the scope are covered by that deadline instead of their own. Pair with
  // unwatch; `Watched` does both.
  virtual void watch(const char* what, int64_t bytes = 0) { (void)what, (void)bytes; }
  virtual void unwatch() {}
  // The slowest storage the deadlines above allow for: 32 MiB/s.
  static constexpr double kSlowestBytesPerSecond = 32.0 * 1024 * 1024;
  // Ends every rank at once (MPI_Abort); for a rank that failed while others may wait on it.
  [[noreturn]] virtual void abort(int code) = 0;
  // Every rank contributes `bytes` (may differ per rank); `out` receives the concatenation in rank
  // order; `counts` (optional) the size of each rank's part.
  virtual void allgatherv(const void* data, int64_t bytes, std::vector<uint8_t>& out,
                          std::vector<int64_t>* counts = nullptr) = 0;
  // Like allgatherv, but only `root` receives (out and counts untouched elsewhere).
  virtual void gatherv(const void* data, int64_t bytes, std::vector<uint8_t>& out,
                       std::vector<int64_t>* counts, int root) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  virtual void allreduce_max(int64_t* data, int64_t n) = 0;
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // Starts a neighbour exchange (halo): every send and receive posted at once. Returns a token
  // for wait_exchange; compute may run in between (overlap).
  virtual int start_exchange(const std::vector<Transfer>& sends,
                             const std::vector<Transfer>& recvs) = 0;
  virtual void wait_exchange(int token) = 0;
  // Bytes this rank has sent through start_exchange / allgatherv since creation (measurement).
  int64_t bytes_sent_p2p = 0;
  int64_t bytes_sent_collective = 0;
};

// Comm::broadcast of any size, in pieces of up to 1 GiB (MPI counts are int).
inline void broadcast_big(Comm& c, void* data, int64_t bytes, int root = 0) {
  constexpr int64_t kPiece = int64_t{1} << 30;
  for (int64_t at = 0; at < bytes; at += kPiece)
    c.broadcast(static_cast<char*>(data) + at, bytes - at < kPiece ? bytes - at : kPiece, root);
}

// Comm::watch for one scope.
class Watched {
 public:
  Watched(Comm& c, const char* what, int64_t bytes = 0) : c_(c) { c_.watch(what, bytes); }
  ~Watched() { c_.unwatch(); }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;

 private:
  Comm& c_;
};

// SPARSA_COMM_TIMEOUT in seconds (at least 1; 1800 when unset). A value that is not a number of
// seconds also gives 1800, and *bad (when given) says what is wrong with it, for the command to
// refuse it: "abc" or "30m" read by atof made a 1-second watchdog that killed healthy jobs.
double comm_timeout_env(std::string* bad = nullptr);

// The single-process communicator (rank 0 of 1).
std::unique_ptr<Comm> make_single_comm();
// MPI communicator over MPI_COMM_WORLD, initialising MPI when the process was started by
// mpirun/srun (detected from the environment) and MPI is not initialised yet. Returns the single
// communicator when the process was not launched by an MPI launcher.
std::unique_ptr<Comm> make_world_comm();
// Ranks on this node according to the launcher (OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS,
// SLURM_NTASKS_PER_NODE, or srun's SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID); 1 when unknown.
int local_rank_count();
// The tasks of SLURM_STEP_TASKS_PER_NODE's form ("2(x3),1") on node `node_id` (the largest count
// when node_id is null or not in the list); 0 for a null or malformed list.
int slurm_step_tasks_here(const char* list, const char* node_id);
// This rank's index on its node from the launcher's environment, -1 when unknown. The launchers'
// own variables (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, MV2_COMM_WORLD_LOCAL_RANK,
// PMI_LOCAL_RANK) come before SLURM_LOCALID: ranks that mpirun or mpiexec start inside a Slurm
// job inherit the SLURM_LOCALID of the batch shell or daemon (0 on every rank of a node), which
// is right only for tasks that srun starts itself. The GPU of a rank is chosen from it.
int local_rank();
// True when the environment says this process was started by mpirun/srun with more than 1 rank.
bool launched_by_mpi();
// The number of processes the launcher says it started, with the variable that says it, for a
// process whose MPI may see a world of 1 while that number is > 1 (so it runs alone):
// - mpi_env: an MPI launcher's environment (OMPI_COMM_WORLD_SIZE, PMI_SIZE, or srun's
//   SLURM_STEP_NUM_TASKS beside PMIX_RANK / PMI_RANK) that this MPI did not join (an MPICH
//   mpiexec or an srun plugin this MPI does not speak starting an Open MPI build);
// - otherwise one of the tasks of an srun step without an MPI process manager interface
//   (--mpi=none, Slurm's default): SLURM_STEP_NUM_TASKS.
// {0, ""} when no variable says.
struct LauncherSize {
  int size = 0;
  const char* variable = "";
  bool mpi_env = false;
};
LauncherSize launcher_world_size();

}  // namespace sparsa
