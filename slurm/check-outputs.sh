#!/bin/bash
# Checks that every input of a job array has a complete output; lists those that do not.
#
#   slurm/check-outputs.sh LIST OUTDIR          (by hand, or as the array's summary job:)
#   sbatch --dependency=afterok:ARRAY_JOB slurm/check-outputs.sh [--remove-list] LIST OUTDIR
#
# --remove-list: remove LIST at the end where every output is complete (submit-array.sh's summary
# job: its read-only copy of the list, OUTDIR/.sparsa-inputs.XXXXXX, which the tasks needed until
# they all succeeded; it stays where one is not, for the resubmission).
#
# LIST and OUTDIR are those given to slurm/submit-array.sh: input dir/genome.fa.gz is expected
# as OUTDIR/genome.h5. An output is complete when the file exists and its root attribute
# `complete` is 1 (sparsa writes it last, then renames the file into place; see docs/formats.md).
# Read with `sparsa inspect` ($SPARSA or PATH), else h5dump, else python3 with h5py.
#
# Exit codes: 0 every output complete; 1 some are not (each is listed, with what is left of it:
# a journal OUT.parts/ means --resume, i.e. resubmitting, continues it); 2 usage.
#
#SBATCH --job-name=sparsa-check
#SBATCH --output=sparsa-check-%j.log
#SBATCH --open-mode=append
#SBATCH --ntasks=1
#SBATCH --time=00:15:00

set -uo pipefail

remove_list=""
if [ "${1:-}" = --remove-list ]; then
  remove_list=1
  shift
fi
if [ $# -ne 2 ]; then
  echo "usage: check-outputs.sh [--remove-list] LIST OUTDIR" >&2
  exit 2
fi
LIST=$1 OUTDIR=$2
[ -r "$LIST" ] || { echo "check-outputs: cannot read $LIST" >&2; exit 2; }

SPARSA=${SPARSA:-$(command -v sparsa || true)}

# Prints 1 when $1 is a complete sparsa embeddings file.
is_complete() {
  local out=$1
  if [ -n "$SPARSA" ] && [ -x "$SPARSA" ]; then
    # inspect reads every record's metadata too, so a damaged file fails here.
    local text
    text=$("$SPARSA" inspect "$out" 2>&1) || return 1
    # (only its first line: record names, paths and the command line follow, and may hold any
    # word; inspect exits 0 for a complete, sound embeddings file or a checkpoint)
    head -1 <<<"$text" | grep -q ": sparsa embeddings " &&
      ! head -1 <<<"$text" | grep -q "INCOMPLETE: not a result"
  elif command -v h5dump >/dev/null; then
    h5dump -a /complete "$out" 2>/dev/null | grep -q '(0): 1$'
  else
    python3 -c 'import sys, h5py; sys.exit(0 if h5py.File(sys.argv[1], "r").attrs.get("complete") == 1 else 1)' \
      "$out" 2>/dev/null
  fi
}

n=0 bad=0
# Same rule as embed-array.sbatch: skip blank and # lines; output = OUTDIR/<name less extensions>.h5
while IFS= read -r line || [ -n "$line" ]; do
  input=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' <<<"$line")
  case $input in '' | '#'*) continue ;; esac
  name=$(basename "$input")
  name=${name%.gz}
  name=${name%.bgz}
  name=${name%.*}
  out=$OUTDIR/$name.h5
  n=$((n + 1))
  if [ -f "$out" ] && is_complete "$out"; then
    echo "complete    $out"
    [ -d "$out.parts" ] && echo "            (note: a journal $out.parts/ is left beside it)"
    continue
  fi
  bad=$((bad + 1))
  if [ -f "$out" ]; then
    echo "INCOMPLETE  $out (input $input): not a complete sparsa embeddings file"
  elif [ -d "$out.parts" ]; then
    parts=$(find "$out.parts" -maxdepth 1 -name '[0-9]*.h5' | wc -l)
    echo "UNFINISHED  $out (input $input): $parts journal part file(s) (each holds one or more finished records) in $out.parts/; resubmit to resume, once its task's log (sparsa-ARRAYJOB_TASK.log) shows why it stopped: an error in the input stops it again"
  else
    echo "MISSING     $out (input $input)"
  fi
done <"$LIST"

echo "check-outputs: $((n - bad)) of $n outputs complete in $OUTDIR"
# (only where every output is complete: the list is what a resubmission of the rest needs)
if [ -n "$remove_list" ] && [ "$n" -gt 0 ] && [ "$bad" -eq 0 ]; then
  chmod u+w "$LIST" 2>/dev/null
  rm -f -- "$LIST"
fi
[ "$n" -gt 0 ] || { echo "check-outputs: $LIST lists no inputs" >&2; exit 2; }
[ "$bad" -eq 0 ] || exit 1
