// sparsa: the NCCL communicator of the CUDA backend, for DEVICE buffers (docs/parallel.md, "NCCL").
// It does not replace the host Comm (records, journal and HDF5 stay on MPI); CudaModel uses it for
// the K/V halos and the global gathers when a record is split over ranks (SPARSA_NCCL=0: the
// host-staged path through Comm instead).
//   - Bootstrap over the host Comm (MPI): rank 0 ncclGetUniqueId, MPI_Bcast of its bytes,
//     ncclCommInitRank on the device the caller already selected from the node-local rank (one
//     GPU per rank; two ranks on one GPU is an NCCL error).
//   - NCCL_NVLS_ENABLE is set to 0 when unset: NVLink multicast is not used (it can put a shared
//     host's GPUs out of service; only point-to-point transfers are issued here anyway).
//   - Every NCCL/CUDA call is checked: a failure throws SystemError naming the expression,
//     file:line and rank.
//   - A watchdog thread polls ncclCommGetAsyncError and the deadline of every blocking call and
//     every enqueued operation (SPARSA_COMM_TIMEOUT seconds, default 1800); on an error or a
//     passed deadline it prints why, calls ncclCommAbort, then MPI_Abort. A communicator with
//     unfinished work is aborted, never ncclCommDestroy'ed.
// Every rank must issue the same calls in the same order (as with Comm). Only with
// SPARSA_HAVE_CUDA.
#pragma once
#include <array>
#include <cstdint>
#include <future>
#include <memory>
#include <vector>

#include "dist/comm.hpp"
#include "kernels/common/types.hpp"  // cudaStream_t without CUDA headers

namespace sparsa {

class NcclComm {
 public:
  // Collective over `host` (every rank of it): creates the NCCL communicator of host.size() ranks
  // on `device` (already current in this thread). Throws SystemError on failure.
  NcclComm(Comm& host, int device);
  // The same, with only the bootstrap (the unique id's broadcast over `host`) on this thread:
  // ncclCommInitRank and the warm-up exchange run on a helper thread (no MPI there), so that the
  // ~0.5 s of NCCL's set-up overlaps the caller's. The future yields the communicator or the
  // error. Collective over `host`, like the constructor.
  static std::future<std::unique_ptr<NcclComm>> start(Comm& host, int device);
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const;
  int size() const;
  int device() const;

  // Halo exchange of device buffers (Transfer::data are device pointers): one ncclGroupStart ..
  // ncclGroupEnd holding every ncclSend and ncclRecv, on the communicator's own stream, after the
  // work already enqueued on `after` (an event orders it). Returns at once; compute on `after`
  // overlaps the transfers. Send buffers must stay unchanged and receive buffers unread until
  // wait_exchange.
  int start_exchange(const std::vector<Transfer>& sends, const std::vector<Transfer>& recvs,
                     cudaStream_t after);
  // Completes the exchange `token`: with `consumer` set, work enqueued on `consumer` from now on
  // runs after the transfers (a stream-side wait: the host does not block; the watchdog holds the
  // deadline); with nullptr, the host waits until the exchange stream is done (polling, with the
  // watchdog's deadline and NCCL's asynchronous errors checked).
  void wait_exchange(int token, cudaStream_t consumer);

  // All-gather of variable-size parts of device buffers, enqueued on `stream`: rank r's `bytes`
  // (counts[r], identical on every rank) land at recv + sum(counts[0..r)). Grouped
  // ncclSend/ncclRecv with every peer; this rank's own part is a device copy. Empty parts are
  // skipped (every rank knows them).
  void allgatherv(const void* send, void* recv, const std::vector<int64_t>& counts,
                  cudaStream_t stream);
  // The part sizes for allgatherv when only this rank knows its own (an all-gather over the host
  // communicator, MPI).
  static std::vector<int64_t> part_sizes(Comm& host, int64_t mine);

  // Waits on the host for `stream` (polling with the watchdog's checks).
  void synchronize(cudaStream_t stream);

  int64_t bytes_sent_p2p = 0;
  int64_t bytes_sent_collective = 0;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  using UniqueId = std::array<char, 128>;  // ncclUniqueId's bytes (NCCL_UNIQUE_ID_BYTES)
  static UniqueId bootstrap(Comm& host);   // rank 0 makes the id, every rank receives it
  NcclComm(int rank, int size, int device, const UniqueId& id);
};

// Sets NCCL_NVLS_ENABLE=0, NCCL_MAX_P2P_NCHANNELS=2 and NCCL_CUMEM_ENABLE=0 where unset (the
// user's settings win). setenv is not safe while other threads read the environment: the
// command line calls this first thing; NcclComm calls it again (then a no-op).
void nccl_env_defaults();

// True unless SPARSA_NCCL=0 (the host-staged path through the host Comm, for comparison).
bool nccl_enabled_by_env();

}  // namespace sparsa
