#!/usr/bin/env bash
# A running slurm/embed.sbatch job stopped part way, twice, ends with the same output as a clean
# run:
#  1. USR1 to the batch shell (what --signal=B:USR1@120 sends before the time limit):
#     sparsa stops at a safe point (exit 75) and the script requeues the job itself;
#  2. `scontrol requeue` by hand while the restarted job runs: Slurm sends TERM and requeues it.
# Every start runs with --resume; the log shows SLURM_RESTART_COUNT=0, 1 and 2.
source "$(dirname "$0")/common.sh"
make_model
# 16 records of 40 kb (fixed seed): enough finished records to keep, and enough left to stop.
"$PY" "$SRC/tests/slurm/make-fasta.py" big.fa 16 40000 7
NREC=16

say "reference: mpirun -np 2 (a clean run)"
mpirun -np 2 "$REAL_SPARSA" embed --model model.h5 --input big.fa --output ref.h5 -q ||
  fail "reference run failed"

jid=$(sbatch --parsable -n 2 --output="$WORK/requeue-%j.log" \
  "$SRC/slurm/embed.sbatch" model.h5 big.fa out.h5)
jid=${jid%%;*}
JOBS+=("$jid")
say "submitted job $jid"

n_parts() { find out.h5.parts -maxdepth 1 -name '[0-9]*.h5' 2>/dev/null | wc -l; }
# Waits (polling every 0.1 s) until run number RESTARTS of the job is running and has itself
# written a record: sparsa is then past its start (its signal handlers are in place) and has
# work left. Prints the number of finished records.
wait_for_progress() {
  local restarts=$1 t0=$SECONDS base=""
  while :; do
    job_finished "$jid" && fail "job $jid ended before it could be stopped part way (too fast?)"
    [ $((SECONDS - t0)) -lt 300 ] || fail "timed out waiting for run $restarts of job $jid"
    if [ -z "$base" ]; then
      # The records kept by the runs before this one, counted once this run has started.
      [ "$(job_field "$jid" JobState)" = RUNNING ] &&
        [ "$(job_field "$jid" Restarts)" = "$restarts" ] && base=$(n_parts)
    elif [ "$(n_parts)" -gt "$base" ]; then
      n_parts
      return 0
    fi
    sleep 0.1
  done
}

n1=$(wait_for_progress 0)
say "run 1 has $n1 of $NREC records: USR1 to the batch shell (the time-limit warning)"
scancel --batch --signal=USR1 "$jid"
wait_until 120 "job $jid requeued by its script" \
  bash -c "[ \"\$(scontrol show job -o $jid | grep -o 'Restarts=[0-9]*')\" = Restarts=1 ]"

n2=$(wait_for_progress 1)
[ "$n2" -lt "$NREC" ] || fail "run 2 finished every record before it could be requeued"
say "run 2 has $n2 of $NREC records: scontrol requeue $jid (by hand)"
scontrol requeue "$jid"

wait_until 400 "job $jid to finish" job_finished "$jid"
state=$(job_field "$jid" JobState)
exitcode=$(job_field "$jid" ExitCode)
restarts=$(job_field "$jid" Restarts)
log=requeue-$jid.log
cat "$log"
say "job $jid: $state, exit $exitcode, restarts $restarts"
[ "$state" = COMPLETED ] && [ "$exitcode" = 0:0 ] || fail "job $jid ended $state ($exitcode)"
[ "$restarts" = 2 ] || fail "expected 2 restarts, Slurm counts $restarts"
for c in 0 1 2; do
  grep -q "SLURM_RESTART_COUNT=$c" "$log" || fail "the log does not show SLURM_RESTART_COUNT=$c"
done
grep -q "received SIGUSR1" "$log" || fail "the batch shell did not log the USR1"
grep -q "requeued job $jid" "$log" || fail "the script did not requeue itself after USR1"
grep -q "stopped on SIGTERM: not requeueing" "$log" || fail "no TERM stop logged for the hand requeue"
[ "$(grep -c 'sparsa exited with 75' "$log")" -eq 2 ] || fail "expected two stops with exit 75"
[ "$(grep -c 'resuming: ' "$log")" -eq 2 ] || fail "expected two resumed runs"
[ ! -e out.h5.parts ] || fail "the journal out.h5.parts was left behind"
same ref.h5 out.h5

# 3. A job stopped before it finished a record (one long record: a record is kept only whole) is
#    not requeued: a requeued job would start the same record from zero again, forever.
"$PY" "$SRC/tests/slurm/make-fasta.py" long.fa 1 3000000 9
jid2=$(sbatch --parsable -n 1 --output="$WORK/norequeue-%j.log" \
  "$SRC/slurm/embed.sbatch" model.h5 long.fa long.h5 --threads 1)
jid2=${jid2%%;*}
JOBS+=("$jid2")
wait_until 120 "job $jid2 to start sparsa" grep -q "srun " "$WORK/norequeue-$jid2.log"
sleep 3
scancel --batch --signal=USR1 "$jid2"
wait_until 120 "job $jid2 to end" job_finished "$jid2"
log2=norequeue-$jid2.log
cat "$log2"
[ "$(job_field "$jid2" Restarts)" = 0 ] || fail "job $jid2 was requeued without a finished record"
grep -q "no record was finished in this job" "$log2" || fail "the script did not say why it stops"
grep -q "requeued job $jid2" "$log2" && fail "the script requeued job $jid2"
# 4. A journal on a node-local file system of a cluster of several nodes: the job does not
#    requeue itself after USR1 (a restart on another node would not see OUTPUT.parts/ and start
#    over, forever). This one-node cluster is made to look like two, on ext4, by stubs on PATH.
mkdir -p stubs
cat >stubs/sinfo <<'STUB'
#!/bin/bash
case "$*" in "-h -N "*"-o %N") printf 'n1\nn2\n'; exit 0 ;; esac
exec /usr/bin/sinfo "$@"
STUB
cat >stubs/stat <<'STUB'
#!/bin/bash
[ "$1" = -f ] && { echo ext2/ext3; exit 0; }
exec /usr/bin/stat "$@"
STUB
chmod +x stubs/sinfo stubs/stat
jid3=$(PATH="$PWD/stubs:$PATH" sbatch --parsable -n 2 --output="$WORK/local-%j.log" \
  "$SRC/slurm/embed.sbatch" model.h5 big.fa local.h5)
jid3=${jid3%%;*}
JOBS+=("$jid3")
t0=$SECONDS
until parts_at_least local.h5 1; do
  job_finished "$jid3" && fail "job $jid3 ended before it could be stopped part way"
  [ $((SECONDS - t0)) -lt 300 ] || fail "timed out waiting for job $jid3's first record"
  sleep 0.1
done
scancel --batch --signal=USR1 "$jid3"
wait_until 120 "job $jid3 to end" job_finished "$jid3"
log3=local-$jid3.log
cat "$log3"
[ "$(job_field "$jid3" Restarts)" = 0 ] || fail "job $jid3 requeued itself with a node-local journal"
grep -q "is on a node-local file system (ext2/ext3) of a 2-node partition" "$log3" ||
  fail "no warning about the node-local journal at the start"
grep -q "not requeueing: the journal is on this node's local disk" "$log3" ||
  fail "the script did not say why it does not requeue"
[ -d local.h5.parts ] || fail "the journal local.h5.parts/ is gone"
say "PASS: stopped by USR1 and by scontrol requeue, resumed, identical to a clean run; a job" \
  "that finished no record is not requeued, nor one whose journal is on a node's local disk"
