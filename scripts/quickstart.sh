#!/usr/bin/env bash
# Quick start: install, build, and embed the bundled lambda phage genome on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
bash scripts/build.sh
mkdir -p out
./build/sparsa init --config configs/dna-tiny.toml --output out/dna-tiny.h5 --seed 1 --force
./build/sparsa embed --model out/dna-tiny.h5 --input examples/lambda_virus.fa.gz \
  --output out/lambda.h5 --pool bin:128 --device cpu --force
./build/sparsa inspect out/lambda.h5
cat <<'MSG'

Done. out/lambda.h5 holds the embedding of the lambda phage genome (48,502 bp): one 64-dim
vector per 128-bp bin in /records/<key>/embedding, with bin_start/bin_end, the global tokens
the router chose in each layer, and the provenance of the run. The weights are random
(`sparsa init`) until training lands. Read it in Python:
  /usr/bin/python3 -c "import h5py; f=h5py.File('out/lambda.h5'); r=f['records']; k=list(r)[0]; print(k, r[k]['embedding'].shape)"
MSG
