#!/usr/bin/env bash
# Pair layouts against sequence shapes: rmgen-train's default (runtime.shared_prefix: true,
# each micro-batch takes shared-prefix rows only where they cost fewer estimated FLOPs)
# against TRL's layout (shared_prefix: false, two padded rows per pair), on four shapes of
# the synthetic `pairs` data:
#   synth           as `rmgen data synth` writes it (prompt about half of each sequence)
#   long-responses  short prompts, responses of ~10 sentences (little to share)
#   long-prompts    prompts of ~10 sentences, short responses (most of each pair shared)
#   long-both       both long
# Same model (configs/models/bench-synth-small.json), batch, threads, steps; reward and DPO
# (cached reference) training steps; every run repeated REPEAT times, interleaved.
#   bench/run_layout_bench.sh [BUILD_DIR]
#   (env: THREADS=2 BATCH=8 STEPS=16 WARMUP=3 REPEAT=3 PAUSE=2 KINDS="reward dpo")
# Prints one JSON line per run, then per shape and kind: tokens per pair, the fraction of
# tokens computed with the default, median step times and separate/default (>1: the default
# is faster). Where the default computes every token (computed 1.00) both layouts run the
# same work, and their ratio shows the machine's noise.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
BUILD=${1:-build}
THREADS=${THREADS:-2} BATCH=${BATCH:-8} STEPS=${STEPS:-16} WARMUP=${WARMUP:-3}
REPEAT=${REPEAT:-3} PAUSE=${PAUSE:-2} KINDS=${KINDS:-reward dpo}
export OMP_NUM_THREADS=$THREADS
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

"$BUILD/client/rmgen" data synth --out "$DIR/data" --seed 0 --train 400 --validation 8 \
  --shifted 8 >/dev/null 2>&1
"$BUILD/worker/model/rmgen-model" init --config configs/models/bench-synth-small.json \
  --out "$DIR/model" --tokenizer-dir "$DIR/data" >/dev/null

# The long shapes: each long text is its own sentence followed by 9 others drawn (seeded)
# from the same field of other records, so the tokens stay in the tokenizer's vocabulary.
python3 - "$DIR/data" <<'PY'
import json, random, sys
root = sys.argv[1]
rows = [json.loads(l) for l in open(f"{root}/train.jsonl")]
prompts = [r["prompt"][-1]["content"] for r in rows]
responses = [r[s][0]["content"] for r in rows for s in ("chosen", "rejected")]
rng = random.Random(0)
lengthen = lambda text, pool: " ".join([text] + rng.sample(pool, 9))
for shape, long_prompt, long_resp in [("long-responses", False, True),
                                      ("long-prompts", True, False), ("long-both", True, True)]:
    with open(f"{root}/{shape}.jsonl", "w") as f:
        for r in rows:
            r = json.loads(json.dumps(r))
            if long_prompt:
                r["prompt"][-1]["content"] = lengthen(r["prompt"][-1]["content"], prompts)
            if long_resp:
                for s in ("chosen", "rejected"):
                    r[s][0]["content"] = lengthen(r[s][0]["content"], responses)
            f.write(json.dumps(r) + "\n")
with open(f"{root}/datasets.yaml", "a") as f:
    for shape in ("long-responses", "long-prompts", "long-both"):
        f.write(f"  {shape}:\n    adapter: pairs\n    splits:\n      train: {shape}.jsonl\n")
PY

# run SHAPE KIND SHARED: one training run; prints its JSON line.
run() {
  local shape=$1 kind=$2 shared=$3 name="$1-$2-$3" out="$DIR/$1-$2-$3" train
  [[ $shape == synth ]] && train="synth-id:train" || train="$shape:train"
  rm -rf "$out"
  cat >"$DIR/$name.yaml" <<EOF
kind: $kind
model: {path: $DIR/model}
tokenizer: $DIR/data/tokenizer.model
template: zephyr
data: {catalog: $DIR/data/datasets.yaml, train: "$train", eval: [], max_length: 512,
       max_prompt_length: 384}
train: {batch_size: $BATCH, learning_rate: 0.00001, max_steps: $STEPS, length_grouped: false}
dpo: {beta: 0.1, reference_cache: $DIR/ref-cache-$shape}
runtime: {threads: $THREADS, log_every: 1, shared_prefix: $shared}
EOF
  sleep "$PAUSE"
  "$BUILD/worker/train/rmgen-train" --spec "$DIR/$name.yaml" --out "$out" --quiet >&2
  python3 - "$shape" "$kind" "$shared" "$out" "$STEPS" "$WARMUP" <<'PY'
import json, math, sys
shape, kind, shared, out, steps, warmup = *sys.argv[1:5], int(sys.argv[5]), int(sys.argv[6])
ev = [json.loads(l) for l in open(f"{out}/events.jsonl")]
assert [e["step"] for e in ev] == list(range(1, steps + 1)), f"{out}: steps missing"
assert all(math.isfinite(e["loss"]) for e in ev), f"{out}: non-finite loss"
m = json.load(open(f"{out}/metrics.json"))["train"]
samples = [0] + [e["samples"] for e in ev]
secs = [(samples[i + 1] - samples[i]) / ev[i]["pairs/s"] for i in range(steps)]
toks = [ev[i]["tokens/s"] * secs[i] for i in range(steps)]
timed = range(warmup, steps)
print(json.dumps({
    "shape": shape, "kind": kind, "shared_prefix": shared == "true",
    "step_ms": round(1e3 * sum(secs[i] for i in timed) / len(timed), 2),
    "tokens_per_pair": round(sum(toks[i] for i in timed) /
                             sum(samples[i + 1] - samples[i] for i in timed), 1),
    "computed_tokens_frac": m.get("computed_tokens_frac"),
    "loss_last": round(ev[-1]["loss"], 5)}))
PY
}

rows=()
for rep in $(seq "$REPEAT"); do
  # Each repeat flips which layout runs first (the first run of a pair was seen to be slower).
  order="true false"
  ((rep % 2 == 0)) && order="false true"
  for shape in synth long-responses long-prompts long-both; do
    for kind in $KINDS; do
      for shared in $order; do
        r=$(run "$shape" "$kind" "$shared")
        echo "$r"
        rows+=("$r")
      done
    done
  done
done

python3 - "${rows[@]}" <<'PY'
import json, statistics, sys
runs = {}
for r in map(json.loads, sys.argv[1:]):
    runs.setdefault((r["shape"], r["kind"], r["shared_prefix"]), []).append(r)
print(f"{'shape':15} {'kind':6} {'tok/pair':>8} {'computed':>8} {'default ms':>10} "
      f"{'separate ms':>11} {'separate/default':>16}")
for (shape, kind, shared), rs in runs.items():
    if not shared:
        continue
    sep = runs[(shape, kind, False)]
    # The two layouts compute the same losses (to float rounding).
    assert abs(rs[0]["loss_last"] - sep[0]["loss_last"]) < 1e-3, (rs[0], sep[0])
    d = statistics.median(r["step_ms"] for r in rs)
    s = statistics.median(r["step_ms"] for r in sep)
    print(f"{shape:15} {kind:6} {rs[0]['tokens_per_pair']:8.1f} "
          f"{rs[0]['computed_tokens_frac']:8.2f} {d:10.1f} {s:11.1f} {s / d:16.2f}")
PY
