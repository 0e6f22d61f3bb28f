#!/usr/bin/env bash
# CPU benchmarks of issue 2 and 3 (not tests): end-to-end tokens/s and peak memory (max RSS) of
# `sparsa embed` with dna-tiny on E. coli K-12 (4.64 Mb) and a 1 Mb region of it, and the
# MPI halo traffic and time with P = 1 and 2. Prints a table last.
#   [SPARSA=BIN] bench/cpu-benchmarks.sh [DATA_DIR]      (default ../shared/data, build/sparsa)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
bin=${SPARSA:-build/sparsa}  # SPARSA=path/to/sparsa for another build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=yes OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_io=romio321
$bin init --config configs/dna-tiny.toml --output "$work/tiny.h5" --seed 1 2>/dev/null
zcat "$data/dna/ecoli_k12_mg1655.fasta.gz" > "$work/ecoli.fa"
rows=()
measure() {  # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" 2>"$work/log" >/dev/null
  read -r secs kb < "$work/time"
  rows+=("$(awk -v n="$name" -v t="$tokens" -v s="$secs" -v k="$kb" \
    'BEGIN { printf "%-34s %9d %8.1f %10.1f %9.0f", n, t, s, t / s / 1000, k / 1024 }')")
}
tokens=1000000
measure "E. coli 1 Mb region, pool none" $bin embed -q --model "$work/tiny.h5" --input "$work/ecoli.fa" \
  --region K-12-MG1655:1-1000000 --output "$work/r1.h5"
tokens=$(grep -v '>' "$work/ecoli.fa" | tr -d '\n\r' | wc -c)  # 4,639,675 bases
measure "E. coli 4.64 Mb, pool none" $bin embed -q --model "$work/tiny.h5" --input "$work/ecoli.fa" \
  --output "$work/all.h5"
measure "E. coli 4.64 Mb, pool bin:128" $bin embed -q --model "$work/tiny.h5" --input "$work/ecoli.fa" \
  --output "$work/bin.h5" --pool bin:128
tokens=1000000
# (--bind-to none: mpirun binds a run of up to 2 ranks to one core each, so -np 1 would get one
# thread; this way 1 rank of 2 threads is set against 2 ranks of 1)
measure "1 Mb region, mpirun -np 1 (2 threads)" mpirun -np 1 --bind-to none $bin embed -q --model "$work/tiny.h5" \
  --input "$work/ecoli.fa" --region K-12-MG1655:1-1000000 --output "$work/m1.h5" --pool bin:128 --split-min 1000
measure "1 Mb region, mpirun -np 2" mpirun -np 2 $bin embed -q --model "$work/tiny.h5" \
  --input "$work/ecoli.fa" --region K-12-MG1655:1-1000000 --output "$work/m2.h5" --pool bin:128 --split-min 1000
SPARSA_COMM_STATS=1 mpirun -np 2 $bin embed -q --model "$work/tiny.h5" --input "$work/ecoli.fa" \
  --region K-12-MG1655:1-1000000 --output "$work/m3.h5" --pool bin:128 --split-min 1000 2>&1 | grep "sent" || true
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/{print $2}') GiB"
printf '%-34s %9s %8s %10s %9s\n' "run" "tokens" "seconds" "ktok/s" "maxRSS MB"
printf '%s\n' "${rows[@]}"
