// NCCL communicator for device buffers (see comm_nccl.hpp). Compiled only with SPARSA_HAVE_CUDA:
// the CPU-only build globs this file too and gets an empty translation unit.
#ifdef SPARSA_HAVE_CUDA
#include "dist/comm_nccl.hpp"

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "core/env.hpp"
#include "core/error.hpp"

namespace sparsa {

namespace {

[[noreturn]] void fail_nccl(ncclResult_t r, ncclComm_t comm, const char* expr, const char* file,
                            int line, int rank) {
  const char* last = ncclGetLastError(comm);
  throw SystemError(std::string("NCCL error ") + ncclGetErrorString(r) + " in " + expr + " at " +
                    file + ":" + std::to_string(line) + " on rank " + std::to_string(rank) +
                    (last && last[0] ? std::string(": ") + last : std::string()));
}
[[noreturn]] void fail_cuda_rank(cudaError_t e, const char* expr, const char* file, int line,
                                 int rank) {
  throw SystemError(std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ") in " + expr + " at " + file + ":" +
                    std::to_string(line) + " on rank " + std::to_string(rank));
}

}  // namespace

// Checked calls: the expression, file:line and this rank in the message (`rank_` in scope).
#define SPARSA_NCCL_CHECK(comm, expr)                          \
  do {                                                         \
    ncclResult_t r_ = (expr);                                  \
    if (r_ != ncclSuccess && r_ != ncclInProgress)             \
      fail_nccl(r_, (comm), #expr, __FILE__, __LINE__, rank_); \
  } while (0)
#define SPARSA_NCCL_CUDA(expr)                                                   \
  do {                                                                           \
    cudaError_t e_ = (expr);                                                     \
    if (e_ != cudaSuccess) fail_cuda_rank(e_, #expr, __FILE__, __LINE__, rank_); \
  } while (0)

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// NCCL has no timeouts: a peer that died or hangs leaves a kernel spinning forever. The watchdog
// holds two kinds of deadline: a blocking host call (Armed, as in comm_mpi.cpp), and every
// enqueued operation, tracked by an event recorded after it on its stream (the deadline runs from
// the oldest operation not yet seen complete). It also polls ncclCommGetAsyncError. On an error or
// a passed deadline: a message, ncclCommAbort (never ncclCommDestroy), MPI_Abort.
class NcclWatchdog {
 public:
  NcclWatchdog(int rank, int device) : rank_(rank), device_(device) {
    timeout_s_ = comm_timeout_env();
    thread_ = std::thread([this] { loop(); });
  }
  ~NcclWatchdog() {
    stop_ = true;
    thread_.join();
    for (Op& o : ops_) cudaEventDestroy(o.ev);
  }
  void attach(ncclComm_t c) {
    std::lock_guard<std::mutex> g(mu_);
    comm_ = c;
  }
  // Returns the communicator and stops polling it (before it is destroyed or aborted).
  ncclComm_t detach() {
    std::lock_guard<std::mutex> g(mu_);
    ncclComm_t c = comm_;
    comm_ = nullptr;
    return c;
  }
  double timeout_s() const { return timeout_s_; }

  class Armed {
   public:
    Armed(NcclWatchdog& w, const char* what) : w_(w) {
      w_.what_ = what;
      w_.deadline_ns_ = now_ns() + (int64_t)(w_.timeout_s_ * 1e9);
    }
    ~Armed() { w_.deadline_ns_ = 0; }
    Armed(const Armed&) = delete;
    Armed& operator=(const Armed&) = delete;

   private:
    NcclWatchdog& w_;
  };

  // Records "operation `what` enqueued on `stream`" (call right after enqueuing it).
  void track(cudaStream_t stream, const char* what) {
    std::lock_guard<std::mutex> g(mu_);
    Op* op = nullptr;
    for (Op& o : ops_)
      if (o.stream == stream) op = &o;
    if (!op) {
      ops_.push_back(Op{stream, nullptr, 0, what, false});
      op = &ops_.back();
      const cudaError_t e = cudaEventCreateWithFlags(&op->ev, cudaEventDisableTiming);
      if (e != cudaSuccess) {
        ops_.pop_back();
        fail_cuda_rank(e, "cudaEventCreateWithFlags", __FILE__, __LINE__, rank_);
      }
    }
    // The deadline runs from the oldest operation not seen complete: an event that completed
    // since the last poll restarts it.
    if (op->pending && cudaEventQuery(op->ev) == cudaSuccess) op->pending = false;
    if (!op->pending) op->since_ns = now_ns(), op->what = what;
    op->pending = true;
    const cudaError_t e = cudaEventRecord(op->ev, stream);
    if (e != cudaSuccess) fail_cuda_rank(e, "cudaEventRecord", __FILE__, __LINE__, rank_);
  }
  // True when every tracked operation completed and NCCL reports no asynchronous error.
  bool idle() {
    std::lock_guard<std::mutex> g(mu_);
    for (Op& o : ops_)
      if (o.pending) {
        if (cudaEventQuery(o.ev) != cudaSuccess) return false;
        o.pending = false;
      }
    ncclResult_t st = ncclSuccess;
    if (comm_ && ncclCommGetAsyncError(comm_, &st) == ncclSuccess && st != ncclSuccess)
      return false;
    return true;
  }

 private:
  struct Op {
    cudaStream_t stream;
    cudaEvent_t ev;
    int64_t since_ns;
    const char* what;
    bool pending;
  };
  void loop() {
    cudaSetDevice(device_);  // events are queried on this rank's device
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      std::string why;
      {
        std::lock_guard<std::mutex> g(mu_);
        if (comm_) {
          ncclResult_t st = ncclSuccess;
          const ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
          if (r != ncclSuccess)
            why = std::string("ncclCommGetAsyncError failed: ") + ncclGetErrorString(r);
          else if (st != ncclSuccess && st != ncclInProgress) {
            const char* last = ncclGetLastError(comm_);
            why = std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(st) +
                  (last && last[0] ? std::string(" (") + last + ")" : std::string());
          }
        }
        const int64_t now = now_ns(), limit = (int64_t)(timeout_s_ * 1e9);
        for (Op& o : ops_) {
          if (!why.empty() || !o.pending) continue;
          const cudaError_t q = cudaEventQuery(o.ev);
          if (q == cudaSuccess) {
            o.pending = false;
          } else if (q != cudaErrorNotReady) {
            why = std::string("CUDA error while waiting for ") + o.what + ": " +
                  cudaGetErrorString(q);
          } else if (now - o.since_ns > limit) {
            char b[200];
            std::snprintf(b, sizeof b, "%s did not complete within %.0f s", o.what, timeout_s_);
            why = b;
          }
        }
        const int64_t d = deadline_ns_;
        if (why.empty() && d != 0 && now > d) {
          char b[200];
          std::snprintf(b, sizeof b, "%s did not complete within %.0f s", what_.load(), timeout_s_);
          why = b;
        }
        if (!why.empty()) fail(why);  // holds the lock: nothing else touches the comm
      }
    }
  }
  [[noreturn]] void fail(const std::string& why) {
    std::fprintf(stderr,
                 "sparsa: error: rank %d (NCCL, GPU %d): %s: another rank died or hangs, or the "
                 "transport failed; aborting every rank (finished records stay in the journal; "
                 "rerun with --resume)\n",
                 rank_, device_, why.c_str());
    std::fflush(stderr);
    // ncclCommAbort and MPI_Abort may themselves block (a rank that hangs inside a collective):
    // the process ends anyway a few seconds later, as the MPI watchdog's does, so that a job
    // does not hold its GPUs until its time limit.
    std::thread([] {
      std::this_thread::sleep_for(std::chrono::seconds(10));
      std::_Exit(1);
    }).detach();
    if (comm_) ncclCommAbort(comm_);  // never ncclCommDestroy a stuck communicator
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);
  }

  int rank_, device_;
  double timeout_s_;
  std::mutex mu_;
  ncclComm_t comm_ = nullptr;
  std::vector<Op> ops_;
  std::atomic<int64_t> deadline_ns_{0};
  std::atomic<const char*> what_{""};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

struct NcclComm::Impl {
  int rank_ = 0, size_ = 1, device_ = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t halo = nullptr;  // the exchange stream (highest priority, non-blocking)
  cudaEvent_t ready = nullptr;  // orders an exchange after the producer's work
  cudaEvent_t done[2] = {nullptr, nullptr};
  int next_token = 0;
  std::unique_ptr<NcclWatchdog> wd;
};

bool nccl_enabled_by_env() {
  const char* e = std::getenv("SPARSA_NCCL");
  return !(e && e[0] == '0');
}

void nccl_env_defaults() {
  // NVLink multicast (NVLS) stays off unless asked for: it can take a shared host's GPUs out of
  // service, and only point-to-point transfers are issued here.
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  // Send/recv connections are made lazily, per peer and per p2p channel (up to 32 by default),
  // each with buffers mapped through cuMem: 1.2 s for 3 peers on an H200 node. Our transfers are
  // a few MB (halo rows, the global set), which 2 channels carry; with legacy CUDA IPC buffers the
  // set-up takes 0.03 s (bench/NOTES.md). The user's own settings win.
  setenv("NCCL_MAX_P2P_NCHANNELS", "2", 0);
  setenv("NCCL_CUMEM_ENABLE", "0", 0);
}

NcclComm::UniqueId NcclComm::bootstrap(Comm& host) {
  static_assert(sizeof(ncclUniqueId) == sizeof(UniqueId), "ncclUniqueId is 128 bytes");
  nccl_env_defaults();  // a no-op where main() set them already (before any thread started)
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  const int rank_ = host.rank();
  if (rank_ == 0) SPARSA_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
  host.broadcast(&id, sizeof id, 0);  // MPI_Bcast of the id's bytes
  UniqueId out;
  std::memcpy(out.data(), &id, sizeof id);
  return out;
}

NcclComm::NcclComm(Comm& host, int device)
    : NcclComm(host.rank(), host.size(), device, bootstrap(host)) {}

std::future<std::unique_ptr<NcclComm>> NcclComm::start(Comm& host, int device) {
  const UniqueId id = bootstrap(host);
  const int rank = host.rank(), size = host.size();
  return std::async(std::launch::async, [rank, size, device, id] {
    return std::unique_ptr<NcclComm>(new NcclComm(rank, size, device, id));
  });
}

NcclComm::NcclComm(int rank, int size, int device, const UniqueId& uid)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  const int rank_ = rank;
  I.rank_ = rank_;
  I.size_ = size;
  I.device_ = device;
  SPARSA_NCCL_CUDA(cudaSetDevice(device));
  I.wd = std::make_unique<NcclWatchdog>(rank_, device);
  const auto t_init = std::chrono::steady_clock::now();
  ncclUniqueId id;
  std::memcpy(&id, uid.data(), sizeof id);
  {
    NcclWatchdog::Armed armed(*I.wd, "NCCL initialisation (ncclCommInitRank)");
    SPARSA_NCCL_CHECK(nullptr, ncclCommInitRank(&I.comm, I.size_, id, rank_));
  }
  I.wd->attach(I.comm);
  int lo = 0, hi = 0;
  SPARSA_NCCL_CUDA(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  SPARSA_NCCL_CUDA(cudaStreamCreateWithPriority(&I.halo, cudaStreamNonBlocking, hi));
  SPARSA_NCCL_CUDA(cudaEventCreateWithFlags(&I.ready, cudaEventDisableTiming));
  for (cudaEvent_t& e : I.done)
    SPARSA_NCCL_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  // NCCL connects send/recv peers lazily, on the first transfer to each (about 0.2-0.3 s a peer
  // on an H200 node), and the all-gathers of the global set talk to every peer: a grouped
  // exchange with every peer here pays that once, at creation, instead of inside the first
  // layer's gather (SPARSA_NCCL_WARMUP=0 skips it).
  const char* w = std::getenv("SPARSA_NCCL_WARMUP");
  const auto t0 = std::chrono::steady_clock::now();
  if (I.size_ > 1 && !(w && w[0] == '0')) {
    constexpr size_t kPart = 64 << 10;
    void* buf = nullptr;
    SPARSA_NCCL_CUDA(cudaMalloc(&buf, 2 * (size_t)I.size_ * kPart));
    SPARSA_NCCL_CUDA(cudaMemsetAsync(buf, 0, 2 * (size_t)I.size_ * kPart, I.halo));
    char* b = static_cast<char*>(buf);
    {
      NcclWatchdog::Armed armed(*I.wd, "the NCCL warm-up exchange (ncclGroupEnd)");
      SPARSA_NCCL_CHECK(I.comm, ncclGroupStart());
      for (int peer = 0; peer < I.size_; ++peer) {
        if (peer == rank_) continue;
        SPARSA_NCCL_CHECK(I.comm,
                          ncclRecv(b + peer * kPart, kPart, ncclUint8, peer, I.comm, I.halo));
        SPARSA_NCCL_CHECK(
            I.comm, ncclSend(b + (I.size_ + peer) * kPart, kPart, ncclUint8, peer, I.comm, I.halo));
      }
      SPARSA_NCCL_CHECK(I.comm, ncclGroupEnd());
    }
    I.wd->track(I.halo, "the NCCL warm-up exchange");
    synchronize(I.halo);
    SPARSA_NCCL_CUDA(cudaFree(buf));
  }
  if (env_on("SPARSA_PROFILE")) {
    using sec = std::chrono::duration<double>;
    std::fprintf(stderr, "# rank %d: NCCL communicator of %d ranks: init %.3f s, warm-up %.3f s\n",
                 rank_, I.size_, sec(t0 - t_init).count(),
                 sec(std::chrono::steady_clock::now() - t0).count());
  }
}

NcclComm::~NcclComm() {
  Impl& I = *impl_;
  if (I.wd) {
    // A healthy communicator with every operation done is destroyed; one with unfinished work,
    // an asynchronous error, or torn down by an exception (peers may be stuck in a collective)
    // is aborted.
    const bool clean = std::uncaught_exceptions() == 0 && I.wd->idle();
    ncclComm_t c = I.wd->detach();
    if (c) {
      NcclWatchdog::Armed armed(*I.wd, "destroying the NCCL communicator");
      if (clean)
        ncclCommDestroy(c);
      else
        ncclCommAbort(c);
    }
    I.wd.reset();
  }
  if (I.halo) cudaStreamDestroy(I.halo);
  if (I.ready) cudaEventDestroy(I.ready);
  for (cudaEvent_t e : I.done)
    if (e) cudaEventDestroy(e);
}

int NcclComm::rank() const { return impl_->rank_; }
int NcclComm::size() const { return impl_->size_; }
int NcclComm::device() const { return impl_->device_; }

int NcclComm::start_exchange(const std::vector<Transfer>& sends, const std::vector<Transfer>& recvs,
                             cudaStream_t after) {
  Impl& I = *impl_;
  const int rank_ = I.rank_;
  const int token = I.next_token++;
  SPARSA_NCCL_CUDA(cudaEventRecord(I.ready, after));
  SPARSA_NCCL_CUDA(cudaStreamWaitEvent(I.halo, I.ready, 0));
  {
    NcclWatchdog::Armed armed(*I.wd, "a halo exchange (ncclGroupEnd)");
    SPARSA_NCCL_CHECK(I.comm, ncclGroupStart());
    for (const Transfer& r : recvs)
      if (r.bytes > 0)
        SPARSA_NCCL_CHECK(I.comm,
                          ncclRecv(r.data, (size_t)r.bytes, ncclUint8, r.peer, I.comm, I.halo));
    for (const Transfer& s : sends)
      if (s.bytes > 0) {
        SPARSA_NCCL_CHECK(I.comm,
                          ncclSend(s.data, (size_t)s.bytes, ncclUint8, s.peer, I.comm, I.halo));
        bytes_sent_p2p += s.bytes;
      }
    SPARSA_NCCL_CHECK(I.comm, ncclGroupEnd());
  }
  SPARSA_NCCL_CUDA(cudaEventRecord(I.done[token % 2], I.halo));
  I.wd->track(I.halo, "a halo exchange");
  return token;
}

void NcclComm::wait_exchange(int token, cudaStream_t consumer) {
  Impl& I = *impl_;
  const int rank_ = I.rank_;
  if (token < 0 || token >= I.next_token || token + 2 < I.next_token)
    throw SystemError("NcclComm::wait_exchange: unknown token " + std::to_string(token));
  if (consumer) {
    SPARSA_NCCL_CUDA(cudaStreamWaitEvent(consumer, I.done[token % 2], 0));
    I.wd->track(consumer, "work after a halo exchange");
    return;
  }
  NcclWatchdog::Armed armed(*I.wd, "a halo exchange");
  for (;;) {
    const cudaError_t q = cudaEventQuery(I.done[token % 2]);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) SPARSA_NCCL_CUDA(q);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclComm::allgatherv(const void* send, void* recv, const std::vector<int64_t>& counts,
                          cudaStream_t stream) {
  Impl& I = *impl_;
  const int rank_ = I.rank_;
  if ((int)counts.size() != I.size_)
    throw SystemError("NcclComm::allgatherv: " + std::to_string(counts.size()) +
                      " part sizes for " + std::to_string(I.size_) + " ranks");
  std::vector<int64_t> disp(I.size_ + 1, 0);
  for (int r = 0; r < I.size_; ++r) disp[r + 1] = disp[r] + counts[r];
  char* out = static_cast<char*>(recv);
  const int64_t mine = counts[rank_];
  {
    NcclWatchdog::Armed armed(*I.wd, "an all-gather (ncclGroupEnd)");
    SPARSA_NCCL_CHECK(I.comm, ncclGroupStart());
    for (int peer = 0; peer < I.size_; ++peer) {
      if (peer == rank_) continue;
      if (counts[peer] > 0)
        SPARSA_NCCL_CHECK(I.comm, ncclRecv(out + disp[peer], (size_t)counts[peer], ncclUint8, peer,
                                           I.comm, stream));
      if (mine > 0) {
        SPARSA_NCCL_CHECK(I.comm, ncclSend(send, (size_t)mine, ncclUint8, peer, I.comm, stream));
        bytes_sent_collective += mine;
      }
    }
    SPARSA_NCCL_CHECK(I.comm, ncclGroupEnd());
  }
  if (mine > 0 && send != out + disp[rank_])
    SPARSA_NCCL_CUDA(
        cudaMemcpyAsync(out + disp[rank_], send, (size_t)mine, cudaMemcpyDeviceToDevice, stream));
  I.wd->track(stream, "an all-gather");
}

std::vector<int64_t> NcclComm::part_sizes(Comm& host, int64_t mine) {
  std::vector<uint8_t> all;
  host.allgatherv(&mine, 8, all);
  std::vector<int64_t> counts(all.size() / 8);
  if (!all.empty()) std::memcpy(counts.data(), all.data(), all.size());
  return counts;
}

void NcclComm::synchronize(cudaStream_t stream) {
  Impl& I = *impl_;
  const int rank_ = I.rank_;
  NcclWatchdog::Armed armed(*I.wd, "waiting for NCCL work on a stream");
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) SPARSA_NCCL_CUDA(q);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace sparsa
#endif  // SPARSA_HAVE_CUDA
