#!/usr/bin/env bash
# slurm/embed.sbatch with 2 tasks, submitted with `sbatch --wait` to the test cluster, writes the
# same embeddings as `mpirun -np 2`: the lambda genome split over both ranks (--split-min 1000),
# each rank started by srun through PMIx (checked by a wrapper that records what every rank saw).
source "$(dirname "$0")/common.sh"
make_model
LAMBDA=$SRC/examples/lambda_virus.fa.gz

say "reference: mpirun -np 2"
mpirun -np 2 "$REAL_SPARSA" embed --model model.h5 --input "$LAMBDA" --output ref.h5 \
  --split-min 1000 -q || fail "mpirun reference run failed"

# The job runs this wrapper as its sparsa: it notes each rank's launch environment, then execs.
cat >sparsa-wrapper.sh <<W
#!/bin/bash
echo "rank=\${PMIX_RANK:-none} ntasks=\${SLURM_NTASKS:-none} localid=\${SLURM_LOCALID:-none}" >>"$WORK/ranks.txt"
exec "$REAL_SPARSA" "\$@"
W
chmod +x sparsa-wrapper.sh

say "sbatch --wait -n 2 slurm/embed.sbatch"
rc=0
SPARSA=$WORK/sparsa-wrapper.sh timeout 420 sbatch --wait -n 2 --output="$WORK/embed-%j.log" \
  "$SRC/slurm/embed.sbatch" model.h5 "$LAMBDA" slurm.h5 --split-min 1000 >submit.txt || rc=$?
cat submit.txt
JOBS+=("$(grep -o '[0-9]*' submit.txt | head -1)")
[ "$rc" -eq 0 ] || fail "the job exited with $rc"

log=$(ls embed-*.log)
cat "$log"
grep -q -- "--mpi=pmix" "$log" || fail "the step was not launched with srun --mpi=pmix"
grep -q "SLURM_RESTART_COUNT=0" "$log" || fail "the log does not show SLURM_RESTART_COUNT=0"
sort ranks.txt
[ "$(sort -u ranks.txt | wc -l)" -eq 2 ] &&
  grep -q "rank=0 ntasks=2 localid=0" ranks.txt && grep -q "rank=1 ntasks=2 localid=1" ranks.txt ||
  fail "expected two PMIx ranks (0 and 1 of 2, node-local ids 0 and 1)"
[ ! -e slurm.h5.parts ] || fail "the journal slurm.h5.parts was left behind"
same ref.h5 slurm.h5

# --force would make every requeue start over: refused before any step, in each spelling sparsa
# takes (--force=true too), and nothing is written.
for f in --force --force=true; do
  rc=0
  bash "$SRC/slurm/embed.sbatch" model.h5 "$LAMBDA" forced.h5 "$f" 2>force.txt || rc=$?
  [ "$rc" -eq 2 ] && grep -q -- "--force is not for this script" force.txt ||
    { cat force.txt; fail "embed.sbatch with $f: exit $rc, not the refusal"; }
  [ ! -e forced.h5 ] || fail "embed.sbatch with $f wrote forced.h5"
done
# A login profile's OMP_NUM_THREADS=1 on a whole node (--exclusive, no --cpus-per-task), and a
# time limit of a few minutes (USR1 comes 120 s before it): both warned about in the log.
say "sbatch --exclusive --time=5 with OMP_NUM_THREADS=1"
rc=0
OMP_NUM_THREADS=1 timeout 300 sbatch --wait -n 1 --exclusive --time=5 \
  --output="$WORK/short-%j.log" "$SRC/slurm/embed.sbatch" model.h5 "$LAMBDA" short.h5 \
  --pool mean >submit.txt || rc=$?
JOBS+=("$(grep -o '[0-9]*' submit.txt | head -1)")
log=$(ls short-*.log)
cat "$log"
[ "$rc" -eq 0 ] || fail "the short job exited with $rc"
if [ "$(grep -o 'CPUs=[0-9]*' <<<"$(scontrol show node -o | head -1)" | cut -d= -f2)" -gt 1 ]; then
  grep -q "warning: OMP_NUM_THREADS=1 (set before this script) while the node gives each task" \
    "$log" || fail "no warning about OMP_NUM_THREADS=1 on an --exclusive node"
fi
grep -q "warning: the time limit is 00:05:00: sparsa is asked to stop at the USR1 warning" \
  "$log" || fail "no warning about a time limit of 5 minutes"

# SPARSA_SRUN_MPI=none with 2 tasks: refused, said as the user's choice.
say "SPARSA_SRUN_MPI=none with 2 tasks"
rc=0
SPARSA_SRUN_MPI=none timeout 300 sbatch --wait -n 2 --output="$WORK/nompi-%j.log" \
  "$SRC/slurm/embed.sbatch" model.h5 "$LAMBDA" nompi.h5 >submit.txt || rc=$?
JOBS+=("$(grep -o '[0-9]*' submit.txt | head -1)")
log=$(ls nompi-*.log)
cat "$log"
[ "$rc" -ne 0 ] || fail "a 2-task job with SPARSA_SRUN_MPI=none ran"
grep -q "SPARSA_SRUN_MPI=none: a 2-task run needs srun's PMIx or PMI-2 plugin" "$log" ||
  fail "the refusal does not say that SPARSA_SRUN_MPI=none was the user's choice"
say "PASS: sbatch 2 tasks == mpirun -np 2"
