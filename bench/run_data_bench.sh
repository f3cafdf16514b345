#!/usr/bin/env bash
# Parse + template + tokenize throughput: rmgen against Python (HF fast tokenizer, and the
# sentencepiece package) on the same 100k-pair file and tokenizer, in one run. Checks that
# every side produced the same number of tokens before comparing speed.
#   bench/run_data_bench.sh [BUILD_DIR] [PYTHON]     (env: PAIRS, default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PY=${2:-/opt/rmgen-py/bin/python}
PAIRS=${PAIRS:-100000}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$BUILD/client/rmgen" data synth --out "$DIR" --seed 0 --train "$PAIRS" --validation 10 \
  --shifted 10 >/dev/null 2>&1
TOK=tests/fixtures/tokenizers/mistral-7b-v0.1/tokenizer.model
rows=()
for t in 1 2; do
  rows+=("$("$BUILD/bench/data_pipeline" --input "$DIR/train.jsonl" --tokenizer "$TOK" \
    --template zephyr --threads "$t")")
done
for v in hf sentencepiece; do
  rows+=("$("$PY" bench/data_pipeline_py.py --input "$DIR/train.jsonl" --tokenizer "$TOK" \
    --variant "$v" 2>/dev/null)")
done
printf '%s\n' "${rows[@]}"
"$PY" - "${rows[@]}" <<'PY'
import json, sys
rows = [json.loads(r) for r in sys.argv[1:]]
ours = [r for r in rows if r["impl"] == "rmgen"]
for r in rows:
    assert r["tokens"] == ours[0]["tokens"], ("token counts differ", r, ours[0])
for o in ours:
    for r in rows:
        if r["impl"].startswith("python"):
            print(f"rmgen ({o['threads']} thread{'s' if o['threads'] > 1 else ''}) / "
                  f"{r['impl']}: {o['pairs_per_s'] / r['pairs_per_s']:.2f}x "
                  f"({o['pairs_per_s']:.0f} vs {r['pairs_per_s']:.0f} pairs/s, "
                  f"{o['tokens']} tokens both)")
PY
