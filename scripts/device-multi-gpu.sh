#!/usr/bin/env bash
# Runs on a machine with 2 (or more) GPUs from the repository root, with the bundled binary in
# .dev/bundle2 (sparsa; shared libraries in .dev/bundle2/lib; see ../shared/tools/bundle-for-device.sh):
# `sparsa embed --device cuda` on 1 GPU and under `mpirun -np 2` (one rank per GPU, records split
# over both), every dataset of the two outputs compared bit for bit (h5py), then the wall time of
# one 16M-token record on 1 and 2 GPUs (strong scaling). A short table last. About 4 minutes.
#   SPARSA_BUNDLE=DIR  bundle folder   OUT=DIR  where the log goes   WORK=DIR  scratch (big files)
#   TOKENS_BIG=N       tokens of the strong-scaling record (default 16777216)
set -uo pipefail
cd "$(dirname "$0")/.."
B=${SPARSA_BUNDLE:-.dev/bundle2}
OUT=${OUT:-/tmp/sparsa-multi-gpu}
WORK=${WORK:-/tmp/sparsa-mg}
TOKENS_BIG=${TOKENS_BIG:-16777216}
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
libs="$(cd "$B" && pwd)/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null) \
         $(python3 -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))' 2>/dev/null) \
         $(python3 -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))' 2>/dev/null); do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
# NVLink multicast stays off on the lent machines (it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
SP="$(cd "$B" && pwd)/sparsa"
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
echo "== device: $NGPU GPU(s); $(mpirun --version 2>&1 | head -1); python3 h5py $(python3 -c 'import h5py; print(h5py.__version__)' 2>&1 | tail -1)"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>&1 | head -4
nvidia-smi topo -m 2>&1 | head -4
ldd "$SP" | grep -E "not found|nccl|libmpi|hdf5" || true
[ "$NGPU" -ge 2 ] || { echo "needs 2 GPUs"; exit 1; }

# Bit-for-bit comparison of every dataset of two HDF5 files (attributes hold the command line).
cat >"$WORK/h5cmp.py" <<'EOF'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
def names(f):
    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(out)
na, nb = names(a), names(b)
bad = []
if na != nb:
    bad.append("dataset lists differ: %s" % sorted(set(na) ^ set(nb))[:5])
vals = 0
for n in sorted(set(na) & set(nb)):
    x, y = a[n][()], b[n][()]
    vals += np.size(x)
    if x.dtype != y.dtype or np.shape(x) != np.shape(y):
        bad.append("%s: %s%s vs %s%s" % (n, x.dtype, np.shape(x), y.dtype, np.shape(y)))
    elif np.asarray(x).tobytes() != np.asarray(y).tobytes():
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.dtype.kind in "fiu":
            diff = xa.astype(np.float64) != ya.astype(np.float64)
            bad.append("%s: %d of %d values differ, max |diff| %.3g" % (
                n, int(diff.sum()), xa.size, float(np.max(np.abs(xa.astype(np.float64) - ya.astype(np.float64))))))
        else:
            bad.append("%s: differs" % n)
print("IDENTICAL" if not bad else "DIFFERENT", "(%d datasets, %d values)" % (len(na), vals))
for s in bad[:12]:
    print("   ", s)
sys.exit(0 if not bad else 1)
EOF

MODEL=$WORK/dna-base.h5
"$SP" init -c configs/dna-base.toml -o "$MODEL" --seed 7 --force 2>&1 | tail -1
# Inputs (seeded; bench/gen_fasta.py): the big one in the background meanwhile.
python3 bench/gen_fasta.py --tokens 300000 --records 2 --seed 3 >"$WORK/two300k.fa"
python3 bench/gen_fasta.py --tokens 2000000 --records 2 --seed 1 >"$WORK/two2M.fa"
( python3 bench/gen_fasta.py --tokens "$TOKENS_BIG" --records 1 --seed 2 >"$WORK/big.fa.tmp" &&
  mv "$WORK/big.fa.tmp" "$WORK/big.fa" ) &
GEN=$!

declare -A WALL EMB
RESULTS=()
# run TAG NP NCCL INPUT ARGS...: one embed (NP = 1: plain process; else mpirun -np NP).
run() {
  local tag=$1 np=$2 nccl=$3 in=$4
  shift 4
  local o="$WORK/$tag.h5" log="$WORK/$tag.log" t1 t2 rc
  rm -rf "$o" "$o.parts"
  t1=$(date +%s.%N)
  if [ "$np" = 1 ]; then
    timeout 200 "$SP" embed -m "$MODEL" -i "$in" -o "$o" --device cuda "$@" >"$log" 2>&1
  else
    timeout 200 mpirun -np "$np" --bind-to none --mca btl self,vader \
      --mca btl_vader_single_copy_mechanism none \
      -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE=0 -x SPARSA_NCCL="$nccl" -x NCCL_DEBUG="${NCCL_DEBUG:-WARN}" \
      "$SP" embed -m "$MODEL" -i "$in" -o "$o" --device cuda --split-min 1000 "$@" >"$log" 2>&1
  fi
  rc=$?
  t2=$(date +%s.%N)
  WALL[$tag]=$(python3 -c "print('%.2f' % ($t2 - $t1))")
  # The run's own time (records read to file closed), from rank 0's "[sparsa] done: ... in Xs".
  EMB[$tag]=$(sed -nE 's/.*done: .* in ([0-9.]+)s .*/\1/p' "$log" | tail -1)
  echo "-- $tag (np=$np, SPARSA_NCCL=$nccl): rc=$rc, wall ${WALL[$tag]} s; $(grep -E 'device:|done:' "$log" | tr '\n' ' ' | tr -s ' ' | cut -c1-200)"
  [ $rc = 0 ] || { grep -vE '^\s*$' "$log" | tail -15; }
  return $rc
}
cmp_h5() {  # LABEL A B
  local r
  if [ ! -f "$WORK/$2.h5" ] || [ ! -f "$WORK/$3.h5" ]; then
    RESULTS+=("$(printf '%-34s %s' "$1" "MISSING (a run failed)")")
    return
  fi
  r=$(python3 "$WORK/h5cmp.py" "$WORK/$2.h5" "$WORK/$3.h5" 2>&1)
  echo "   compare $2 vs $3: $r"
  RESULTS+=("$(printf '%-34s %s' "$1" "$(echo "$r" | head -1)")")
}

