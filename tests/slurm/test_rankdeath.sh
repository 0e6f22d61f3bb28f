#!/usr/bin/env bash
# A rank 0 that hangs under slurm/embed.sbatch while it alone assembles the output and rank 1
# waits (SIGSTOP: alive but silent, as on a stuck file system). srun does not end the step for a
# rank that hangs (and the script runs it with --kill-on-bad-exit=0, so that a rank stopping with
# exit 75 is not killed early), so rank 1's watchdog (SPARSA_COMM_TIMEOUT=5 here) must end the
# job within seconds instead of the time limit; the journal keeps every record, and the job
# submitted again finishes with the same output as a clean run. (A rank killed outright: this
# cluster's PMIx plugin ends the step itself, ~1 s after, whatever --kill-on-bad-exit says.)
source "$(dirname "$0")/common.sh"
make_model
# 10,000 short reads: rank 0's assembly takes ~1.5 s, long enough to be stopped inside it.
"$PY" "$SRC/tests/slurm/make-fasta.py" reads.fa 10000 30 5

say "reference: mpirun -np 2 (a clean run)"
mpirun -np 2 "$REAL_SPARSA" embed --model model.h5 --input reads.fa --output ref.h5 \
  --pool mean -q || fail "reference run failed"

export SPARSA_COMM_TIMEOUT=5  # sbatch passes the environment on to the job
jid=$(sbatch --parsable -n 2 --time=10 --output="$WORK/death-%j.log" \
  "$SRC/slurm/embed.sbatch" model.h5 reads.fa out.h5 --pool mean)
jid=${jid%%;*}
JOBS+=("$jid")
say "submitted job $jid"

# Rank 0 logs "writing OUT" just before it assembles.
t0=$SECONDS
until grep -q "writing out.h5" "death-$jid.log" 2>/dev/null; do
  job_finished "$jid" && fail "job $jid ended before rank 0 began to assemble"
  [ $((SECONDS - t0)) -lt 300 ] || fail "timed out waiting for the assembly"
  sleep 0.02
done
root=""
for p in $(pgrep -f "^$REAL_SPARSA embed"); do
  tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "PMIX_RANK=0" && root=$p
done
[ -n "$root" ] || fail "no sparsa process with PMIX_RANK=0"
say "rank 0 (pid $root) is assembling: SIGSTOP"
kill -STOP "$root" || fail "rank 0 (pid $root) was gone before it could be stopped"
stopped_at=$SECONDS

wait_until 90 "job $jid to end after rank 0 hung" job_finished "$jid"
took=$((SECONDS - stopped_at))
kill -KILL "$root" 2>/dev/null || true  # (the step's end should have killed it)
state=$(job_field "$jid" JobState)
cat "death-$jid.log"
say "job $jid: $state, $took s after rank 0 hung"
[ "$took" -le 60 ] || fail "the job took $took s to end after rank 0 hung"
[ "$state" != COMPLETED ] || fail "the job completed although rank 0 hung"
grep -q "no sign of life" "death-$jid.log" || fail "rank 1's watchdog did not report rank 0"
[ ! -e out.h5 ] || fail "out.h5 exists after rank 0 hung mid-assembly"
parts_at_least out.h5 1 || fail "the journal out.h5.parts lost its records"

say "the same job again: it resumes and finishes"
unset SPARSA_COMM_TIMEOUT  # the default again: this job must not be held to 5 s on a busy VM
rc=0
timeout 300 sbatch --wait -n 2 --output="$WORK/again-%j.log" \
  "$SRC/slurm/embed.sbatch" model.h5 reads.fa out.h5 --pool mean >submit.txt || rc=$?
JOBS+=("$(grep -o '[0-9]*' submit.txt | head -1)")
[ "$rc" -eq 0 ] || fail "the resubmitted job exited with $rc"
grep -q "resuming: 10000 records" again-*.log || fail "the resubmitted job did not resume"
[ ! -e out.h5.parts ] || fail "the journal out.h5.parts was left behind"
same ref.h5 out.h5
say "PASS: rank 0 hung mid-assembly ends the job in $took s; resubmitted, identical to a clean run"
