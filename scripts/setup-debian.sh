#!/usr/bin/env bash
# Installs what sparsa needs to build and test on Debian 12 (run as root, or with sudo).
# Idempotent: does nothing when every package is already installed.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build pkg-config git
  libhts-dev zlib1g-dev tabix samtools      # FASTA/FASTQ, gzip/bgzip, faidx; bgzip for tests
  libhdf5-openmpi-dev hdf5-tools            # parallel HDF5 C API (+ h5dump)
  libopenmpi-dev openmpi-bin                # MPI
  libopenblas-dev                           # BLAS for the CPU backend (OpenMP comes with gcc)
  libtomlplusplus-dev libcli11-dev libssl-dev
  libgtest-dev libbenchmark-dev
  python3-h5py python3-numpy                # the docs' reading snippet is tested with h5py
  clang libclang-rt-14-dev                  # libFuzzer + ASan/UBSan runtimes (scripts/fuzz.sh)
  ragout-examples                           # E. coli K-12 genome for the region tests (18 MB)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[setup] all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "[setup] installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
