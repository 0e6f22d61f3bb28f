#!/usr/bin/env bash
# Configures and builds sparsa into build/ (Release). CUDA is built where nvcc exists.
# Extra CMake options may be passed: scripts/build.sh -DSPARSA_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
ninja -C build -j"$(nproc)"
