#!/usr/bin/env bash
# Regenerates fuzz/corpus/fuzz_checkpoint/: two tiny real checkpoints written by `sparsa init`
# and damaged copies of them (each one exercising one refusal of load_checkpoint), so that the
# fuzzer starts from valid HDF5 rather than having to discover the file format from nothing.
# Usage: fuzz/make_checkpoint_seeds.sh [path/to/sparsa]   (needs python3-h5py)
set -euo pipefail
cd "$(dirname "$0")/.."
SPARSA=${1:-build/sparsa}
OUT=fuzz/corpus/fuzz_checkpoint
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"

# The smallest valid models (d_model 8, one layer): about 16 KB each, so mutations stay fast.
cat > "$TMP/dna.toml" <<'TOML'
[model]
kind = "dna"
d_model = 8
n_layers = 1
n_heads = 2
d_ff = 8
window = 4
router_hidden = 4
TOML
cat > "$TMP/ts.toml" <<'TOML'
[model]
kind = "timeseries"
d_model = 8
n_layers = 1
n_heads = 2
d_ff = 8
window = 4
router_hidden = 4
channels = 2
ts_bins = 4
ts_transform = "diff"
TOML
"$SPARSA" init --config "$TMP/dna.toml" --output "$OUT/dna-micro.h5" --seed 1 --force
"$SPARSA" init --config "$TMP/ts.toml" --output "$OUT/ts-micro.h5" --seed 2 --force

/usr/bin/env python3 - "$OUT" <<'PY'
import shutil, sys
import h5py, numpy as np
out = sys.argv[1]
src = f"{out}/dna-micro.h5"

def variant(name, edit):
    path = f"{out}/{name}.h5"
    shutil.copyfile(src, path)
    with h5py.File(path, "r+") as f:
        edit(f)

def replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)

variant("bad-format", lambda f: f.attrs.__setitem__("format", "not-sparsa"))
variant("version-2", lambda f: f.attrs.__setitem__("format_version", np.int64(2)))
variant("bad-config", lambda f: f.attrs.__setitem__(
    "config", '[model]\nkind = "dna"\nd_model = 7\nn_heads = 2\n'))
variant("config-fixed-string", lambda f: f.attrs.create(
    "config", np.bytes_(f.attrs["config"].encode())))
variant("config-not-string", lambda f: f.attrs.__setitem__("config", np.int64(3)))
variant("missing-dataset", lambda f: f.__delitem__("/layers/0/wq"))
variant("wrong-shape", lambda f: replace(f, "/final_norm", np.ones(9, np.float32)))
variant("float64", lambda f: replace(f, "/final_norm", np.ones(8, np.float64)))
def nan(f):
    f["/layers/0/alpha"][0] = np.nan
variant("nan", nan)
with open(src, "rb") as f:
    data = f.read()
with open(f"{out}/truncated.h5", "wb") as f:
    f.write(data[: len(data) // 2])
PY
ls -la "$OUT"
