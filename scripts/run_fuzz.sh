#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan, no torch) and runs each for a
# bounded time, seeded with the dataset fixtures. Fails on any crash, hang (-timeout) or
# memory blow-up (-rss_limit_mb).
#   scripts/run_fuzz.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
BUILD=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRMGEN_WITH_TORCH=OFF -DRMGEN_BUILD_TESTS=OFF -DRMGEN_BUILD_BENCH=OFF -DRMGEN_BUILD_FUZZ=ON \
  >/dev/null
TARGETS="hh_rlhf ultrafeedback arena nectar webgpt summarize rewardbench pairs record_reader study"
# shellcheck disable=SC2046
cmake --build "$BUILD" -j"$(nproc)" --target $(printf 'fuzz_%s ' $TARGETS) >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Seed corpora: every fixture record, one per file.
python3 - "$WORK" <<'PY'
import glob, gzip, json, os, sys
work = sys.argv[1]
for path in glob.glob("tests/fixtures/data/*.json*"):
    if path.endswith("expected.json"):
        continue
    fmt = os.path.basename(path).split(".")[0]
    for name in ("hh_rlhf", "ultrafeedback", "arena", "nectar", "webgpt", "summarize",
                 "rewardbench", "pairs"):
        if fmt.startswith(name):
            fmt = name
    raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    for d in (os.path.join(work, fmt), os.path.join(work, "record_reader")):
        os.makedirs(d, exist_ok=True)
    open(os.path.join(work, "record_reader", os.path.basename(path)), "wb").write(raw)
    os.makedirs(os.path.join(work, "study"), exist_ok=True)
    for i, line in enumerate(raw.splitlines()):
        if len(line) < 20000:
            open(os.path.join(work, fmt, f"{os.path.basename(path)}.{i}"), "wb").write(line)
PY
# Study seeds: the shipped studies.
mkdir -p "$WORK/study"
cp configs/studies/*.yaml "$WORK/study/"
status=0
for target in $TARGETS; do
  mkdir -p "$WORK/$target"
  if "$BUILD/tests/fuzz/fuzz_$target" "$WORK/$target" -max_total_time="$SECS" -timeout=10 \
      -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$WORK/$target.log" 2>&1; then
    echo "fuzz $target: ok ($(grep -o 'stat::number_of_executed_units: [0-9]*' "$WORK/$target.log" | awk '{print $2}') runs in ${SECS}s)"
  else
    echo "fuzz $target: FAILED"; tail -40 "$WORK/$target.log"; status=1
  fi
done
exit $status
