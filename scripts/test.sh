#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, runs every CTest test.
# SPARSA_TEST_LABELS=... restricts to labels (e.g. unit); slow tests carry the label "slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
bash scripts/build.sh
# Open MPI as root, oversubscribed, in a container (see docs/mpi.md).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=yes OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_io=romio321
args=(--test-dir build --output-on-failure -j2 --timeout 900)
[ -n "${SPARSA_TEST_LABELS:-}" ] && args+=(-L "$SPARSA_TEST_LABELS")
ctest "${args[@]}"
