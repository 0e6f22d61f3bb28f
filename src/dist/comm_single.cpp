#include <cstdlib>
#include <cstring>
#include <string>

#include "core/env.hpp"
#include "core/error.hpp"
#include "dist/comm.hpp"

namespace sparsa {

double comm_timeout_env(std::string* bad) {
  const char* t = std::getenv("SPARSA_COMM_TIMEOUT");
  if (!t || !*t) return 1800.0;
  double v = 0;
  if (!whole_number(t, 1, 1e9, &v)) {
    if (bad)
      *bad = std::string("SPARSA_COMM_TIMEOUT=") + t +
             ": not a number of seconds from 1 (the watchdog's limit for a stuck collective; "
             "default 1800)";
    return 1800.0;
  }
  return v;
}

namespace {

class SingleComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* name() const override { return "single"; }
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
  void allgatherv(const void* data, int64_t bytes, std::vector<uint8_t>& out,
                  std::vector<int64_t>* counts) override {
    out.resize(bytes);
    if (bytes) std::memcpy(out.data(), data, bytes);
    if (counts) *counts = {bytes};
  }
  void gatherv(const void* data, int64_t bytes, std::vector<uint8_t>& out,
               std::vector<int64_t>* counts, int) override {
    allgatherv(data, bytes, out, counts);
  }
  void allreduce_sum(double*, int64_t) override {}
  void allreduce_max(int64_t*, int64_t) override {}
  void broadcast(void*, int64_t, int) override {}
  int start_exchange(const std::vector<Transfer>& sends,
                     const std::vector<Transfer>& recvs) override {
    if (!sends.empty() || !recvs.empty())
      throw SystemError("single-process communicator asked for a halo exchange");
    return 0;
  }
  void wait_exchange(int) override {}
};

}  // namespace

std::unique_ptr<Comm> make_single_comm() { return std::make_unique<SingleComm>(); }

}  // namespace sparsa
