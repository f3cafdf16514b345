#!/bin/bash
# ctest -L slurm: a real Slurm cluster on localhost (tests/slurm/cluster.sh), rmgen-coordinator,
# and deploy/slurm/rmgen-worker.sbatch submitted with sbatch: one agent for the allocation,
# each job an srun step inside it. A small study (SFT, then EXRM and DPO for two seeds, every
# job on 2 ranks: `srun --ntasks=2 --mpi=pmix`) runs to the end through the coordinator, and
# its results are checked. Then scancel: the agent stops and leaves the coordinator cleanly.
#   tests/slurm/slurm_test.sh BUILD_DIR
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: slurm_test.sh BUILD_DIR}")
if [ "$(id -u)" != 0 ]; then
  echo "slurm_test: needs root to start slurmd; skipped" >&2
  exit 77
fi
work=$(mktemp -d /tmp/rmgen-slurm.XXXXXX)
coord_pid=""
job=""
cleanup() {
  set +e
  [ -n "$job" ] && scancel "$job" 2>/dev/null
  [ -n "$coord_pid" ] && kill "$coord_pid" 2>/dev/null
  sleep 1
  "$src/tests/slurm/cluster.sh" stop "$work/cluster"
  if [ "${KEEP:-0}" = 1 ] || [ "${failed:-1}" = 1 ]; then
    echo "slurm_test: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
fail() {
  echo "slurm_test: FAIL: $*" >&2
  for f in "$work"/coordinator.log "$work"/worker-*.log "$work"/jobs/*/logs/*.log; do
    [ -f "$f" ] && { echo "== $f" >&2; tail -15 "$f" >&2; }
  done
  exit 1
}

env_line=$("$src/tests/slurm/cluster.sh" start "$work/cluster") || fail "the test cluster did not start"
eval "$env_line"
echo "slurm_test: cluster up ($SLURM_CONF)"

rmgen=$build/client/rmgen
"$rmgen" data synth --out "$work/run/synth" --train 300 --validation 64 --shifted 64 >/dev/null 2>&1
"$build/coordinator/rmgen-coordinator" --listen 127.0.0.1:0 --data-dir "$work/coord" \
  --lease-ms 10000 --output-root "$work/jobs" > "$work/coordinator.log" 2>&1 &
coord_pid=$!
for _ in $(seq 100); do grep -q '^port ' "$work/coordinator.log" && break; sleep 0.1; done
port=$(sed -n 's/^port //p' "$work/coordinator.log")
[ -n "$port" ] || fail "the coordinator did not start"
export RMGEN_COORDINATOR=127.0.0.1:$port

job=$(cd "$work" && RMGEN_WORKER=$build/worker/agent/rmgen-worker \
  RMGEN_TRAIN=$build/worker/train/rmgen-train RMGEN_STATE_ROOT=$work/state \
  RMGEN_WORKDIR=$work/run RMGEN_GRACE_MS=5000 \
  sbatch --parsable --ntasks=2 --output="$work/worker-%j.log" "$src/deploy/slurm/rmgen-worker.sbatch")
echo "slurm_test: worker allocation $job"

cat > "$work/study.yaml" <<YAML
name: slurm
setting: test
catalog: synth/datasets.yaml
models:
  - {name: tiny, config: synth/model.json, tokenizer: synth/tokenizer.model, template: zephyr}
methods: [exrm, dpo]
seeds: [0, 1]
train: synth-id:train
eval: {id: [synth-id:validation], ood: [synth-prompt-shift, synth-response-shift]}
sft: {epochs: 1, per_rank_batch_size: 4, learning_rate: 1.0e-3}
exrm: {epochs: 1, per_rank_batch_size: 4, learning_rate: 5.0e-4}
dpo: {epochs: 1, per_rank_batch_size: 4, learning_rate: 5.0e-4, beta: 0.1}
resources: {ranks: 2, threads: 1}
YAML
timeout 600 "$rmgen" submit "$work/study.yaml" --watch > "$work/watch.log" 2>&1 ||
  fail "the study did not succeed: $(grep -E 'FAILED|rmgen:' "$work/watch.log" | head -5)"
"$rmgen" results s1 --format json > "$work/results.json" || fail "no results"
python3 - "$work/results.json" <<'PY' || fail "unexpected results"
import json, sys
r = json.load(open(sys.argv[1]))
rows = {row["method"]: row for row in r["rows"]}
assert set(rows) == {"exrm", "dpo"}, rows.keys()
for m, row in rows.items():
    assert len(row["per_seed"]) == 2, (m, row["per_seed"])
    assert 0.0 <= row["id"]["mean"] <= 1.0, row["id"]
print("slurm_test: results", {m: row["id"]["mean"] for m, row in rows.items()})
PY
# Every job ran on the Slurm agent, as srun steps of its allocation.
workers=$("$rmgen" workers)
grep -q "slurm$job" <<< "$workers" || fail "no worker of allocation $job: $workers"
grep -q "launcher slurm" "$work"/worker-"$job".log || fail "the agent did not use the slurm launcher"
grep -q "started pid .*: srun" "$work"/jobs/s1-j1/logs/attempt-1.log || fail "job s1-j1 was not an srun step"
python3 -c "import json,sys; m=json.load(open(sys.argv[1])); assert m['ranks'] == 2, m['ranks']" \
  "$work/jobs/s1-j1/metrics.json" || fail "job s1-j1 did not train on 2 ranks"

# scancel: the agent gets SIGTERM and exits.
scancel "$job"
for _ in $(seq 100); do
  squeue -h -j "$job" 2>/dev/null | grep -q . || break
  sleep 0.2
done
squeue -h -j "$job" 2>/dev/null | grep -q . && fail "the allocation did not end after scancel"
job=""
failed=0
echo "slurm_test: PASS"
