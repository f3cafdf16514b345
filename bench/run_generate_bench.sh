#!/usr/bin/env bash
# Generation tokens/s: rmgen's Generate (KV cache) against transformers' generate (its KV
# cache, attention eager and sdpa) on the same weights, prompts (lengths 8..120, seeded),
# batch, new tokens and threads, in one run; greedy with no stop token, so both make the same
# number of tokens, and the token digests are compared (they agree unless a near tie flips a
# greedy pick somewhere).
#   bench/run_generate_bench.sh [BUILD_DIR] [PYTHON]   (env: CONFIG THREADS BATCH NEW PROMPTS REPEAT)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PY=${2:-/opt/rmgen-py/bin/python}
THREADS=${THREADS:-2} BATCH=${BATCH:-8} NEW=${NEW:-64} PROMPTS=${PROMPTS:-16} REPEAT=${REPEAT:-3}
CONFIG=${CONFIG:-configs/models/bench-llama-small.json}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$BUILD/worker/model/rmgen-model" init --config "$CONFIG" \
  --seed 3 --out "$DIR/model" > /dev/null
"$PY" - "$DIR/prompts.json" "$PROMPTS" "$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))[\"vocab_size\"])" "$CONFIG")" <<'PY'
import json, random, sys
rng = random.Random(5)
json.dump([[1] + [rng.randrange(3, int(sys.argv[3])) for _ in range(rng.randrange(8, 120))]
           for _ in range(int(sys.argv[2]))], open(sys.argv[1], "w"))
PY
args=(--model "$DIR/model" --prompts "$DIR/prompts.json" --new "$NEW" --batch "$BATCH"
      --threads "$THREADS" --repeat "$REPEAT")
results=("$("$BUILD/bench/generate_bench" "${args[@]}")")
echo "${results[0]}"
for attn in eager sdpa; do
  r=$("$PY" bench/generate_hf.py "${args[@]}" --attn "$attn" 2>/dev/null)
  echo "$r"
  results+=("$r")
done
"$PY" - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(x) for x in sys.argv[1:]]
ours = rows[0]
for r in rows[1:]:
    assert r["new_tokens"] == ours["new_tokens"], (r, ours)
    same = "same tokens" if r["digest"] == ours["digest"] else "tokens differ (a near tie)"
    print(f"rmgen / {r['impl']}: {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x "
          f"({ours['tokens_per_s']:.0f} vs {r['tokens_per_s']:.0f} new tokens/s, "
          f"batch {ours['batch']}, {ours['threads']} threads, {same})")
PY
