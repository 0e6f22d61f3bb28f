#!/usr/bin/env bash
# cmake --install BUILD --prefix PREFIX, then what an installed sparsa needs: the binary runs from
# PREFIX/bin (its libraries found without LD_LIBRARY_PATH), and the installed preset, example,
# Slurm scripts and docs are where docs/README say. Usage: test_install.sh BUILD PREFIX [CMAKE]
set -euo pipefail
build=$(cd "$1" && pwd) prefix=$(realpath -m "$2") cmake=${3:-cmake}
unset DESTDIR
rm -rf "$prefix"
# cmake --install rewrites BUILD/install_manifest.txt: an admin's (the list to uninstall) is kept.
manifest=$build/install_manifest.txt
rm -f "$prefix.manifest"  # (a killed run's: not the admin's)
[ -f "$manifest" ] && cp "$manifest" "$prefix.manifest"
restore() { if [ -f "$prefix.manifest" ]; then mv "$prefix.manifest" "$manifest"; else rm -f "$manifest"; fi; }
trap restore EXIT
"$cmake" --install "$build" --prefix "$prefix" > "$prefix.log" 2>&1 || { cat "$prefix.log"; exit 1; }
sp=$prefix/bin/sparsa
share=$prefix/share/sparsa
for f in "$sp" "$share/configs/dna-tiny.toml" "$share/configs/dna-base.toml" \
  "$share/configs/ts-base.toml" "$share/examples/lambda_virus.fa.gz" \
  "$share/examples/msft_daily_ohlcv.csv" "$share/slurm/embed.sbatch" \
  "$prefix/share/doc/sparsa/README.md" "$prefix/share/doc/sparsa/docs/formats.md"; do
  [ -e "$f" ] || { echo "not installed: $f"; exit 1; }
done
for s in submit-array.sh check-outputs.sh; do
  [ -x "$share/slurm/$s" ] || { echo "$s is not executable"; exit 1; }
done
[ -x "$share/slurm/embed.sbatch" ] && { echo "embed.sbatch made executable"; exit 1; }
ldd "$sp" | grep -q "not found" && { ldd "$sp"; exit 1; }
# The presets are named from the installed binary (init's help, a --config that is missing).
"$sp" init --help | grep -q "this one's: $share/configs)" || { "$sp" init --help; exit 1; }
env -u LD_LIBRARY_PATH "$sp" --version | head -1 | grep -q "^sparsa 0\.1\.0"
cd "$prefix"  # not the source tree: every path from the prefix
env -u LD_LIBRARY_PATH "$sp" init -c "$share/configs/dna-tiny.toml" -o m.h5 --seed 1
env -u LD_LIBRARY_PATH "$sp" embed -q -m m.h5 -i "$share/examples/lambda_virus.fa.gz" -o e.h5 \
  --device cpu --threads 1 --pool mean
"$sp" inspect e.h5 > /dev/null
echo "installed sparsa runs from $prefix"
