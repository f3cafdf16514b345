#!/bin/bash
# ctest -L service: the paper-shaped run on CPU. `rmgen local` (the real coordinator over
# gRPC on loopback and a real agent running rmgen-train ranks) runs settings I(a), I(b), I(c)
# and II(b) of configs/studies/paper-mini/ on the sources' real schemas (written on first
# use by `rmgen data synth --profile paper-mini`), with a learning-rate sweep in I(a) and
# RewardBench rows, and prints the tables across the four studies; this checks them.
#   tests/service/paper_mini_test.sh BUILD_DIR
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: paper_mini_test.sh BUILD_DIR}")
work=$(mktemp -d /tmp/rmgen-paper-mini.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "paper_mini_test: FAIL: $*" >&2
  tail -60 "$work/out.txt" >&2 || true
  for f in "$work"/data/jobs/*/logs/*.log; do
    grep -l "rror" "$f" >/dev/null 2>&1 && { echo "== $f" >&2; tail -15 "$f" >&2; }
  done
  exit 1
}
"$build/client/rmgen" local "$src"/configs/studies/paper-mini/{1a,1b,1c,2b}.yaml \
  --data-dir "$work/data" --ranks 2 > "$work/out.txt" 2>&1 || fail "rmgen local exited $?"
out="$work/out.txt"
expect() { grep -qE -- "$1" "$out" || fail "no line matching: $1"; }
# Four studies, 2 methods x 2 seeds each (the sweep's selected point only): 16 runs.
expect '^4 studies \(--tag|^4 studies: 16/16 runs finished'
expect '16/16 runs finished'
for s in 1a 1b 1c 2b; do expect "paper-mini-$s \(setting I+\(?[abc]?\)?.*4/4 runs finished"; done
# The sweep: both learning rates scored on the held-out slice, exactly one selected.
expect 'Sweep'
expect 'DPORM +lr=0.0005'
expect 'DPORM +lr=0.0001'
[ "$(grep -cE 'DPORM +lr=0\.000[15] .*\*$' "$out")" = 1 ] || fail "not exactly one selected point"
# Table 6: a row per train set; Table 7's grid holds every eval set; Figure 3a both shift
# kinds; Figure 3b over the 8 (model, train set, seed) runs; Table 8 RewardBench.
for t in ultra arena hh sum-reddit; do expect "^tiny +$t "; done
for e in ultra:test arena:test hh:test nectar:test webgpt:test sum-reddit:test sum-cnn:test \
         sum-dailymail:test rewardbench:test; do
  expect "$e"
done
expect '^mixture +paper-mini-1a, paper-mini-1b, paper-mini-1c +EXRM +6 '
expect '^prompt shift +paper-mini-2b +DPORM +2 '
expect 'Figure 3b: EXRM beats DPORM: ID [0-8]/8 runs .*OOD [0-8]/8 runs'
expect 'Table 8'
expect 'n=180 ties='
# The same command again: everything is done and kept, nothing runs again.
"$build/client/rmgen" local "$src"/configs/studies/paper-mini/{1a,1b,1c,2b}.yaml \
  --data-dir "$work/data" --ranks 2 > "$work/again.txt" 2>&1 || fail "second run exited $?"
grep -q '16/16 runs finished' "$work/again.txt" || fail "the second run lost results"
echo "paper_mini_test: ok"
