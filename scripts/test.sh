#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, runs every CTest test, then the
# unit tests again under ASan+UBSan (scripts/sanitize.sh) and a bounded fuzz run of the input
# parsers (scripts/fuzz.sh).
# SPARSA_TEST_LABELS=... restricts to labels (e.g. unit); slow tests (suites named *Slow, 10-30 s
# each on 2 cores) carry the label "slow" instead of unit or mpi.
# The sanitizer and fuzz steps run only for the whole suite (no SPARSA_TEST_LABELS), and
# SPARSA_EXTRA_CHECKS=0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
bash scripts/build.sh
# Open MPI as root, oversubscribed, in a container (see docs/parallel.md).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=yes OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_io=romio321
# --no-tests=error: a label that matches nothing (a typo) fails instead of passing empty.
args=(--test-dir build --output-on-failure -j2 --timeout 900 --no-tests=error)
[ -n "${SPARSA_TEST_LABELS:-}" ] && args+=(-L "$SPARSA_TEST_LABELS")
# SPARSA_TEST_EXCLUDE_LABELS=slurm leaves out the Slurm tests (they need root: see below).
[ -n "${SPARSA_TEST_EXCLUDE_LABELS:-}" ] && args+=(-LE "$SPARSA_TEST_EXCLUDE_LABELS")
# The Slurm tests (label slurm, about 2.5 min) start a one-node Slurm cluster as root through
# scripts/slurm-cluster.sh, installing slurm-wlm and munge if missing; stop it when this run ends
# unless it was running before.
# Their packages are installed here, before the clock of any test runs (as root; elsewhere those
# tests say they need root).
if [ "$(id -u)" -eq 0 ] && [[ "${SPARSA_TEST_EXCLUDE_LABELS:-}" != *slurm* ]] &&
  [[ -z "${SPARSA_TEST_LABELS:-}" || "${SPARSA_TEST_LABELS}" == *slurm* ]]; then
  bash scripts/slurm-cluster.sh install
fi
if ! bash scripts/slurm-cluster.sh status >/dev/null 2>&1; then
  trap 'bash scripts/slurm-cluster.sh stop >/dev/null 2>&1 || true' EXIT
fi
ctest "${args[@]}"

if [ -z "${SPARSA_TEST_LABELS:-}" ] && [ "${SPARSA_EXTRA_CHECKS:-1}" != 0 ]; then
  # Memory and UB errors that the Release build runs past silently (about 6 min on 2 cores:
  # its own build, then the unit tests 2-3x slower).
  bash scripts/sanitize.sh
  # 20 s per parser keeps CI short (about 3 min with the clang build); the seed corpus replays
  # every earlier finding first. Longer local runs: FUZZ_SECONDS=600 scripts/fuzz.sh
  FUZZ_SECONDS=${FUZZ_SECONDS:-20} bash scripts/fuzz.sh
fi
