#!/usr/bin/env bash
# slurm/submit-array.sh over 3 inputs: a job array (one output per input, at most 2 at once) and
# a summary job (slurm/check-outputs.sh, --dependency=afterok) that finds every output complete.
# Each output equals a plain run on its input. check-outputs.sh also lists (and fails on) outputs
# that are missing or unfinished.
source "$(dirname "$0")/common.sh"
make_model
mkdir -p in
for i in 1 2 3; do
  "$PY" "$SRC/tests/slurm/make-fasta.py" "in/sample$i.fa" 2 3000 "$i" "s${i}_"
done
gzip in/sample3.fa  # sample3.fa.gz -> out/sample3.h5
# The list: absolute and relative paths, with a comment and a blank line that are skipped.
{
  echo "# inputs for the array test"
  echo "$WORK/in/sample1.fa"
  echo ""
  echo "in/sample2.fa"
  echo "  in/sample3.fa.gz  "
} >inputs.txt

read -r array_id check_id < <(bash "$SRC/slurm/submit-array.sh" --parsable --throttle 2 \
  inputs.txt model.h5 out)
JOBS+=("$array_id" "$check_id")
# The list edited after submission: the tasks (task 2 starts only after one of the first two has
# ended) read the copy made at submission, not this.
printf 'in/not-there.fa\nin/nor-this.fa\nin/nor-that.fa\n' >inputs.txt
say "array job $array_id, summary job $check_id"
[ "$(job_field "$array_id" ArrayTaskThrottle)" = 2 ] || fail "the array is not throttled to 2"

wait_until 400 "summary job $check_id to finish" job_finished "$check_id"
state=$(job_field "$check_id" JobState)
exitcode=$(job_field "$check_id" ExitCode)
for f in sparsa-"${array_id}"_*.log sparsa-check-"$check_id".log; do
  echo "---- $f"
  cat "$f"
done
[ "$state" = COMPLETED ] && [ "$exitcode" = 0:0 ] || fail "summary job $check_id: $state ($exitcode)"
for t in 0 1 2; do
  [ -f "sparsa-${array_id}_$t.log" ] || fail "no log for array task $t"
done
grep -q "3 of 3 outputs complete" "sparsa-check-$check_id.log" || fail "summary does not say 3 of 3"
# The summary job removed the list's copy (the tasks no longer need it): none pile up in out/.
if ls out/.sparsa-inputs.* >/dev/null 2>&1; then
  fail "the list's copy was left in out/: $(ls out/.sparsa-inputs.*)"
fi
# The same path strings as in the list: a record's `source` attribute is the path as given.
for i in 1 2 3; do
  in=in/sample$i.fa
  [ $i -eq 1 ] && in=$WORK/in/sample1.fa
  [ $i -eq 3 ] && in=in/sample3.fa.gz
  "$REAL_SPARSA" embed --model model.h5 --input "$in" --output "ref$i.h5" -q
  same "ref$i.h5" "out/sample$i.h5"
done

say "--skip-complete: nothing to submit; then only the output that was removed"
printf '%s\n' "$WORK/in/sample1.fa" in/sample2.fa in/sample3.fa.gz >again.txt
read -r a c < <(bash "$SRC/slurm/submit-array.sh" --parsable --skip-complete again.txt model.h5 out)
[ "$a $c" = "none none" ] || { JOBS+=("$a" "$c"); fail "submitted $a $c with every output complete"; }
rm out/sample2.h5
read -r array_id check_id < <(bash "$SRC/slurm/submit-array.sh" --parsable --skip-complete \
  again.txt model.h5 out)
JOBS+=("$array_id" "$check_id")
wait_until 300 "summary job $check_id to finish" job_finished "$check_id"
[ "$(job_field "$check_id" JobState)" = COMPLETED ] || fail "summary job $check_id did not complete"
grep -q "1 of 1 outputs complete" "sparsa-check-$check_id.log" ||
  fail "the second array was not of the one missing output"
[ ! -e "sparsa-${array_id}_1.log" ] || fail "the second array had more than one task"
ls out/.sparsa-inputs.* >/dev/null 2>&1 && fail "the second array's list copy was left in out/"
same ref2.h5 out/sample2.h5

say "check-outputs.sh lists what is not complete"
mkdir -p out/sample4.h5.parts
# A complete output whose path holds the word INCOMPLETE is complete (only inspect's first line
# and exit status judge it, not the names and paths it lists).
cp out/sample1.h5 out/INCOMPLETE_run.h5
printf '%s\n' in/sample1.fa in/sample4.fa in/sample5.fa in/INCOMPLETE_run.fa >more.txt
rc=0
bash "$SRC/slurm/check-outputs.sh" more.txt out >check.txt || rc=$?
cat check.txt
[ "$rc" -eq 1 ] || fail "check-outputs.sh exited $rc, expected 1"
grep -q "^complete .*out/sample1.h5" check.txt &&
  grep -q "^UNFINISHED .*out/sample4.h5" check.txt &&
  grep -q "^MISSING .*out/sample5.h5" check.txt &&
  grep -q "^complete .*out/INCOMPLETE_run.h5" check.txt ||
  fail "check-outputs.sh listed the wrong outputs"
# --remove-list keeps the list where an output is not complete (a resubmission needs it)
cp more.txt more-copy.txt
bash "$SRC/slurm/check-outputs.sh" --remove-list more-copy.txt out >/dev/null || true
[ -f more-copy.txt ] || fail "check-outputs.sh --remove-list removed the list of unfinished inputs"
printf '%s\n' in/sample1.fa >done.txt
bash "$SRC/slurm/check-outputs.sh" --remove-list done.txt out >/dev/null ||
  fail "check-outputs.sh failed on a complete output"
