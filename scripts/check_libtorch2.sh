#!/usr/bin/env bash
# Builds rmgen against the CUDA libtorch 2.x inside a `torch` wheel and runs the CPU tests
# with it (the SDPA path of torch_compat.h, CUDA toolkit + NCCL detection). Not part of CI:
# the wheel and its CUDA libraries are several GB.
#   scripts/check_libtorch2.sh [PYTHON] [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-/opt/rmgen-py/bin/python}
BUILD=${2:-build-libtorch2}
PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" -DRMGEN_BUILD_BENCH=OFF
cmake --build "$BUILD" -j"$(nproc)"
ctest --test-dir "$BUILD" --output-on-failure -j2 -LE gpu
