#include "core/signals.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace sparsa {

namespace {
volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_announce = 0;
// The rank that speaks for the run: what a second interrupt did is said there also with --quiet
// (it is the run's last word: the summary a stop ends with never comes).
volatile std::sig_atomic_t g_speaks = 0;
// g_stop came from another rank (adopt_stop_signal): this process's own first SIGINT is then a
// first one, not the second that ends it at once.
volatile std::sig_atomic_t g_adopted = 0;
volatile std::sig_atomic_t g_finishing = 0;
// stderr is a terminal: a message's leading newline ends the live progress line there; in a log
// file it would be an empty line.
volatile std::sig_atomic_t g_tty = 0;
// The finishing phase's messages and file, made before g_finishing is set (the handler only
// reads them).
char g_finish_first[1024], g_finish_second[1024], g_finish_tmp[4096];
char g_second_stop[4352];  // made by install_stop_handlers, before the handler is

// write(2) only: the handler may run inside any call of the main program.
void say(const char* msg, bool summary = false) {
  if (!g_announce && !(summary && g_speaks)) return;
  if (!g_tty && msg[0] == '\n') ++msg;
  size_t n = 0;
  while (msg[n]) ++n;
  ssize_t ignored = write(2, msg, n);
  (void)ignored;
}

extern "C" void on_stop_signal(int sig) {
  const int saved_errno = errno;  // write(2) may set it under the interrupted code
  if (g_finishing == 2) {         // the output is in place: nothing left to stop or to remove
    errno = saved_errno;
    return;
  }
  if (g_finishing == 1) {
    if (g_stop && sig == SIGINT) {
      if (g_finish_tmp[0]) unlink(g_finish_tmp);
      say(g_finish_second, true);
      std::_Exit(130);
    }
    if (!g_stop) {
      say(g_finish_first);
      g_stop = sig;
    }
    errno = saved_errno;
    return;
  }
  if (g_adopted) {  // this process's own first signal, after a stop another rank received
    g_adopted = 0;
    errno = saved_errno;
    return;
  }
  if (g_stop && sig == SIGINT) {  // a second Ctrl-C: the user means it
    say(g_second_stop, true);
    std::_Exit(130);
  }
  if (!g_stop)
    say(sig == SIGINT ? "\n[sparsa] interrupt: stopping at the next safe point (within moments "
                        "with one process, at the end of a layer with several ranks), keeping "
                        "what is finished; interrupt again to stop at once\n"
        : sig == SIGUSR1
            ? "\n[sparsa] SIGUSR1 (time limit near): stopping at the next safe point, keeping "
              "what is finished\n"
        : sig == SIGHUP
            ? "\n[sparsa] SIGHUP (the terminal or session closed): stopping at the next safe "
              "point, keeping what is finished (nohup, screen or sbatch keep a run going)\n"
            : "\n[sparsa] SIGTERM: stopping at the next safe point, keeping what is finished\n");
  if (!g_stop) g_stop = sig;  // the first names the stop (Slurm's TERM after its USR1, say)
  errno = saved_errno;
}
}  // namespace

namespace {
volatile sig_atomic_t g_early = 0;  // the first stop signal held before the handlers were set
constexpr int kStopSignals[] = {SIGTERM, SIGINT, SIGUSR1};
struct sigaction g_before[3];  // what each was before hold_early_stops
bool g_held[3] = {false, false, false};
void on_early_signal(int sig) {
  if (g_early == SIGINT && sig == SIGINT) {  // a second Ctrl-C (start-up stuck): at once
    std::signal(SIGINT, SIG_DFL);
    raise(SIGINT);
    return;
  }
  if (!g_early) g_early = sig;
}
// The signal held since main's start, if any, raised again (to the handlers now set).
void raise_held() {
  if (const int held = g_early) {
    g_early = 0;
    raise(held);
  }
}
}  // namespace

