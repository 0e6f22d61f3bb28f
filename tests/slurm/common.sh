# shellcheck shell=bash
# Sourced by the Slurm tests: tests/slurm/test_*.sh SPARSA_BINARY SOURCE_DIR WORK_DIR
#
# Starts the one-node test cluster (scripts/slurm-cluster.sh, idempotent) and fails loudly when it
# cannot: these tests never skip. Gives each test a clean work dir and small helpers.
set -euo pipefail

REAL_SPARSA=$(realpath "$1")
SRC=$(realpath "$2")
WORK=$3
PY=/usr/bin/python3  # Debian's, which has h5py (python3-h5py); not whatever python3 is on PATH
export SPARSA=$REAL_SPARSA

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
WORK=$(pwd)

# Open MPI as root, oversubscribed, in a container (as scripts/test.sh sets it), so that a test
# also runs on its own. sbatch passes this environment on to the jobs.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=yes OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_io=romio321
export OMP_NUM_THREADS=1

say() { echo "[$(basename "$0") $(date +%H:%M:%S)] $*"; }

JOBS=()  # every job this test submitted: cancelled on exit, so a failure leaves nothing running
dump_logs() {
  local f
  for f in "$WORK"/*.log; do
    [ -f "$f" ] || continue
    echo "---- $f"
    tail -n 60 "$f"
  done
  for j in "${JOBS[@]}"; do scontrol show job "$j" 2>/dev/null | head -30; done
}
fail() {
  echo "FAIL: $*" >&2
  dump_logs >&2
  exit 1
}
cleanup() {
  local j
  for j in "${JOBS[@]}"; do scancel "$j" 2>/dev/null || true; done
}
trap cleanup EXIT

if ! bash "$SRC/scripts/slurm-cluster.sh" start; then
  echo "FAIL: the test Slurm cluster did not start (scripts/slurm-cluster.sh logs above)" >&2
  exit 1
fi
eval "$(bash "$SRC/scripts/slurm-cluster.sh" env)"

# job_field JOBID FIELD: one field of `scontrol show job` (JobState, Restarts, ExitCode, ...).
job_field() {
  scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every second until it succeeds.
wait_until() {
  local limit=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@"; do
    [ $((SECONDS - t0)) -lt "$limit" ] || fail "timed out after ${limit}s waiting for: $what"
    sleep 1
  done
}

job_finished() {
  case "$(job_field "$1" JobState)" in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE) return 0 ;;
    *) return 1 ;;
  esac
}

# parts_at_least OUT N: the journal OUT.parts/ holds at least N finished records.
parts_at_least() {
  [ "$(find "$1.parts" -maxdepth 1 -name '[0-9]*.h5' 2>/dev/null | wc -l)" -ge "$2" ]
}

# same A B: two embeddings files hold identical records (every dataset and attribute).
same() {
  "$PY" "$SRC/tests/slurm/h5same.py" "$1" "$2" || fail "$1 and $2 differ"
  h5diff -q "$1" "$2" /records /records || fail "h5diff: $1 and $2 differ under /records"
}

make_model() {
  "$REAL_SPARSA" init --config "$SRC/configs/dna-tiny.toml" --output "$WORK/model.h5" --seed 1 \
    2>/dev/null
}