[ ! -e done.txt ] || fail "check-outputs.sh --remove-list kept the list of a finished array"
say "a failing task: the summary job is cancelled, not left pending"
printf 'not a FASTA file\n' >in/broken.fa
printf '%s\n' in/sample1.fa in/broken.fa >broken.txt
read -r array_id check_id < <(bash "$SRC/slurm/submit-array.sh" --parsable broken.txt model.h5 out)
JOBS+=("$array_id" "$check_id")
wait_until 120 "summary job $check_id to be cancelled" job_finished "$check_id"
[ "$(job_field "$check_id" JobState)" = CANCELLED ] ||
  fail "summary job $check_id: $(job_field "$check_id" JobState), expected CANCELLED"
grep -q "sparsa: error" sparsa-"${array_id}"_1.log || fail "task 1 did not report the bad input"

# The summary job's time limit stays within the partition's (a stub sinfo says 20 minutes where
# the estimate is more: ~100 MB of input); an option's value given as a word of its own is
# refused before anything is submitted.
mkdir -p stubs
cat >stubs/sinfo <<'STUB'
#!/bin/bash
[ "$*" = "-h -o %P %l" ] && { echo "debug* 20:00"; exit 0; }
exec /usr/bin/sinfo "$@"
STUB
chmod +x stubs/sinfo
truncate -s 100000000 in/big.fa  # (sparse; never read: the jobs are cancelled at once)
echo "$WORK/in/big.fa" >one.txt
read -r array_id check_id < <(PATH="$PWD/stubs:$PATH" bash "$SRC/slurm/submit-array.sh" \
  --parsable --sbatch=--hold one.txt model.h5 out-limit)
JOBS+=("$array_id" "$check_id")
limit=$(job_field "$check_id" TimeLimit)
scancel "$array_id" "$check_id"
[ "$limit" = 00:20:00 ] || fail "summary job's time limit $limit, expected the partition's 00:20:00"
if out=$(bash "$SRC/slurm/submit-array.sh" --sbatch -A --sbatch proj one.txt model.h5 out-a 2>&1); then
  fail "--sbatch -A (its value apart) was accepted: $out"
fi
grep -q "the sbatch option -A: give it and its value as one word (-AVALUE" <<<"$out" ||
  fail "unclear refusal: $out"

# What every task would fail on after its wait in the queue is refused at once (exit 2), with
# nothing made: a model that cannot be read, options the tasks set or refuse, a bad throttle, an
# option without its value.
for args in "one.txt nomodel.h5 out-r" "one.txt model.h5 out-r --force" \
  "one.txt model.h5 out-r --output=x.h5" "one.txt model.h5 out-r -i x.fa" \
  "--throttle abc one.txt model.h5 out-r" "--throttle 0 one.txt model.h5 out-r" \
  "one.txt model.h5 out-r --resume" "--sbatch"; do
  rc=0
  out=$(bash "$SRC/slurm/submit-array.sh" $args 2>&1) || rc=$?
  [ "$rc" -eq 2 ] || fail "submit-array.sh $args: exit $rc, expected 2: $out"
  grep -q "submit-array: " <<<"$out" || fail "submit-array.sh $args: no message of its own: $out"
  [ ! -e out-r ] || fail "submit-array.sh $args made out-r"
done
# An array sbatch refuses (a bad option) leaves no list copy behind and exits non-zero.
rc=0
out=$(bash "$SRC/slurm/submit-array.sh" --sbatch=--no-such-option one.txt model.h5 out-bad 2>&1) ||
  rc=$?
[ "$rc" -ne 0 ] || fail "an array sbatch refused was reported as submitted: $out"
grep -q "sbatch refused the array" <<<"$out" || fail "unclear message for sbatch's refusal: $out"
[ -z "$(ls -A out-bad 2>/dev/null)" ] || fail "a refused array left $(ls -A out-bad) in out-bad"
# --skip-complete with a complete output of another model: refused and listed (its task's
# --resume would refuse it), the output kept.
"$REAL_SPARSA" init --config "$SRC/configs/dna-tiny.toml" --output model2.h5 --seed 2 -q
rc=0
out=$(bash "$SRC/slurm/submit-array.sh" --skip-complete again.txt model2.h5 out 2>&1) || rc=$?
[ "$rc" -eq 2 ] || fail "--skip-complete over another model's outputs: exit $rc: $out"
grep -q "were made with another" <<<"$out" && grep -q "out/sample1.h5" <<<"$out" ||
  fail "another model's outputs not listed: $out"
[ -f out/sample1.h5 ] || fail "an output of another model was removed"

# Without sbatch on PATH (a laptop, a compute node): refused before OUTDIR is made.
mkdir -p nosb
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  for f in "$d"/*; do
    b=${f##*/}
    [ "$b" = sbatch ] || [ -e "nosb/$b" ] || ln -s "$f" "nosb/$b"
  done
done 2>/dev/null
if out=$(PATH="$PWD/nosb" bash "$SRC/slurm/submit-array.sh" one.txt model.h5 out-nosb 2>&1); then
  fail "submit-array.sh without sbatch succeeded: $out"
fi
grep -q "sbatch not found" <<<"$out" || fail "unclear refusal without sbatch: $out"
[ ! -e out-nosb ] || fail "submit-array.sh without sbatch made out-nosb"

say "PASS: array over 3 inputs, summary step complete, incomplete outputs listed; the summary" \
  "job's time within the partition's; an option's value apart refused; no sbatch, nothing made"
