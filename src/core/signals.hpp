// sparsa: stopping at a safe point. SIGTERM, SIGINT and SIGUSR1 (Slurm's warning before the time
// limit) set a flag; long work polls it between layers and records, and stops with
// kExitInterrupted after keeping what is finished. A second SIGINT ends the process at once.
#pragma once

#include "core/error.hpp"

namespace sparsa {

class Interrupted : public Error {
 public:
  using Error::Error;
};

// announce: say at once on stderr that the signal was seen and what happens next (rank 0 alone,
// not with --quiet); a second SIGINT then also says that it stopped at once.
void install_stop_handlers(bool announce = false);
bool stop_requested();
// Which signal asked for the stop (0 when none).
int stop_signal();

}  // namespace sparsa
