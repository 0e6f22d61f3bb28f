#!/usr/bin/env bash
# Runs on the GPU machine from the repository root with the bundled binaries in .dev/bundle
# (sparsa, sparsa_gpu_tests, optionally sparsa_mpi_tests; shared libraries in .dev/bundle/lib): the
# GPU tests (and the MPI GPU tests: split records over ranks sharing the GPU), then the
# benchmarks of issue 4, and a short table last. About 2 minutes on one H200 (SPARSA_LONG=n,n,...:
# also the dna-base model at those n, pooled output, until the first out-of-memory).
#   SPARSA_BUNDLE=DIR   another bundle folder      OUT=DIR   where the logs go
set -uo pipefail
cd "$(dirname "$0")/.."
B=${SPARSA_BUNDLE:-.dev/bundle}
OUT=${OUT:-/tmp/sparsa-device-check}
mkdir -p "$OUT"
# The bundle's libraries first; cuBLASLt (540 MB) is taken from the machine's CUDA when the bundle
# leaves it out.
libs="$B/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null) \
         $(python3 -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))' 2>/dev/null); do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | head -3
ldd "$B/sparsa" | grep -E "not found|cublas|cudart" || true

echo "== GPU tests"
t0=$(date +%s)
timeout 300 "$B/sparsa_gpu_tests" --gtest_color=no 2>&1 | tee "$OUT/tests.txt" |
  grep -E "^\[ +(RUN|OK|FAILED|SKIPPED|PASSED) +\]|^\[ model \]|Failure|error|Expected|Which is|actual" |
  head -200
tests_rc=${PIPESTATUS[0]}
echo "(tests took $(( $(date +%s) - t0 )) s)"
if [ -x "$B/sparsa_mpi_tests" ]; then  # split records over 2 and 3 ranks sharing this GPU
  echo "== MPI GPU tests"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 SPARSA_TEST_BINARY="$(cd "$B" && pwd)/sparsa" \
    SPARSA_TEST_SOURCE_DIR="$PWD" SPARSA_TEST_MPIEXEC="mpirun --bind-to none" \
    timeout 300 "$B/sparsa_mpi_tests" --gtest_filter='MpiGpu.*' --gtest_color=no 2>&1 |
    tee "$OUT/mpi-tests.txt" | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) +\]|Failure"
  mpi_rc=${PIPESTATUS[0]}
fi

