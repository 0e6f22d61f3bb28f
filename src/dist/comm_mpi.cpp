// MPI communicator. MPI is initialised once, here, only when a launcher started the process.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <limits>
#include <string_view>
#include <thread>

#include "core/error.hpp"
#include "dist/comm.hpp"

namespace sparsa {

namespace {

#define SPARSA_MPI_CHECK(call)                                                                  \
  do {                                                                                          \
    int rc_ = (call);                                                                           \
    if (rc_ != MPI_SUCCESS) {                                                                   \
      char msg_[MPI_MAX_ERROR_STRING];                                                          \
      int len_ = 0;                                                                             \
      MPI_Error_string(rc_, msg_, &len_);                                                       \
      throw SystemError(std::string("MPI error in ") + #call + " at " + __FILE__ + ":" +        \
                        std::to_string(__LINE__) + " on rank " + std::to_string(rank_) + ": " + \
                        std::string(msg_, len_));                                               \
    }                                                                                           \
  } while (0)

int to_int(int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max())
    throw SystemError(std::string("MPI message too large for one call: ") + what);
  return (int)v;
}

// The watchdog: MPI has no timeouts, so a rank that died without its launcher noticing, or
// hangs, would leave the others waiting forever. Every blocking call arms a deadline; a thread
// aborts the job when one passes (SPARSA_COMM_TIMEOUT seconds, default 1800; docs/reliability.md).
class Watchdog {
 public:
  explicit Watchdog(int rank) : rank_(rank) {
    timeout_s_ = comm_timeout_env();
    thread_ = std::thread([this] { loop(); });
  }
  ~Watchdog() {
    stop_ = true;
    thread_.join();
  }
  double timeout_s() const { return timeout_s_; }
  // Arms the watchdog for the lifetime of one blocking call (no-op without a watchdog). Inside a
  // scope (Comm::watch: `scope` true) the calls arm nothing: the scope's deadline, which allows
  // for its bytes, covers them.
  class Armed {
   public:
    // `extra_s`: seconds allowed beyond the timeout (work that moves many bytes).
    Armed(Watchdog* w, const char* what, double extra_s = 0, bool scope = false)
        : w_(w && (scope || w->scopes_ == 0) ? w : nullptr), scope_(scope) {
      if (w_) {
        prev_deadline_ = w_->deadline_ns_;
        prev_what_ = w_->what_;
        prev_allowed_s_ = w_->allowed_s_;
        w_->arm(what, extra_s);
        if (scope_) ++w_->scopes_;
      }
    }
    // Back to the enclosing deadline, or disarmed.
    ~Armed() {
      if (w_) {
        if (scope_) --w_->scopes_;
        w_->what_ = prev_what_;
        w_->allowed_s_ = prev_allowed_s_;
        w_->deadline_ns_ = prev_deadline_;
      }
    }
    Armed(const Armed&) = delete;
    Armed& operator=(const Armed&) = delete;

   private:
    Watchdog* w_;
    bool scope_;
    int64_t prev_deadline_ = 0;
    const char* prev_what_ = "";
    double prev_allowed_s_ = 0;
  };

