#include "core/signals.hpp"

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>

namespace sparsa {

namespace {
volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_announce = 0;

// write(2) only: the handler may run inside any call of the main program.
void say(const char* msg) {
  if (!g_announce) return;
  size_t n = 0;
  while (msg[n]) ++n;
  ssize_t ignored = write(2, msg, n);
  (void)ignored;
}

extern "C" void on_stop_signal(int sig) {
  const int saved_errno = errno;  // write(2) may set it under the interrupted code
  if (g_stop && sig == SIGINT) {  // a second Ctrl-C: the user means it
    say("\n[sparsa] stopped at once (second interrupt); finished records stay in the journal, "
        "--resume continues\n");
    std::_Exit(130);
  }
  if (!g_stop)
    say(sig == SIGINT ? "\n[sparsa] interrupt: stopping at the next safe point (after the layer "
                        "or record at work), keeping what is finished; interrupt again to stop "
                        "at once\n"
        : sig == SIGUSR1
            ? "\n[sparsa] SIGUSR1 (time limit near): stopping at the next safe point, keeping "
              "what is finished\n"
            : "\n[sparsa] SIGTERM: stopping at the next safe point, keeping what is finished\n");
  g_stop = sig;
  errno = saved_errno;
}
}  // namespace

void install_stop_handlers(bool announce) {
  g_announce = announce ? 1 : 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGTERM, SIGINT, SIGUSR1}) sigaction(s, &sa, nullptr);
}

bool stop_requested() { return g_stop != 0; }
int stop_signal() { return g_stop; }

}  // namespace sparsa
