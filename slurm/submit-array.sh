#!/bin/bash
# Submits a job array that embeds every input listed in a file, and a summary job after it.
#
#   slurm/submit-array.sh [--throttle K] [--parsable] [--check-time M] [--skip-complete]
#                         [--sbatch OPT]... [--check-sbatch OPT]... LIST MODEL OUTDIR [embed options]
#
#   LIST          one input file per line (blank lines and # comments skipped)
#   OUTDIR        one output per input: dir/genome.fa.gz -> OUTDIR/genome.h5
#   --throttle K  at most K array tasks run at once (--array=0-N%K; default 8)
#   --sbatch OPT  one extra sbatch option for the array tasks, repeatable:
#                 --sbatch=-n4 --sbatch=--cpus-per-task=8 --sbatch=--time=2:00:00
#                 (account, partition, QOS, reservation, cluster and wckey ones go to the summary
#                 job too: --sbatch=--account=X --sbatch=--partition=Y; give an option and its
#                 value as one word)
#   --check-sbatch OPT  one sbatch option for the summary job, in place of the array's option of
#                 its kind (partition, account, ...), repeatable (a 1-CPU job:
#                 --check-sbatch=--partition=short where -p names a GPU partition)
#   --parsable    print only "ARRAY_JOB_ID SUMMARY_JOB_ID" ("none none" when nothing is left)
#   --skip-complete  leave out the inputs whose output is complete and was made with MODEL (its
#                 model_sha256; other options are not compared), as read by `sparsa inspect`
#                 ($SPARSA or PATH): a resubmission after a few failed tasks queues only those;
#                 a complete output of another model stops the submission (move it away)
#   --check-time M  the summary job's time limit in minutes (default: 15, plus one for every
#                 6 MB of input, at most 24 hours and at most the partition's limit: it reads
#                 every record's metadata)
#
# The summary job (slurm/check-outputs.sh) waits for the array with --dependency=afterok: it runs
# when every task has succeeded and confirms each output is complete. If a task fails, Slurm
# cancels the summary job (--kill-on-invalid-dep=yes) instead of leaving it pending forever; run
# `slurm/check-outputs.sh LIST OUTDIR` by hand then to list what is missing, and submit this
# script again once `squeue -j ARRAY_JOB_ID` lists no task: finished outputs are kept ("already
# complete") and unfinished ones resume. (A task still running on an output makes a second run on
# it stop at once: the output's journal is locked while a run uses it.)
# The tasks read a read-only copy of LIST made at submission (OUTDIR/.sparsa-inputs.XXXXXX), so
# editing LIST afterwards does not move a task to another input.
# Logs: sparsa-ARRAYID_TASK.log per task and sparsa-check-JOBID.log, in the current directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
throttle=8
parsable=0
skip_complete=0
check_time=""
extra=()
check_opts=()
usage="usage: submit-array.sh [--throttle K] [--parsable] [--check-time M] [--skip-complete] [--sbatch OPT]... [--check-sbatch OPT]... LIST MODEL OUTDIR [embed options]"
while [ $# -gt 0 ]; do
  # (an option that takes a value, given last without one)
  case $1 in
    --throttle | --sbatch | --check-sbatch | --check-time)
      [ $# -ge 2 ] || { echo "submit-array: $1 needs a value after it" >&2; echo "$usage" >&2; exit 2; } ;;
  esac
  case $1 in
    --throttle) throttle=$2; shift 2 ;;
    --throttle=*) throttle=${1#*=}; shift ;;
    --sbatch) extra+=("$2"); shift 2 ;;
    --sbatch=*) extra+=("${1#*=}"); shift ;;
    --check-sbatch) check_opts+=("$2"); shift 2 ;;
    --check-sbatch=*) check_opts+=("${1#*=}"); shift ;;
    --parsable) parsable=1; shift ;;
    --skip-complete) skip_complete=1; shift ;;
    --check-time) check_time=$2; shift 2 ;;
    --check-time=*) check_time=${1#*=}; shift ;;
    -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if ! [[ "$throttle" =~ ^[1-9][0-9]*$ ]]; then
  echo "submit-array: --throttle takes how many tasks may run at once, a whole number of 1 or more (not '$throttle')" >&2
  exit 2
fi
if [ -n "$check_time" ] && ! [[ "$check_time" =~ ^[1-9][0-9]*$ ]]; then
  echo "submit-array: --check-time takes the summary job's minutes, a whole number (not '$check_time')" >&2
  exit 2
fi
# An option's value as a word of its own (--sbatch -A --sbatch proj) would reach the summary job
# without it, and sbatch would take the script for the account.
for o in ${extra[@]+"${extra[@]}"} ${check_opts[@]+"${check_opts[@]}"}; do
  if [[ "$o" =~ ^(-[ApqM]|--(account|partition|qos|reservation|clusters|wckey))$ ]]; then
    joined=${o}=VALUE
    [[ "$o" == --* ]] || joined=${o}VALUE
    echo "submit-array: the sbatch option $o: give it and its value as one word ($joined, as" \
      "in --sbatch=--account=proj or --check-sbatch=--partition=short)" >&2
    exit 2
  fi
done
if [ $# -lt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
LIST=$1 MODEL=$2 OUTDIR=$3
shift 3
[ -r "$LIST" ] || { echo "submit-array: cannot read $LIST" >&2; exit 2; }
# Refused here, not by every task after its wait in the queue: a model that cannot be read, and
# the embed options the tasks set themselves or refuse.
[ -f "$MODEL" ] && [ -r "$MODEL" ] || {
  echo "submit-array: cannot read the model $MODEL (a checkpoint from sparsa init)" >&2
  exit 2
}
for a in "$@"; do
  case ${a%%=*} in
    -m | --model | -i | --input | -o | --output | --resume)
      echo "submit-array: $a is set by the array tasks (MODEL, each input of LIST, OUTDIR/NAME.h5,"         "--resume): give only the other embed options after OUTDIR" >&2
      exit 2 ;;
    --force)
      echo "submit-array: --force is not for array tasks (a requeued task would start over each"         "time): delete the outputs (and their .parts/ folders) to make them again" >&2
      exit 2 ;;
  esac
