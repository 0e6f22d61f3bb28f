// sparsa: typed errors. Library code throws these; only the CLI decides exit codes.
#pragma once
#include <stdexcept>
#include <string>

namespace sparsa {

// Exit codes used by the CLI (documented in docs/cli.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,        // any runtime failure (bad input, I/O, numerics)
  kExitUsage = 2,        // bad command line or config
  kExitInterrupted = 75  // stopped at a safe point by a signal (EX_TEMPFAIL); --resume continues
};

// Base of every sparsa error. `what()` is the whole user-facing message.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Bad user input: a FASTA/CSV/BED file, a region, a checkpoint. The message names the file,
// the record and the 1-based position where known.
class InputError : public Error {
 public:
  using Error::Error;
};

// Bad configuration or command-line values.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Failures of the system or of a library (HDF5, MPI, CUDA, disk full...).
class SystemError : public Error {
 public:
  using Error::Error;
};

// Memory a record needs could not be had: a device's (device_total: its memory in bytes) or, with
// device_total 0, the host's.
class OutOfMemory : public SystemError {
 public:
  explicit OutOfMemory(const std::string& msg, long long total = 0)
      : SystemError(msg), device_total(total) {}
  long long device_total;
};

// NaN/Inf in the math, or any other numeric contract violation.
class NumericError : public Error {
 public:
  using Error::Error;
};

// Formats "file: record 'name': position P: what" leaving out empty parts.
// `text` with its control bytes (below 0x20, and 0x7F) as \xHH: a record name holding an escape
// sequence would otherwise act on the terminal that shows a message.
std::string printable(const std::string& text);
std::string where(const std::string& file, const std::string& record, long long position_1based,
                  const std::string& what);

}  // namespace sparsa
