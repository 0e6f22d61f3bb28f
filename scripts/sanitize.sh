#!/usr/bin/env bash
# Builds sparsa and its unit tests with AddressSanitizer + UndefinedBehaviorSanitizer
# (-DSPARSA_SANITIZE=ON, gcc) into build-asan/ and runs the unit tests there (ctest -L 'unit|slow').
# Any ASan/UBSan report or leak fails the test it happened in.
#
# Only the unit tests: the MPI tests multiply the (already 2-3x slower) sanitized run time by
# their process counts, and they exercise the same code paths the unit tests cover on one rank.
# No CUDA (ASan and the CUDA runtime do not mix) and no benchmarks (not run here).
set -euo pipefail
cd "$(dirname "$0")/.."

# The environment is set before building too: gtest_discover_tests runs sparsa_tests at build
# time to list the tests, and that run is sanitized like any other.
# - halt_on_error: UBSan stops at its first report instead of printing and going on, so a report
#   fails the test rather than scrolling by.
# - detect_leaks: leaks in sparsa code are bugs. tests/lsan.supp silences only third-party
#   libraries (Open MPI, HDF5, ...) that keep allocations until exit by design.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
# Open MPI as root, oversubscribed, in a container (as in scripts/test.sh; see docs/parallel.md).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=yes OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_io=romio321

# RelWithDebInfo: -O2 keeps the sanitized tests fast enough for CI; -g gives reports with lines.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARSA_SANITIZE=ON \
  -DSPARSA_CUDA=OFF -DSPARSA_BENCH=OFF >/dev/null
ninja -C build-asan -j"${SANITIZE_BUILD_JOBS:-$(nproc)}" sparsa sparsa_tests
ctest --test-dir build-asan -L 'unit|slow' --output-on-failure -j2 --timeout 900
