#!/usr/bin/env bash
# Data-parallel communication on this machine, 2 ranks under mpirun, in one run:
#  1. all-reduce bandwidth: rmgen's bucketed reducer (DataParallel, 25 MiB buckets, the
#     communication thread) against raw MPI_Allreduce of the same bytes (the anchor);
#     target: overhead <= 10%.
#  2. 2-rank rmgen-train step time with and without overlap (runtime.overlap), and the
#     share of step time each rank spends waiting on communication (comm_wait_share).
#   bench/run_comm_bench.sh [BUILD_DIR]   (env: MB=100 REPS=10 STEPS=30)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MB=${MB:-100} REPS=${REPS:-10} STEPS=${STEPS:-30}
MPIRUN="tests/mpi/mpirun.sh 2"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

raw=$($MPIRUN "$BUILD/bench/allreduce_bench" raw "$MB" "$REPS" | grep '^{')
buckets=$($MPIRUN "$BUILD/bench/allreduce_bench" buckets "$MB" "$REPS" | grep '^{')
echo "$raw"
echo "$buckets"
python3 - "$raw" "$buckets" <<'PY'
import json, sys
raw, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
over = b["seconds"] / raw["seconds"] - 1
print(f"bucketed reducer vs raw MPI_Allreduce ({raw['bytes'] / 2**20:.0f} MiB, 2 ranks): "
      f"{b['gb_per_s']:.2f} vs {raw['gb_per_s']:.2f} GB/s, overhead {over * 100:+.1f}% "
      f"(target <= +10%): {'PASS' if over <= 0.10 else 'FAIL'}")
PY

"$BUILD/client/rmgen" data synth --out "$DIR/data" --seed 0 --train 2000 --validation 64 \
  --shifted 64 >/dev/null 2>&1
for overlap in true false; do
  cat >"$DIR/o-$overlap.yaml" <<YAML
kind: reward
model: {config: configs/models/bench-synth-small.json}
tokenizer: $DIR/data/tokenizer.model
template: zephyr
data: {catalog: $DIR/data/datasets.yaml, train: "synth-id:train"}
train: {batch_size: 8, learning_rate: 0.00001, max_steps: $STEPS}
runtime: {threads: 1, overlap: $overlap, bucket_mb: 4}
YAML
  $MPIRUN "$BUILD/worker/train/rmgen-train" --spec "$DIR/o-$overlap.yaml" --out "$DIR/o-$overlap" \
    --quiet >/dev/null
done
python3 - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
res = {}
for o in ("true", "false"):
    ev = [json.loads(l) for l in open(f"{d}/o-{o}/events.jsonl")][3:]  # skip warm-up steps
    step = sorted(e["pairs/s"] for e in ev)[len(ev) // 2]
    wait = sum(e["comm_wait_s"] for e in ev) / len(ev)
    res[o] = (8 / step, wait)
    print(json.dumps({"overlap": o == "true", "median_step_s": 8 / step, "mean_comm_wait_s": wait,
                      "comm_wait_share": wait / (8 / step)}))
print(f"2-rank step time, overlap on vs off: {res['true'][0]:.3f} s vs {res['false'][0]:.3f} s "
      f"({res['false'][0] / res['true'][0]:.2f}x)")
PY
