#include "core/signals.hpp"

#include <csignal>
#include <cstdlib>

namespace sparsa {

namespace {
volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop && sig == SIGINT) std::_Exit(130);  // a second Ctrl-C: the user means it
  g_stop = sig;
}
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGTERM, SIGINT, SIGUSR1}) sigaction(s, &sa, nullptr);
}

bool stop_requested() { return g_stop != 0; }
int stop_signal() { return g_stop; }

}  // namespace sparsa
