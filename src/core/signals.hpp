// sparsa: stopping at a safe point. SIGTERM, SIGINT, SIGUSR1 (Slurm's warning before the time
// limit) and SIGHUP set a flag; long work polls it between layers and records, and stops with
// kExitInterrupted after keeping what is finished. A second SIGINT ends the process at once.
// SIGPIPE is ignored (a log reader that went away does not kill the run).
// SIGXFSZ is ignored from main's start (ignore_file_size_signal): a write past the file-size limit
// (ulimit -f) then fails with EFBIG, which the writer reports, instead of killing the process.
#pragma once

#include "core/error.hpp"

namespace sparsa {

class Interrupted : public Error {
 public:
  using Error::Error;
};

// announce: say at once on stderr that the signal was seen and what happens next (rank 0 alone,
// not with --quiet); a second SIGINT then also says that it stopped at once.
// journal: the journal folder a second SIGINT's message names.
// speaks: the rank that speaks for the run (rank 0): it says what a second SIGINT did also
// where announce is off (--quiet). Starts the run's stop state afresh (no stop, no finishing).
void install_stop_handlers(bool announce = false, const char* journal = nullptr,
                           bool speaks = false);
// From main's start until the run's handlers are installed (MPI's start-up takes a while): a
// stop signal is held, not left to kill the process (a Slurm USR1 or TERM in a job's first
// moments); install_stop_handlers takes it up as the run's stop. release_early_stops: the
// defaults back (commands that do not stop at safe points), a held signal raised again.
void hold_early_stops();
void release_early_stops();
// SIGXFSZ ignored (every subcommand: init writes a checkpoint too).
void ignore_file_size_signal();
bool stop_requested();
// Which signal asked for the stop first (0 when none).
int stop_signal();
// A stop another rank received (its signal, as the ranks agreed at a safe point): this rank stops
// too, naming that signal, and rank 0 (where it announces) says where the signal came.
void adopt_stop_signal(int sig);
// "SIGTERM", "SIGINT", "SIGUSR1", else "signal N".
const char* signal_name(int sig);

// The last phase, writing the output from a journal whose records are all finished: a stop is
// not taken there (the output is seconds from whole), so a first signal says that the writing
// goes on, and a second SIGINT removes `tmp` (the unfinished output; "" for none) before it
// ends the process. `output` names the file in those messages. set_finishing(nullptr, nullptr)
// ends the phase.
void set_finishing(const char* output, const char* tmp);
// The output is in place (renamed, complete): signals are ignored from here on (the journal's
// removal and the exit), so that no exit status but 0 goes with a complete output.
void set_output_in_place();

}  // namespace sparsa
