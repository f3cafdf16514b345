#!/usr/bin/env bash
# Generation tokens/s: rmgen's Generate (KV cache) against transformers' generate (its KV
# cache, attention eager and sdpa) on the same weights, prompts, batch, new tokens and threads,
# in one run, greedy on both sides; the token digests are compared (they agree unless a near
# tie flips a greedy pick somewhere). Three models:
#   policy  the demos' policy: the synthetic suite's tiny Llama after a short SFT, on the
#           suite's chat prompts (zephyr template), stopping at EOS as iterative DPO's
#           sampling does (each side makes the same tokens, so the same count)
#   3.2M    configs/models/bench-synth-small.json, random init, no stop token
#   44M     configs/models/bench-llama-small.json, random init, no stop token
# Random-init models get seeded random prompts of 8..120 tokens and make exactly NEW tokens.
# For the policy it also runs a generate job (64 prompts x 8 samples) and an annotate job of
# its output, and prints their new tokens/s and responses/s (no anchor: rmgen's own rates).
#   bench/run_generate_bench.sh [BUILD_DIR] [PYTHON]   (env: THREADS BATCH NEW PROMPTS REPEAT
#                                                       MODELS="policy 3.2M 44M")
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PY=${2:-/opt/rmgen-py/bin/python}
THREADS=${THREADS:-2} BATCH=${BATCH:-8} NEW=${NEW:-64} PROMPTS=${PROMPTS:-16} REPEAT=${REPEAT:-3}
MODELS=${MODELS:-policy 3.2M 44M}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

# compare NAME MODEL_DIR PROMPTS.json STOP_ID(-1: none)
compare() {
  local name=$1 model=$2 prompts=$3 stop=$4
  local args=(--model "$model" --prompts "$prompts" --new "$NEW" --batch "$BATCH"
              --threads "$THREADS" --repeat "$REPEAT" --stop "$stop")
  local results=("$("$BUILD/bench/generate_bench" "${args[@]}")")
  for attn in eager sdpa; do
    results+=("$("$PY" bench/generate_hf.py "${args[@]}" --attn "$attn" 2>/dev/null)")
  done
  "$PY" - "$name" "${results[@]}" <<'PY'
import json, sys
name, rows = sys.argv[1], [json.loads(x) for x in sys.argv[2:]]
ours = rows[0]
for r in rows[1:]:
    same = "same tokens" if r["digest"] == ours["digest"] else "tokens differ (a near tie)"
    print(f"{name}: rmgen / {r['impl']}: {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x "
          f"({ours['tokens_per_s']:.0f} vs {r['tokens_per_s']:.0f} new tokens/s, "
          f"{ours['new_tokens']} vs {r['new_tokens']} tokens, batch {ours['batch']}, "
          f"{ours['threads']} threads, {same})")
PY
}

# random_prompts CONFIG OUT.json
random_prompts() {
  "$PY" - "$2" "$PROMPTS" "$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$1")" <<'PY'
import json, random, sys
rng = random.Random(5)
json.dump([[1] + [rng.randrange(3, int(sys.argv[3])) for _ in range(rng.randrange(8, 120))]
           for _ in range(int(sys.argv[2]))], open(sys.argv[1], "w"))
PY
}

for m in $MODELS; do
  case $m in
    policy)
      "$BUILD/client/rmgen" data synth --out "$DIR/synth" --train 2000 --validation 64 \
        --shifted 8 > /dev/null 2>&1
      cat > "$DIR/sft.yaml" <<YAML
kind: sft
model: {config: $DIR/synth/model.json}
tokenizer: $DIR/synth/tokenizer.model
template: zephyr
data: {catalog: $DIR/synth/datasets.yaml, train: "synth-id:train"}
train: {epochs: 1, batch_size: 8, learning_rate: 0.001, warmup_ratio: 0.05}
runtime: {threads: $THREADS}
YAML
      "$BUILD/worker/train/rmgen-train" --spec "$DIR/sft.yaml" --out "$DIR/sft" --quiet
      # The suite's validation prompts as the zephyr template renders them: BOS, the user
      # turn, EOS, the assistant marker.
      "$PY" - "$DIR/synth" "$DIR/policy-prompts.json" "$PROMPTS" <<'PY'
import json, sys
import sentencepiece as spm
d, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sp = spm.SentencePieceProcessor(model_file=f"{d}/tokenizer.model")
rows = [json.loads(l) for l in open(f"{d}/validation.jsonl")][:n]
ids = [[1] + sp.encode("<|user|>\n" + r["prompt"][0]["content"]) + [2] +
       sp.encode("\n<|assistant|>\n") for r in rows]
json.dump(ids, open(out, "w"))
PY
      compare "policy (synth SFT, stop at EOS)" "$DIR/sft/checkpoint" "$DIR/policy-prompts.json" 2
      # The jobs iterative DPO runs: generate (8 samples a prompt, 64 prompts), then annotate
      # every response with an EXRM (a seeded random reward head on the same body).
      cat > "$DIR/gen.yaml" <<YAML
kind: generate
model: {path: $DIR/sft/checkpoint}
template: zephyr
data: {catalog: $DIR/synth/datasets.yaml, prompts: "synth-id:validation", limit: 64}
generate: {samples: 8, max_new_tokens: $NEW, batch_size: 64, seed: 1}
runtime: {threads: $THREADS}
YAML
      cat > "$DIR/ann.yaml" <<YAML
kind: annotate
model: {path: $DIR/sft/checkpoint, init_seed: 1}
template: zephyr
data: {generations: $DIR/gen/generations.jsonl}
runtime: {threads: $THREADS}
YAML
      "$BUILD/worker/train/rmgen-train" --spec "$DIR/gen.yaml" --out "$DIR/gen" --quiet
      "$BUILD/worker/train/rmgen-train" --spec "$DIR/ann.yaml" --out "$DIR/ann" --quiet
      "$PY" - "$DIR" <<'PY'
import json, sys
g = json.load(open(f"{sys.argv[1]}/gen/metrics.json"))["generate"]
a = json.load(open(f"{sys.argv[1]}/ann/metrics.json"))["annotate"]
print(f"policy: generate job {g['tokens_per_s']:.0f} new tokens/s ({g['responses']:.0f} responses, "
      f"{g['new_tokens']:.0f} tokens); annotate job {a['responses_per_s']:.0f} responses/s "
      f"({a['responses_scored']} responses, {a['pairs']} pairs)")
PY
      ;;
    3.2M | 44M)
      config=configs/models/bench-synth-small.json
      [[ $m == 44M ]] && config=configs/models/bench-llama-small.json
      "$BUILD/worker/model/rmgen-model" init --config "$config" --seed 3 --out "$DIR/$m" > /dev/null
      random_prompts "$config" "$DIR/$m-prompts.json"
      compare "$m (random init, no stop)" "$DIR/$m" "$DIR/$m-prompts.json" -1
      ;;
    *) echo "unknown model '$m' (policy, 3.2M, 44M)" >&2; exit 2 ;;
  esac
done
