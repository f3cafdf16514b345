#!/usr/bin/env bash
# Forward+backward tokens/s: rmgen (libtorch, C++) against PyTorch eager (transformers)
# on the same weights, batch and threads, in one run. Validates that both compute the same
# loss before comparing speed.
#   bench/run_model_bench.sh [BUILD_DIR] [PYTHON]   (env: THREADS BATCH SEQ STEPS)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PY=${2:-/opt/rmgen-py/bin/python}
THREADS=${THREADS:-2} BATCH=${BATCH:-4} SEQ=${SEQ:-256} STEPS=${STEPS:-5}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
ours=$("$BUILD/bench/model_fwd_bwd" --config configs/models/bench-llama-small.json \
  --batch "$BATCH" --seq "$SEQ" --threads "$THREADS" --steps "$STEPS" --save-dir "$DIR")
echo "$ours"
results=("$ours")
for attn in eager sdpa; do
  theirs=$("$PY" bench/model_fwd_bwd_torch.py --dir "$DIR" --threads "$THREADS" \
    --steps "$STEPS" --attn "$attn" 2>/dev/null)
  echo "$theirs"
  results+=("$theirs")
done
"$PY" - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(x) for x in sys.argv[1:]]
ours = rows[0]
for r in rows[1:]:
    assert abs(r["loss"] - ours["loss"]) < 1e-3 * max(1.0, abs(ours["loss"])), (r, ours)
    print(f"rmgen / {r['impl']}: {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x "
          f"({ours['tokens_per_s']:.0f} vs {r['tokens_per_s']:.0f} tokens/s, "
          f"{ours['threads']} threads, loss {ours['loss']:.4f} both)")
PY