echo "== identity: 2 records x 300,000 tokens, a row per token (--pool none --dtype f32)"
# SKIP_FP32=1: bf16 only.
for prec in $([ "${SKIP_FP32:-0}" = 1 ] && echo bf16 || echo fp32 bf16); do
  run one-$prec-300k 1 1 "$WORK/two300k.fa" --precision $prec --pool none --dtype f32
  NCCL_DEBUG=INFO run nccl-$prec-300k 2 1 "$WORK/two300k.fa" --precision $prec --pool none --dtype f32
  [ $prec = fp32 ] && grep -hE "NCCL INFO (Channel 00.*via|NCCL_NVLS|comm .* rank .* nRanks|Using network|NVLS multicast)" \
    "$WORK/nccl-$prec-300k.log" | head -6
  cmp_h5 "$prec 2x300k none: 1 vs 2 GPU NCCL" one-$prec-300k nccl-$prec-300k
done
run mpi-bf16-300k 2 0 "$WORK/two300k.fa" --precision bf16 --pool none --dtype f32
cmp_h5 "bf16 2x300k none: 1 vs 2 GPU MPI" one-bf16-300k mpi-bf16-300k

echo "== identity: 2 records x 2,000,000 tokens (--pool bin:16 --dtype f32)"
run one-bf16-2M 1 1 "$WORK/two2M.fa" --precision bf16 --pool bin:16 --dtype f32
run nccl-bf16-2M 2 1 "$WORK/two2M.fa" --precision bf16 --pool bin:16 --dtype f32
cmp_h5 "bf16 2x2M bin:16: 1 vs 2 GPU NCCL" one-bf16-2M nccl-bf16-2M
# fp32 at 2x2M runs the CUDA-core validation kernels over G = 4096 (minutes): FP32_2M=1 to add it.
if [ "${FP32_2M:-0}" = 1 ]; then
  run one-fp32-2M 1 1 "$WORK/two2M.fa" --precision fp32 --pool bin:16 --dtype f32 &&
    run nccl-fp32-2M 2 1 "$WORK/two2M.fa" --precision fp32 --pool bin:16 --dtype f32 &&
    cmp_h5 "fp32 2x2M bin:16: 1 vs 2 GPU NCCL" one-fp32-2M nccl-fp32-2M
fi
rm -f "$WORK"/*-300k.h5 "$WORK"/*-2M.h5

echo "== strong scaling: 1 record of $TOKENS_BIG tokens, dna-base, bf16, --pool bin:128"
wait $GEN
ls -la "$WORK/big.fa" | awk '{print "   input", $5, "bytes"}'
run one-big 1 1 "$WORK/big.fa" --precision bf16 --pool bin:128
run nccl-big 2 1 "$WORK/big.fa" --precision bf16 --pool bin:128
cmp_h5 "bf16 ${TOKENS_BIG} bin:128: 1 vs 2 NCCL" one-big nccl-big
if [ $(( $(date +%s) - T0 )) -lt 330 ]; then
  run mpi-big 2 0 "$WORK/big.fa" --precision bf16 --pool bin:128
  cmp_h5 "bf16 ${TOKENS_BIG} bin:128: 1 vs 2 MPI" one-big mpi-big
fi
(cd "$WORK" && tar -czf "$OUT/logs.tgz" *.log) 2>/dev/null

echo
echo "== summary ($(( $(date +%s) - T0 )) s)"
printf '%-34s %s\n' "identity (every dataset, bit for bit)" "result"
for r in "${RESULTS[@]}"; do echo "$r"; done
printf '%-34s %8s %8s %9s %8s %8s\n' "strong scaling, $TOKENS_BIG tokens" "wall s" "speedup" "effic." "embed s" "effic."
python3 -c "
w1, e1 = ${WALL[one-big]:-0}, ${EMB[one-big]:-0}
for name, w, e, p in (('1 GPU', w1, e1, 1), ('2 GPUs, NCCL', ${WALL[nccl-big]:-0}, ${EMB[nccl-big]:-0}, 2),
                      ('2 GPUs, host-staged MPI', ${WALL[mpi-big]:-0}, ${EMB[mpi-big]:-0}, 2)):
    if w > 0 and w1 > 0:
        print('%-34s %8.2f %8.2f %8.0f%% %8.2f %7.0f%%' % (name, w, w1 / w, 100 * w1 / w / p, e,
              100 * e1 / e / p if e > 0 else 0))"