void hold_early_stops() {
  struct sigaction sa {};
  sa.sa_handler = on_early_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int i = 0; i < 3; ++i) {
    // (a signal the parent ignores, as `trap '' TERM` or a script's background job has it,
    // stays ignored)
    g_held[i] = sigaction(kStopSignals[i], nullptr, &g_before[i]) == 0 &&
                g_before[i].sa_handler != SIG_IGN && sigaction(kStopSignals[i], &sa, nullptr) == 0;
  }
}

void release_early_stops() {
  for (int i = 0; i < 3; ++i)
    if (std::exchange(g_held[i], false)) sigaction(kStopSignals[i], &g_before[i], nullptr);
  raise_held();
}

void install_stop_handlers(bool announce, const char* journal, bool speaks) {
  // A run starts with no stop and no finishing phase (in one process, before the run, they are
  // so anyway; a test process that ran a journal's assembly in-process left the phase at
  // "output in place", which its forked death tests inherited).
  g_stop = 0;
  g_adopted = 0;
  g_finishing = 0;
  g_announce = announce ? 1 : 0;
  g_speaks = speaks || announce ? 1 : 0;
  g_tty = isatty(2) ? 1 : 0;
  const bool named = journal && std::strlen(journal) < 4096;
  std::snprintf(g_second_stop, sizeof g_second_stop,
                "\n[sparsa] stopped at once (second interrupt); the records finished so far, if "
                "any, stay in the journal%s%s%s, which --resume continues\n",
                named ? " (" : "", named ? journal : "", named ? ")" : "");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : kStopSignals) sigaction(s, &sa, nullptr);
  // SIGHUP (an ssh session that drops) stops as SIGTERM does, keeping what is finished, instead
  // of killing the run outright; where it is ignored (nohup, trap '' HUP) it stays ignored.
  struct sigaction hup {};
  if (sigaction(SIGHUP, nullptr, &hup) == 0 && hup.sa_handler != SIG_IGN)
    sigaction(SIGHUP, &sa, nullptr);
  // A log reader that went away (`2>&1 | head`, a tee that died) makes writes to stderr fail
  // (EPIPE) instead of killing the run at once with the record in flight lost: the run goes on,
  // and a stop signal still reaches its safe point (exit 75).
  std::signal(SIGPIPE, SIG_IGN);
  // A signal held since main's start is the run's first stop (said, and taken at the first
  // safe point).
  raise_held();
}

void ignore_file_size_signal() { std::signal(SIGXFSZ, SIG_IGN); }

void set_finishing(const char* output, const char* tmp) {
  if (!output) {
    if (g_finishing == 1) g_finishing = 0;
    return;
  }
  std::snprintf(g_finish_first, sizeof g_finish_first,
                "\n[sparsa] every record is finished: writing %s goes on to its end; interrupt "
                "again to stop at once (the journal keeps every record; --resume writes it)\n",
                output);
  std::snprintf(g_finish_second, sizeof g_finish_second,
                "\n[sparsa] stopped at once (second interrupt) while writing %s%s; the journal "
                "keeps every record: run the same command with --resume to write it\n",
                output, tmp && tmp[0] ? ", which is removed" : "");
  std::snprintf(g_finish_tmp, sizeof g_finish_tmp, "%s", tmp ? tmp : "");
  if (std::strlen(tmp ? tmp : "") >= sizeof g_finish_tmp) g_finish_tmp[0] = 0;  // too long
  std::atomic_signal_fence(std::memory_order_seq_cst);  // the texts before the flag
  g_finishing = 1;
}

void set_output_in_place() { g_finishing = 2; }

bool stop_requested() { return g_stop != 0; }

const char* signal_name(int sig) {
  static thread_local char other[32];
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGHUP:
      return "SIGHUP";
    default:
      std::snprintf(other, sizeof other, "signal %d", sig);
      return other;
  }
}
int stop_signal() { return g_stop; }

void adopt_stop_signal(int sig) {
  if (g_stop || sig <= 0) return;
  g_adopted = 1;
  g_stop = sig;
  if (g_announce)
    std::fprintf(stderr,
                 "%s[sparsa] %s (received by another rank): stopping, keeping what is "
                 "finished\n",
                 g_tty ? "\n" : "", signal_name(sig));
}

}  // namespace sparsa
