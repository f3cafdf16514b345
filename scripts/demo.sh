#!/usr/bin/env bash
# The main job until the service lands: a small EXRM-vs-DPORM study on the synthetic shift
# suite, end to end with rmgen-train on CPU. Writes the suite, trains one SFT model, then an
# EXRM and a DPO policy from it for each seed, evaluates both reward models in distribution
# and on the prompt-shift and response-shift sets, and prints mean +- std over seeds.
#   scripts/demo.sh [OUT_DIR] [SEEDS...]        (default: rmgen-demo 0 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-rmgen-demo}")
shift || true
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2)
BUILD=${BUILD:-build}
TRAIN="$BUILD/worker/train/rmgen-train"
mkdir -p "$OUT"

"$BUILD/client/rmgen" data synth --out "$OUT/data" --seed 0 2>/dev/null
common() {
  cat <<YAML
template: zephyr
data:
  catalog: $OUT/data/datasets.yaml
  train: synth-id:train
  eval: [synth-id:validation, synth-prompt-shift, synth-response-shift]
runtime: {threads: 0, log_every: 25}
YAML
}
run() {  # name spec-text
  local dir="$OUT/$1"
  if [ -f "$dir/metrics.json" ]; then echo "$1: done already"; return; fi
  printf '%s\n' "$2" > "$OUT/$1.yaml"
  echo "== $1"
  "$TRAIN" --spec "$OUT/$1.yaml" --out "$dir"
}

run sft "kind: sft
model: {config: configs/models/tiny-synth.json, init_seed: 0}
tokenizer: $OUT/data/tokenizer.model
$(common | grep -v '  eval:')
train: {epochs: 2, batch_size: 16, learning_rate: 0.001, warmup_ratio: 0.05}"

for s in "${SEEDS[@]}"; do
  run "exrm-seed$s" "kind: reward
model: {path: $OUT/sft/checkpoint, init_seed: $s}
$(common)
train: {epochs: 3, batch_size: 16, learning_rate: 0.0005, warmup_ratio: 0.05, seed: $s}"
  run "dpo-seed$s" "kind: dpo
model: {path: $OUT/sft/checkpoint}
$(common)
train: {epochs: 2, batch_size: 16, learning_rate: 0.0005, warmup_ratio: 0.05, seed: $s}
dpo: {beta: 0.1, reference_cache: $OUT/ref-cache}"
done

python3 - "$OUT" "${SEEDS[@]}" <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
sets = [("synth-id:validation", "ID"), ("synth-prompt-shift", "prompt shift"),
        ("synth-response-shift", "response shift")]
print(f"\nAccuracy (%), mean +- sample std (ddof=1) over {len(seeds)} seeds")
print(f"{'reward model':<14}" + "".join(f"{label:>18}" for _, label in sets) + f"{'mean OOD':>14}")
for name, prefix in (("EXRM", "exrm"), ("DPORM", "dpo")):
    cols, ood = [], []
    for key, label in sets:
        accs = [100 * json.load(open(f"{out}/{prefix}-seed{s}/metrics.json"))["eval"][key]["accuracy"]
                for s in seeds]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cols.append(f"{statistics.mean(accs):8.1f} +- {sd:4.1f}  ")
        if label != "ID":
            ood.append(accs)
    mean_ood = [statistics.mean(x) for x in zip(*ood)]
    sd = statistics.stdev(mean_ood) if len(mean_ood) > 1 else 0.0
    print(f"{name:<14}" + "".join(f"{c:>18}" for c in cols) + f"{statistics.mean(mean_ood):7.1f} +- {sd:3.1f}")
print(f"\nresults, checkpoints and events under {out}")
PY