 private:
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  void arm(const char* what, double extra_s) {
    what_ = what;
    allowed_s_ = timeout_s_ + extra_s;
    deadline_ns_ = now_ns() + (int64_t)(allowed_s_ * 1e9);
  }
  void loop() {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      int64_t d = deadline_ns_;
      // Fired only if still armed with this deadline: a call that ends just as it passes (its
      // Armed resets the deadline) is not aborted after it returned.
      if (d > 0 && now_ns() > d && deadline_ns_.compare_exchange_strong(d, kFired)) {
        std::fprintf(stderr,
                     "sparsa: error: rank %d: %s did not complete within %.0f s: another rank "
                     "died or hangs; aborting every rank (finished records stay in the journal; "
                     "rerun with --resume)\n",
                     rank_, what_.load(), allowed_s_.load());
        std::fflush(stderr);
        // MPI_Abort itself may not return (inside a finalize that waits for a hung rank): the
        // process ends anyway a few seconds later.
        std::thread([] {
          std::this_thread::sleep_for(std::chrono::seconds(5));
          std::_Exit(1);
        }).detach();
        MPI_Abort(MPI_COMM_WORLD, 1);
        std::_Exit(1);
      }
    }
  }
  static constexpr int64_t kFired = -1;
  int rank_;
  double timeout_s_;
  std::atomic<int64_t> deadline_ns_{0};  // 0: disarmed; kFired: aborting
  std::atomic<const char*> what_{""};
  std::atomic<double> allowed_s_{0};  // the armed call's time: the timeout, plus its bytes' time
  int scopes_ = 0;                    // open Comm::watch scopes (the main thread's alone)
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class MpiComm final : public Comm {
 public:
  explicit MpiComm(bool owns_init) : owns_init_(owns_init) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // Errors come back as codes (then exceptions); the CLI aborts every rank on an error.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (size_ > 1) watchdog_ = std::make_unique<Watchdog>(rank_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_init_ && !finalized) {
      // Open MPI's finalize waits for every rank: one that hangs in its own teardown (a driver
      // call, a stuck NCCL destroy) would hold the job until its time limit.
      Watchdog::Armed armed(watchdog_.get(), "MPI_Finalize at the end of the job");
      MPI_Finalize();
    }
    watchdog_.reset();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "mpi"; }
  void barrier() override {
    Watchdog::Armed armed(watchdog_.get(), "a barrier");
    SPARSA_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  }
  void heartbeat(int64_t bytes) override {
    if (rank_ != 0 || size_ == 1) return;
    const auto now = std::chrono::steady_clock::now();
    const double period = watchdog_ ? std::min(1.0, watchdog_->timeout_s() / 4) : 1.0;
    // At once for a piece that may take longer than the period at the slowest rate allowed for.
    if ((double)bytes < period * kSlowestBytesPerSecond &&
        std::chrono::duration<double>(now - last_beat_).count() < period)
      return;
    last_beat_ = now;
    try {
      send_beat(std::max<int64_t>(0, bytes));
    } catch (const std::exception& e) {
      // The others' deadline then comes sooner; the output need not be lost for it.
      if (!beat_failed_)
        std::fprintf(stderr,
                     "[sparsa] warning: rank 0: a sign of life to the waiting ranks failed (%s); "
                     "they end the job if assembling takes longer than their timeout\n",
                     e.what());
      beat_failed_ = true;
    }
  }
  void wait_for_root() override {
    if (size_ == 1) return;
    if (rank_ == 0) {
      send_beat(kDone);
      Watchdog::Armed armed(watchdog_.get(),
                            "the end of the output's assembly, sent to every rank");
      SPARSA_MPI_CHECK(MPI_Waitall((int)beats_.size(), beats_.data(), MPI_STATUSES_IGNORE));
      beats_.clear();
      beat_values_.clear();
      return;
    }
    // Rank 0's messages arrive in the order it sent them (same sender, tag and communicator), so
    // every heartbeat is received before the end. A heartbeat announces the bytes of rank 0's
    // next piece of work: the wait for the next message allows for them.
    double extra_s = 0;
    for (int64_t v = 0; v != kDone;) {
      Watchdog::Armed armed(
          watchdog_.get(),
          "a wait for rank 0, which assembles the output (no sign of life from it)", extra_s);
      SPARSA_MPI_CHECK(
          MPI_Recv(&v, 1, MPI_INT64_T, 0, kBeatTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
      extra_s = v > 0 ? (double)v / kSlowestBytesPerSecond : 0;
    }
  }
  void watch(const char* what, int64_t bytes) override {
    if (watchdog_)
      watched_.push_back(std::make_unique<Watchdog::Armed>(
          watchdog_.get(), what, (double)std::max<int64_t>(0, bytes) / kSlowestBytesPerSecond,
          true));
  }
  void unwatch() override {
    if (!watched_.empty()) watched_.pop_back();
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }

  void allgatherv(const void* data, int64_t bytes, std::vector<uint8_t>& out,
                  std::vector<int64_t>* counts) override {
    Watchdog::Armed armed(watchdog_.get(), "an all-gather");
    int64_t mine = bytes;
    std::vector<int64_t> all(size_);
    SPARSA_MPI_CHECK(
        MPI_Allgather(&mine, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, MPI_COMM_WORLD));
    std::vector<int> cnt(size_), disp(size_);
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      cnt[r] = to_int(all[r], "allgatherv part");
      disp[r] = to_int(total, "allgatherv total");
      total += all[r];
    }
    out.resize(total);
    SPARSA_MPI_CHECK(MPI_Allgatherv(data, cnt[rank_], MPI_BYTE, out.data(), cnt.data(), disp.data(),
                                    MPI_BYTE, MPI_COMM_WORLD));
    bytes_sent_collective += bytes * (size_ - 1);
    if (counts) *counts = all;
  }
  // Point to point in messages of at most max_message_ bytes (MPI counts and displacements are
  // int, and a split record's rows pass 2 GiB with --pool none): the root posts every receive
  // straight into `out`, the others send their pieces in order (MPI keeps that order).
  void gatherv(const void* data, int64_t bytes, std::vector<uint8_t>& out,
               std::vector<int64_t>* counts, int root) override {
    Watchdog::Armed armed(watchdog_.get(), "a gather");
    int64_t mine = bytes;
    std::vector<int64_t> all(size_);
    SPARSA_MPI_CHECK(
        MPI_Gather(&mine, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, root, MPI_COMM_WORLD));
    int64_t piece = max_message_;  // the root's, so that sends and receives cut alike
    SPARSA_MPI_CHECK(MPI_Bcast(&piece, 1, MPI_INT64_T, root, MPI_COMM_WORLD));
    std::vector<MPI_Request> reqs;
    auto pieces = [&](int64_t n, auto&& post) {
      for (int64_t off = 0; off < n; off += piece) {
        reqs.emplace_back();
        post(off, (int)std::min(piece, n - off), &reqs.back());
      }
    };
    if (rank_ == root) {
      int64_t total = 0;
      for (int64_t n : all) total += n;
      out.resize(total);
      uint8_t* at = out.data();
      for (int r = 0; r < size_; at += all[r], ++r) {
        if (r == root) {
          if (bytes > 0) std::memcpy(at, data, bytes);
          continue;
        }
        pieces(all[r], [&](int64_t off, int n, MPI_Request* req) {
          SPARSA_MPI_CHECK(MPI_Irecv(at + off, n, MPI_BYTE, r, kGatherTag, MPI_COMM_WORLD, req));
        });
      }
      if (counts) *counts = all;
    } else {
      const auto* p = static_cast<const uint8_t*>(data);
      pieces(bytes, [&](int64_t off, int n, MPI_Request* req) {
        SPARSA_MPI_CHECK(MPI_Isend(p + off, n, MPI_BYTE, root, kGatherTag, MPI_COMM_WORLD, req));
      });
      bytes_sent_collective += bytes;
    }
    SPARSA_MPI_CHECK(MPI_Waitall((int)reqs.size(), reqs.data(), MPI_STATUSES_IGNORE));
  }
  void allreduce_sum(double* data, int64_t n) override {
    Watchdog::Armed armed(watchdog_.get(), "an all-reduce");
    SPARSA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, to_int(n, "allreduce"), MPI_DOUBLE, MPI_SUM,
                                   MPI_COMM_WORLD));
  }
  void allreduce_max(int64_t* data, int64_t n) override {
    Watchdog::Armed armed(watchdog_.get(), "an all-reduce");
    SPARSA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, to_int(n, "allreduce"), MPI_INT64_T, MPI_MAX,
                                   MPI_COMM_WORLD));
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    Watchdog::Armed armed(watchdog_.get(), "a broadcast");
    SPARSA_MPI_CHECK(MPI_Bcast(data, to_int(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD));
  }
  int start_exchange(const std::vector<Transfer>& sends,
                     const std::vector<Transfer>& recvs) override {
    auto& reqs = pending_[next_token_ % 2];
    reqs.clear();
    for (const auto& r : recvs) {
      reqs.emplace_back();
      SPARSA_MPI_CHECK(MPI_Irecv(r.data, to_int(r.bytes, "halo"), MPI_BYTE, r.peer, kHaloTag,
                                 MPI_COMM_WORLD, &reqs.back()));
    }
    for (const auto& s : sends) {
      reqs.emplace_back();
      SPARSA_MPI_CHECK(MPI_Isend(s.data, to_int(s.bytes, "halo"), MPI_BYTE, s.peer, kHaloTag,
                                 MPI_COMM_WORLD, &reqs.back()));
      bytes_sent_p2p += s.bytes;
    }
    return next_token_++;
  }
  void wait_exchange(int token) override {
    Watchdog::Armed armed(watchdog_.get(), "a halo exchange");
    auto& reqs = pending_[token % 2];
    SPARSA_MPI_CHECK(MPI_Waitall((int)reqs.size(), reqs.data(), MPI_STATUSES_IGNORE));
    reqs.clear();
  }

 private:
  static constexpr int kHaloTag = 17, kGatherTag = 18, kBeatTag = 19;
  static constexpr int64_t kDone = -1;
  // Rank 0: one 8-byte message to every other rank (they wait in wait_for_root meanwhile): the
  // bytes of its next piece of work, or kDone. The sends of earlier beats (and their values,
  // which must stay in place until then) are let go here once all of them completed.
  void send_beat(int64_t v) {
    int done = 0;
    if (!beats_.empty()) {
      SPARSA_MPI_CHECK(MPI_Testall((int)beats_.size(), beats_.data(), &done, MPI_STATUSES_IGNORE));
      if (done) beats_.clear(), beat_values_.clear();
    }
    const int64_t* at = &beat_values_.emplace_back(v);
    for (int r = 1; r < size_; ++r) {
      beats_.push_back(MPI_REQUEST_NULL);
      if (MPI_Isend(at, 1, MPI_INT64_T, r, kBeatTag, MPI_COMM_WORLD, &beats_.back()) !=
          MPI_SUCCESS) {
        beats_.pop_back();  // no request to wait for
        throw SystemError("MPI_Isend of a heartbeat to rank " + std::to_string(r) + " failed");
      }
    }
  }
  // Largest point-to-point message of gatherv: 1 GiB (SPARSA_MPI_MAX_MESSAGE=N bytes, for tests).
  const int64_t max_message_ = [] {
    const char* e = std::getenv("SPARSA_MPI_MAX_MESSAGE");
    const long long v = e ? std::atoll(e) : 0;
    return v > 0 && v <= (int64_t{1} << 30) ? (int64_t)v : int64_t{1} << 30;
  }();
  std::unique_ptr<Watchdog> watchdog_;
  bool owns_init_;
  int rank_ = 0, size_ = 1;
  int next_token_ = 0;
  std::vector<MPI_Request> pending_[2];
  std::vector<MPI_Request> beats_;   // rank 0's heartbeat sends, completed at wait_for_root
  std::deque<int64_t> beat_values_;  // what they send (a deque: elements stay in place)
  std::chrono::steady_clock::time_point last_beat_{};
  bool beat_failed_ = false;                               // warned once
  std::vector<std::unique_ptr<Watchdog::Armed>> watched_;  // watch / unwatch, innermost last
};

}  // namespace

