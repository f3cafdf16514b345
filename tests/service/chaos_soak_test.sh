#!/bin/bash
# ctest -L service: the 2-minute chaos soak (bench/chaos_soak.sh --minutes 2): a real
# coordinator and 4 real agents running fake jobs while agents, ranks and the coordinator are
# killed at random (seeded); then every job must have succeeded, once, with one result, and no
# two runs of a job may have overlapped.
#   tests/service/chaos_soak_test.sh BUILD_DIR [MINUTES]
set -uo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: chaos_soak_test.sh BUILD_DIR [MINUTES]}")
minutes=${2:-2}
out=$(mktemp -d /tmp/rmgen-chaos-test.XXXXXX)
trap 'rm -rf "$out"' EXIT
"$src/bench/chaos_soak.sh" --minutes "$minutes" --build "$build" --out "$out" --seed 1 \
  --drain-s 240 > "$out/output.txt" 2>&1
rc=$?
if [ $rc -ne 0 ] || ! grep -q '"pass": true' "$out/summary.json" 2> /dev/null; then
  echo "chaos_soak_test: FAIL (exit $rc)" >&2
  tail -40 "$out/output.txt" >&2
  [ -f "$out/summary.json" ] && cat "$out/summary.json" >&2
  for f in "$out"/work/logs/coordinator-*.log; do
    grep -iE "error|fail" "$f" 2> /dev/null | tail -5 | sed "s|^|$(basename "$f"): |" >&2
  done
  exit 1
fi
grep -E '^\{' "$out/output.txt" | tail -1
echo "chaos_soak_test: ok"