done

# Count the inputs by the rule the array tasks use, and refuse two inputs that would write the
# same output (same name in different folders).
mapfile -t inputs < <(grep -v -E '^[[:space:]]*(#|$)' "$LIST" |
  sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
n=${#inputs[@]}
[ "$n" -gt 0 ] || { echo "submit-array: $LIST lists no inputs" >&2; exit 2; }
# The output's name, as embed-array.sbatch makes it: dir/genome.fa.gz -> genome
output_name() {
  local name
  name=$(basename "$1")
  name=${name%.gz}
  name=${name%.bgz}
  echo "${name%.*}"
}
declare -A seen=()
for input in "${inputs[@]}"; do
  [ -e "$input" ] || { echo "submit-array: input $input (in $LIST) does not exist" >&2; exit 2; }
  name=$(output_name "$input")
  if [ -n "${seen[$name]:-}" ]; then
    echo "submit-array: $input and ${seen[$name]} would both write $OUTDIR/$name.h5" >&2
    exit 2
  fi
  seen[$name]=$input
done
if [ "$skip_complete" = 1 ]; then
  SPARSA=${SPARSA:-$(command -v sparsa || true)}
  if [ -z "$SPARSA" ] || [ ! -x "$SPARSA" ]; then
    echo "submit-array: --skip-complete reads the outputs with sparsa inspect: set SPARSA or" \
      "put sparsa on PATH" >&2
    exit 2
  fi
  [ -r "$MODEL" ] || { echo "submit-array: cannot read the model $MODEL" >&2; exit 2; }
  model_sha=$(sha256sum <"$MODEL" | cut -d' ' -f1)
  # (inspect exits 0 for a complete output only; one it cannot read is said, and submitted)
  left=() other=()
  for input in "${inputs[@]}"; do
    out=$OUTDIR/$(output_name "$input").h5
    if [ -f "$out" ]; then
      if text=$("$SPARSA" inspect "$out" 2>&1); then
        grep -qE "^ *model_sha256 +$model_sha\$" <<<"$text" && continue
        other+=("$out")  # complete, another model's: a task's --resume would refuse it
      elif ! head -1 <<<"$text" | grep -q 'INCOMPLETE: not a result'; then
        echo "submit-array: warning: sparsa inspect $out failed ($(tail -1 <<<"$text"));" \
          "its input is submitted again" >&2
      fi
    fi
    left+=("$input")
  done
  if [ ${#other[@]} -gt 0 ]; then
    echo "submit-array: ${#other[@]} output(s) in $OUTDIR are complete but were made with another"       "model, which sparsa does not replace without --force (and array tasks do not pass it):" >&2
    printf '  %s\n' "${other[@]:0:10}" >&2
    [ ${#other[@]} -le 10 ] || echo "  ... and $((${#other[@]} - 10)) more" >&2
    echo "move them to another folder (or remove them), then submit again" >&2
    exit 2
  fi
  skipped=$((n - ${#left[@]}))
  if [ ${#left[@]} -eq 0 ]; then
    echo "submit-array: all $n outputs in $OUTDIR are complete and made with $MODEL: nothing" \
      "to submit" >&2
    [ "$parsable" = 1 ] && echo "none none"
    exit 0
  fi
  [ "$skipped" -gt 0 ] &&
    echo "submit-array: skipping $skipped complete output(s) made with $MODEL" >&2
  inputs=("${left[@]}")
  n=${#inputs[@]}
fi
# (before anything is made: a machine without Slurm leaves no list snapshot behind)
command -v sbatch >/dev/null || {
  echo "submit-array: sbatch not found: run this on a Slurm submit (login) node, or put" \
    "Slurm's commands on PATH" >&2
  exit 2
}
# Slurm refuses an array past MaxArraySize (1001 by default) with a terse message.
max_array=$(scontrol show config 2>/dev/null | awk '$1 == "MaxArraySize" {print $3}' || true)
if [[ "$max_array" =~ ^[0-9]+$ ]] && [ "$n" -gt "$max_array" ]; then
  echo "submit-array: $LIST lists $n inputs, but this cluster's MaxArraySize is $max_array:" \
    "split the list (e.g. split -l $max_array $LIST part-) and submit each part" >&2
  exit 2
fi
mkdir -p "$OUTDIR"
# The tasks and the summary job read a copy of the list as it is now, made read-only: a task
# starts (or is requeued) hours later, and a LIST edited meanwhile would send it to another input.
snapshot=$(mktemp "$OUTDIR/.sparsa-inputs.XXXXXX")
printf '%s\n' "${inputs[@]}" >"$snapshot"
chmod a-w "$snapshot"

# The summary job needs the array tasks' account, partition and QOS where a site requires them.
# (--check-sbatch replaces them.)
site=()
for o in ${extra[@]+"${extra[@]}"}; do
  case $o in
    -A* | --account=* | -p* | --partition=* | -q* | --qos=* | --reservation=* | -M* | \
      --clusters=* | --wckey=*) site+=("$o") ;;
  esac
done
# --check-sbatch replaces the options of its kind (a partition, say), not the account.
kind() {
  case $1 in
    -A* | --account=*) echo account ;;
    -p* | --partition=*) echo partition ;;
    -q* | --qos=*) echo qos ;;
    --reservation=*) echo reservation ;;
    -M* | --clusters=*) echo clusters ;;
    --wckey=*) echo wckey ;;
    *) echo "other $1" ;;
  esac
}
if [ ${#check_opts[@]} -gt 0 ]; then
  kept=()
  for o in ${site[@]+"${site[@]}"}; do
    replaced=""
    for c in "${check_opts[@]}"; do [ "$(kind "$o")" = "$(kind "$c")" ] && replaced=1; done
    [ -n "$replaced" ] || kept+=("$o")
  done
  site=(${kept[@]+"${kept[@]}"} "${check_opts[@]}")
fi

# The array tasks find embed.sbatch through this (Slurm runs a copy of the batch script).
export SPARSA_SLURM_SCRIPTS=$here
rc=0
array_id=$(sbatch --parsable --array="0-$((n - 1))%$throttle" ${extra[@]+"${extra[@]}"} \
  "$here/embed-array.sbatch" "$snapshot" "$MODEL" "$OUTDIR" "$@") || rc=$?
if [ "$rc" -ne 0 ]; then
  chmod u+w "$snapshot" && rm -f "$snapshot"
  echo "submit-array: sbatch refused the array (its message above; exit $rc): nothing was" \
    "submitted" >&2
  exit "$rc"
fi
array_id=${array_id%%;*}  # "ID;cluster" on multi-cluster sites
[ "$parsable" = 1 ] ||
  echo "Submitted array job $array_id: $n inputs, at most $throttle at once (logs sparsa-${array_id}_N.log)"
# The array is queued whatever happens next: a summary job that cannot be submitted (a site that
# needs -A or -p for every job, say) is reported, not an error that hides the array's id.
# Its time: `sparsa inspect` reads every record's metadata (~0.5 ms a record; a gzipped FASTQ
# holds a read in ~100 bytes, so ~5 us a byte, doubled): 15 minutes and one for every 6 MB.
if [ -n "$check_time" ]; then
  check_minutes=$check_time
else
  # (the names through stdin: no ARG_MAX limit, no name taken for an option; any failure: 0)
  bytes=$( (printf '%s\0' "${inputs[@]}" | du -cLb --files0-from=- 2>/dev/null || true) |
    tail -1 | cut -f1)
  [[ "$bytes" =~ ^[0-9]+$ ]] || bytes=0
  check_minutes=$((15 + bytes / 6000000))
  [ "$check_minutes" -le 1440 ] || check_minutes=1440  # a genome is few records: hours at most
  # Not past the partition's limit (sbatch would leave the job pending with PartitionTimeLimit):
  # the partition the summary job names, else the default one.
  # The shortest of the partitions it names (-p a,b), else SBATCH_PARTITION's, else the default
  # one; of the cluster it names (-M).
  part="" clusters=()
  for o in ${site[@]+"${site[@]}"}; do
    case $o in
      -p*) part=${o#-p} ;;
      --partition=*) part=${o#--partition=} ;;
      -M*) clusters=(-M "${o#-M}") ;;
      --clusters=*) clusters=(-M "${o#--clusters=}") ;;
    esac
  done
  part=${part:-${SBATCH_PARTITION:-}}
  limits=$(sinfo ${clusters[@]+"${clusters[@]}"} -h -o '%P %l' 2>/dev/null | awk -v parts="$part" '
    BEGIN { n = split(parts, want, ",") }
    { name = $1; sub(/\*$/, "", name)
      if (n == 0 && $1 ~ /\*$/) print $2
      for (i = 1; i <= n; ++i) if (name == want[i]) print $2 }' || true)
  for limit in $limits; do
    max_minutes=""
    if [[ "$limit" =~ ^(([0-9]+)-)?([0-9]+):([0-9]+):([0-9]+)$ ]]; then
      max_minutes=$(((10#${BASH_REMATCH[2]:-0} * 24 + 10#${BASH_REMATCH[3]}) * 60 + 10#${BASH_REMATCH[4]}))
    elif [[ "$limit" =~ ^([0-9]+):([0-9]+)$ ]]; then
      max_minutes=$((10#${BASH_REMATCH[1]}))
    elif [[ "$limit" =~ ^[0-9]+$ ]]; then
      max_minutes=$limit
    fi
    if [ -n "$max_minutes" ] && [ "$max_minutes" -ge 1 ] && [ "$check_minutes" -gt "$max_minutes" ]; then
      check_minutes=$max_minutes
    fi
  done
fi
if check_id=$(sbatch --parsable --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
  --time="$check_minutes" ${site[@]+"${site[@]}"} "$here/check-outputs.sh" --remove-list "$snapshot" "$OUTDIR"); then
  check_id=${check_id%%;*}
  [ "$parsable" = 1 ] ||
    echo "Submitted summary job $check_id: checks $OUTDIR after every task succeeds (log sparsa-check-$check_id.log)"
else
  check_id=none
  echo "warning: the summary job was not submitted; when the array ends, run" \
    "$here/check-outputs.sh $snapshot $OUTDIR" >&2
fi
[ "$parsable" = 1 ] && echo "$array_id $check_id"
exit 0