static int env_int(std::initializer_list<const char*> names, int fallback) {
  for (const char* n : names)
    if (const char* v = std::getenv(n)) {
      char* end = nullptr;
      const long x = std::strtol(v, &end, 10);
      if (end != v && x >= 0) return (int)x;
    }
  return fallback;
}

LauncherSize launcher_world_size() {
  const bool mpi = launched_by_mpi();
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"}) {
    // (without an MPI launcher's variables only srun's count says: a step with no PMI)
    if (!mpi && std::string_view(v) != "SLURM_STEP_NUM_TASKS") continue;
    if (const int n = env_int({v}, 0); n > 0) return {n, v, mpi};
  }
  return {};
}

// srun's tasks on this node from SLURM_STEP_TASKS_PER_NODE ("2(x3),1": 2 tasks on each of the
// first 3 nodes, 1 on the 4th), the entry of SLURM_NODEID (the largest where that is not given);
// 0 when not set.
int slurm_step_tasks_here(const char* list, const char* node_id) {
  if (!list || !*list) return 0;
  const long here = node_id && *node_id ? std::strtol(node_id, nullptr, 10) : -1;
  long node = 0, most = 0;
  for (const char* p = list; *p;) {
    char* end = nullptr;
    const long tasks = std::strtol(p, &end, 10);
    if (end == p || tasks < 0) return 0;
    long times = 1;
    if (*end == '(' && end[1] == 'x') {
      times = std::strtol(end + 2, &end, 10);
      if (*end != ')' || times < 1) return 0;
      ++end;
    }
    if (*end != ',' && *end) return 0;
    if (here >= node && here < node + times) return (int)tasks;
    node += times;
    most = std::max(most, tasks);
    if (*end == ',') ++end;
    p = end;
  }
  return (int)std::min<long>(most, 1 << 20);
}

