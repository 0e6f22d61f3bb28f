#!/usr/bin/env bash
# End to end on a GPU machine (run from the repository root; bundle in .dev/bundle, see
# scripts/device-check.sh): `sparsa embed --device cuda` on E. coli K-12 (carried in .dev/data),
# 5,000 reads (bench/gen_fasta.py) packed and side by side, then strong scaling of one 16M-token
# record (bench/gen_fasta.py, seed 2) over 1, 2 and 4 GPUs with NCCL, outputs compared bit for bit
# with h5py. A short table last.
set -uo pipefail
cd "$(dirname "$0")/.."
B=$(cd "${SPARSA_BUNDLE:-.dev/bundle}" && pwd)
WORK=${WORK:-/tmp/sparsa-e2e}
TOKENS=${TOKENS:-16777216}
mkdir -p "$WORK"
export LD_LIBRARY_PATH="$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
SP=$B/sparsa
NGPU=$(nvidia-smi -L | grep -c '^GPU')
echo "== $NGPU GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
( python3 bench/gen_fasta.py --tokens "$TOKENS" --records 1 --seed 2 > "$WORK/big.fa" ) &
GEN=$!
"$SP" init -c configs/dna-base.toml -o "$WORK/base.h5" --seed 1 --force 2>&1 | tail -1
"$SP" init -c configs/dna-tiny.toml -o "$WORK/tiny.h5" --seed 1 --force 2>&1 | tail -1
zcat .dev/data/ecoli_k12_mg1655.fasta.gz > "$WORK/ecoli.fa"
ROWS=()
timed() {  # label, np, model, input, args...
  local label=$1 np=$2 model=$3 in=$4; shift 4
  local out="$WORK/$label.h5" t1 t2
  rm -rf "$out" "$out.parts"
  t1=$(date +%s.%N)
  if [ "$np" = 1 ]; then
    "$SP" embed -m "$model" -i "$in" -o "$out" --device cuda "$@" > "$WORK/$label.log" 2>&1
  else
    mpirun -np "$np" --bind-to none -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE \
      -x SPARSA_PROFILE="${SPARSA_PROFILE:-0}" -x SPARSA_NCCL_WARMUP="${SPARSA_NCCL_WARMUP:-1}" \
      "$SP" embed -m "$model" -i "$in" -o "$out" --device cuda --split-min 1000 "$@" > "$WORK/$label.log" 2>&1
  fi
  local rc=$?
  t2=$(date +%s.%N)
  local wall; wall=$(python3 -c "print('%.2f' % ($t2 - $t1))")
  ROWS+=("$(printf '%-30s %3s %8s s  rc=%s  %s' "$label" "$np" "$wall" "$rc" "$(grep -o 'done: .*' "$WORK/$label.log" | cut -c1-70)")")
  [ $rc = 0 ] || tail -5 "$WORK/$label.log"
}
timed ecoli-tiny-bin128 1 "$WORK/tiny.h5" "$WORK/ecoli.fa" --pool bin:128
timed ecoli-base-bin128 1 "$WORK/base.h5" "$WORK/ecoli.fa" --pool bin:128
timed ecoli-base-none-f16 1 "$WORK/base.h5" "$WORK/ecoli.fa" --pool none
# Short records: 5,000 reads of 100-1,000 bp packed into one pass a batch, then 8 models side by
# side (SPARSA_PACKED=0); the two files are compared below.
python3 bench/gen_fasta.py --tokens 100 --max-tokens 1000 --records 5000 --seed 1 > "$WORK/reads.fa"
timed reads-base-mean-packed 1 "$WORK/base.h5" "$WORK/reads.fa" --pool mean
SPARSA_PACKED=0 timed reads-base-mean-side 1 "$WORK/base.h5" "$WORK/reads.fa" --pool mean
wait $GEN
for np in 1 2 4; do
  [ "$np" -le "$NGPU" ] && timed "big-np$np" "$np" "$WORK/base.h5" "$WORK/big.fa" --pool bin:128
done
# A/B: 4 GPUs without the NCCL warm-up exchange (connections made inside the first gather).
[ "$NGPU" -ge 4 ] && SPARSA_NCCL_WARMUP=0 timed "big-np4-nowarmup" 4 "$WORK/base.h5" "$WORK/big.fa" --pool bin:128
# Every group, dataset and attribute but the run's own (tests/slurm/h5same.py); a difference
# makes the script's exit status 1.
same=0
cmp() {
  if python3 tests/slurm/h5same.py "$1" "$2"; then echo IDENTICAL; else echo DIFFERENT; same=1; fi
}
echo "== reads, packed vs side by side:"; cmp "$WORK/reads-base-mean-packed.h5" "$WORK/reads-base-mean-side.h5"
if [ "$NGPU" -ge 2 ]; then echo "== 1 vs 2 GPUs:"; cmp "$WORK/big-np1.h5" "$WORK/big-np2.h5"; fi
if [ "$NGPU" -ge 4 ]; then echo "== 1 vs 4 GPUs:"; cmp "$WORK/big-np1.h5" "$WORK/big-np4.h5"; fi
echo "== summary (wall time of the whole command: read, embed, write)"
printf '%s\n' "${ROWS[@]}"
exit $same
