// sparsa_comm_probe: Comm::heartbeat and Comm::wait_for_root driven directly under mpirun, for
// tests/mpi/test_faults.cpp (MpiHeartbeat.*). Rank 0 "works" for SECONDS while the others wait
// for it in wait_for_root, as they do while it assembles the output:
//   beat SECONDS       rank 0 calls heartbeat() every 50 ms while it works
//   quiet SECONDS      rank 0 gives no sign of life while it works
//   announce SECONDS B rank 0 calls heartbeat(B) once (its next piece moves B bytes), then works
//                      quietly
//   scoped SECONDS B   every rank opens a Comm::watch scope allowing B bytes, rank 0 works, then
//                      all meet in a barrier inside the scope (as after rank 0's serial write of
//                      a record's part): the barrier is covered by the scope's deadline
//   finalize SECONDS   rank 1 takes SECONDS before it ends (MPI_Finalize), as a rank hung in its
//                      teardown; rank 0 ends at once
// Exit 0 when every rank got through; the watchdog aborts otherwise.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "dist/comm.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: sparsa_comm_probe beat|quiet|announce|scoped|finalize SECONDS [BYTES]\n");
    return 2;
  }
  const std::string mode = argv[1];
  const double seconds = std::atof(argv[2]);
  const long long bytes = argc > 3 ? std::atoll(argv[3]) : 0;
  auto comm = sparsa::make_world_comm();
  if (mode == "finalize") {
    comm->barrier();
    std::printf("rank %d of %d: at the end\n", comm->rank(), comm->size());
    std::fflush(stdout);
    if (comm->rank() == 1)
      std::this_thread::sleep_for(std::chrono::milliseconds((int64_t)(seconds * 1000)));
    return 0;  // the comm's destructor finalizes MPI
  }
  if (mode == "scoped") {
    sparsa::Watched scope(*comm, "the probe's scope", bytes);
    if (comm->rank() == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds((int64_t)(seconds * 1000)));
    comm->barrier();
    std::printf("rank %d of %d: through the scoped barrier\n", comm->rank(), comm->size());
    return 0;
  }
  if (comm->rank() == 0) {
    const auto t0 = std::chrono::steady_clock::now();
    if (mode == "announce") comm->heartbeat(bytes);
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (mode == "beat") comm->heartbeat(0);
    }
  }
  comm->wait_for_root();
  std::printf("rank %d of %d: through wait_for_root\n", comm->rank(), comm->size());
  return 0;
}