bench() {  # name, then sparsa bench arguments
  local name=$1
  shift
  echo "== bench $name: $*"
  timeout 150 "$B/sparsa" bench "$@" 2>&1 | tee "$OUT/bench-$name.txt"
}
"$B/sparsa" bench --what attention --n 1048576 --global 4096 --iters 20 >/dev/null 2>&1  # warm-up (clocks)
N="65536,131072,262144,524288,1048576"
A="--n 1048576 --heads 8 --head-dim 64 --window 256"
bench local --what attention-local --n $N --heads 8 --head-dim 64 --window 256 --iters 10
bench global1k --what attention $A --global 1024 --iters 10
bench global4k --what attention $A --global 4096 --iters 10
bench g4k-only --what attention-global $A --global 4096 --iters 5
bench layer --what layer --config configs/dna-base.toml --n 1048576 --iters 3
bench model --what model --config configs/dna-base.toml --n 1048576 --iters 3
bench model-host --what model --config configs/dna-base.toml --n 1048576 --iters 2 --output host
# Variants selected by the environment, each checked by the attention tests first. One variant is
# a comma-separated list of assignments (SPARSA_VARIANTS=" " runs none). SPARSA_ATTN_BAND: auto
# (default: wgstat on sm_90a: offsets frozen after a row's first key tile), wg (running max),
# wgs3, 8 (mma.sync v4), old (v1 fused kernel); SPARSA_ATTN_GLOBAL: auto
# (default: wgpipe on sm_90a: fixed softmax offsets, pipelined within each warpgroup), wgpipe3,
# wgpipe2, wgstat (not pipelined), wg (running max), wgbar, wgcp, wg0, 2x4 (mma.sync v4);
# SPARSA_ATTN_SPLIT=0: global part fused into v1.
VARIANTS=${SPARSA_VARIANTS:-SPARSA_ATTN_BAND=8,SPARSA_ATTN_GLOBAL=2x4 SPARSA_ATTN_BAND=old,SPARSA_ATTN_SPLIT=0 SPARSA_ATTN_BAND=wg SPARSA_ATTN_BAND=wgs3 SPARSA_ATTN_GLOBAL=wgstat SPARSA_ATTN_GLOBAL=wg SPARSA_ATTN_GLOBAL=wgbar SPARSA_ATTN_GLOBAL=wgcp SPARSA_ATTN_GLOBAL=wg0}
vtag() { echo "$1" | sed 's/SPARSA_ATTN_//g; s/=//g; s/,/-/g'; }
for var in $VARIANTS; do
  tag=$(vtag "$var")
  assigns=$(echo "$var" | tr ',' ' ')
  echo "== variant $var: tests"
  env $assigns timeout 200 "$B/sparsa_gpu_tests" --gtest_color=no \
    --gtest_filter='CudaOps.Attention*' 2>&1 |
    grep -E "^\[ +(OK|FAILED|PASSED) +\]|^\[ model \]|Failure" | head -30
  (
    export $assigns
    bench local-$tag --what attention-local $A --iters 10
    bench global4k-$tag --what attention $A --global 4096 --iters 10
    bench g4k-only-$tag --what attention-global $A --global 4096 --iters 5
    [ -n "${SPARSA_VARIANT_MODEL:-}" ] && bench model-$tag --what model --config configs/dna-base.toml --n 1048576 --iters 3
  )
done
if [ -n "${SPARSA_LONG:-}" ]; then  # the longest record one GPU embeds (dna-base, pooled output)
  echo "== long records: dna-base, pooled output, iters 1 (stops at the first out-of-memory)"
  timeout 240 "$B/sparsa" bench --what model --config configs/dna-base.toml --n $SPARSA_LONG \
    --iters 1 --output pooled 2>&1 | tee "$OUT/bench-long.txt" | grep -v "^#" | tail -12
fi
echo
echo "== summary (n = 1048576; targets: local >= 234 TFLOP/s, local+global G=4096 < 25.8 ms,"
echo "   dna-base model >= 3.36 Mtok/s = 2x PyTorch)"
printf "%-22s %10s %10s %14s %9s\n" bench ms TFLOP/s tokens/s peak_GB
for name in local global1k global4k g4k-only layer model model-host $(for var in $VARIANTS; do tag=$(vtag "$var"); echo local-$tag global4k-$tag g4k-only-$tag; [ -n "${SPARSA_VARIANT_MODEL:-}" ] && echo model-$tag; done); do
  line=$(grep -E "^ +1048576 " "$OUT/bench-$name.txt" 2>/dev/null | tail -1)
  if [ -n "$line" ]; then
    printf "%-22s %10s %10s %14s %9s\n" "$name" $(echo "$line" | awk '{print $2, $3, $4, $5}')
  else
    printf "%-22s %s\n" "$name" "(no result: see $OUT/bench-$name.txt)"
  fi
done
[ -f "$OUT/bench-long.txt" ] && grep -E "^ +[0-9]+ " "$OUT/bench-long.txt" | awk '{printf "%-22s %10s %10s %14s %9s\n", "model n=" $1, $2, $3, $4, $5}'
echo "gpu tests: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$OUT/tests.txt" | tr '\n' ' ') (exit $tests_rc)"
[ -n "${mpi_rc:-}" ] && echo "MPI GPU tests: exit $mpi_rc"
echo "== per-stage profile, dna-base model at n = 1048576 (output pooled)"
sed -n '/^# profile/,$p' "$OUT/bench-model.txt" 2>/dev/null
# The tests decide the exit status (the benchmarks only report).
[ "$tests_rc" = 0 ] && [ "${mpi_rc:-0}" = 0 ]
