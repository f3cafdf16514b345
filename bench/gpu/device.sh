#!/usr/bin/env bash
# The command for the lent GPU machine (the `device` tool): carry bench/gpu/sysroot and
# bench/gpu/data (made here by bench/gpu/bundle.sh), run the GPU check with everything that
# matters copied to $OUT (big files, such as the 2B checkpoints, stay behind in /tmp).
#   device run: bash bench/gpu/device.sh     carry: [bench/gpu/sysroot, bench/gpu/data]
set -uo pipefail
cd "$(dirname "$0")/../.."
DEST=${OUT:-/tmp/gpu-out}
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$DEST/gpu.txt"
OUT=/tmp/gpu-check DATA=bench/gpu/data bash bench/gpu/run.sh 2>&1 | tee "$DEST/run.log"
rc=${PIPESTATUS[0]}
for f in gpu-report.json cmake.log build.log ctest-gpu.log; do
  [[ -f /tmp/gpu-check/$f ]] && cp "/tmp/gpu-check/$f" "$DEST/"
done
exit "$rc"