int local_rank_count() {
  const int n = env_int({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                         "MV2_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"},
                        0);
  if (n > 0) return n;
  return std::max(1, slurm_step_tasks_here(std::getenv("SLURM_STEP_TASKS_PER_NODE"),
                                           std::getenv("SLURM_NODEID")));
}

int local_rank() {
  return env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                  "PMI_LOCAL_RANK", "SLURM_LOCALID"},
                 -1);
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

std::unique_ptr<Comm> make_world_comm() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized && !launched_by_mpi()) return make_single_comm();
  bool owns = false;
  if (!initialized) {
#if defined(SPARSA_HDF5_PARALLEL) && defined(OPEN_MPI) && OPEN_MPI && OMPI_MAJOR_VERSION == 4
    // Open MPI 4's default MPI-IO component (OMPIO) has known hangs in the collective writes of
    // parallel HDF5 (HDF5 issues #1227, #3522): ROMIO unless the user chose (read at MPI_Init;
    // no thread of ours runs yet). slurm/embed.sbatch sets it too.
    setenv("OMPI_MCA_io", "romio321", 0);
#endif
    // MPI_THREAD_MULTIPLE: the watchdogs (this file's and the NCCL communicator's) call
    // MPI_Abort from their own threads while the main thread is blocked inside a collective,
    // which the lower levels do not allow. Every other MPI call stays on the main thread. A
    // library that provides less still runs (the abort then works as it did, outside the
    // standard's promise).
    int provided = 0;
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
      throw SystemError("MPI_Init_thread failed");
    owns = true;
  }
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  auto c = std::make_unique<MpiComm>(owns);
  return c;
}

}  // namespace sparsa
