#!/bin/bash
# ctest -L multinode (a): a study whose jobs are placed over two workers on two nodes, run by
# mpirun over TCP with a rank on each. Two network namespaces stand for the nodes
# (tests/multinode/nodes.sh: own addresses 10.231.0.1/.2, own host names node-a/node-b); the
# coordinator and agent A run on node-a, agent B on node-b, each agent with one slot. Every
# job asks for 2 ranks, so the scheduler spreads it over both workers and agent A launches
# `mpirun --hostfile` (its remote launcher enters node-b where a cluster would ssh). Checked:
# each job's ranks ran on node-a and node-b; the EXRM training and evaluation jobs' metrics
# equal those of the same specs run on one node with 2 ranks.
#   tests/multinode/mpirun_test.sh BUILD_DIR
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: mpirun_test.sh BUILD_DIR}")
if [ "$(id -u)" != 0 ]; then
  echo "mpirun_test: needs root for network namespaces; skipped" >&2
  exit 77
fi
work=$(mktemp -d /var/tmp/rmgen-mn.XXXXXX)  # not /tmp: each node has its own
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null; done
  "$src/tests/multinode/nodes.sh" down "$work/nodes"
  if [ "${KEEP:-0}" = 1 ] || [ "${failed:-1}" = 1 ]; then
    echo "mpirun_test: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
fail() {
  echo "mpirun_test: FAIL: $*" >&2
  for f in "$work"/*.log "$work"/jobs/*/logs/*.log; do
    [ -f "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }
  done
  exit 1
}

eval "$("$src/tests/multinode/nodes.sh" up "$work/nodes")"
on_a() { "$src/tests/multinode/nodes.sh" run "$NODE_A_PID" "$@"; }
on_b() { "$src/tests/multinode/nodes.sh" run "$NODE_B_PID" "$@"; }
export RMGEN_TEST_NODES="10.231.0.1=$NODE_A_PID 10.231.0.2=$NODE_B_PID"
# (root only here: OpenMPI's daemons on the other node need the same consent as mpirun)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "mpirun_test: nodes up ($(on_a hostname), $(on_b hostname))"

rmgen=$build/client/rmgen
"$rmgen" data synth --out "$work/run/synth" --train 200 --validation 48 --shifted 48 > /dev/null 2>&1
# (nodes.sh, not on_a: $! must be the process itself, which nodes.sh becomes by exec)
"$src/tests/multinode/nodes.sh" run "$NODE_A_PID" "$build/coordinator/rmgen-coordinator" --listen 10.231.0.1:0 --insecure \
  --data-dir "$work/coord" --lease-ms 10000 --output-root "$work/jobs" > "$work/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^port ' "$work/coordinator.log" && break; sleep 0.1; done
port=$(sed -n 's/^port //p' "$work/coordinator.log")
[ -n "$port" ] || fail "the coordinator did not start"
export RMGEN_COORDINATOR=10.231.0.1:$port

mpi_args=()
for a in --mca plm_rsh_agent "$src/tests/multinode/rsh_netns.sh" --mca btl tcp,self \
  --mca btl_tcp_if_include 10.231.0.0/24 --mca oob_tcp_if_include 10.231.0.0/24; do
  mpi_args+=(--launcher-arg "$a")
done
start_agent() {  # node host holder-pid
  local node=$1 host=$2
  "$src/tests/multinode/nodes.sh" run "$3" "$build/worker/agent/rmgen-worker" --coordinator "$RMGEN_COORDINATOR" \
    --id "node-$node" --host "$host" --slots 1 --state-dir "$work/state-$node" \
    --workdir "$work/run" --train-bin "$build/worker/train/rmgen-train" --grace-ms 3000 \
    "${mpi_args[@]}" > "$work/agent-$node.log" 2>&1 &
  pids+=($!)
}
start_agent a 10.231.0.1 "$NODE_A_PID"
start_agent b 10.231.0.2 "$NODE_B_PID"

cat > "$work/study.yaml" << YAML
name: multinode
setting: test
catalog: synth/datasets.yaml
models:
  - {name: tiny, config: synth/model.json, tokenizer: synth/tokenizer.model, template: zephyr}
methods: [exrm]
seeds: [0]
train: synth-id:train
eval: {id: [synth-id:validation], ood: [synth-prompt-shift]}
sft: {epochs: 1, per_rank_batch_size: 4, learning_rate: 1.0e-3}
exrm: {epochs: 1, per_rank_batch_size: 4, learning_rate: 5.0e-4}
resources: {ranks: 2, threads: 1}
YAML
(cd "$work/run" && timeout 600 "$src/tests/multinode/nodes.sh" run "$NODE_A_PID" \
  "$rmgen" submit "$work/study.yaml" --watch) > "$work/watch.log" 2>&1 ||
  fail "the study did not succeed: $(grep -E 'FAILED|rmgen:' "$work/watch.log" | head -5)"

# Every job: 2 ranks, one on each node, launched by agent A with a hostfile of both.
jobs=$(ls "$work/jobs" | grep -E '^s1-j[0-9]+$' || true)
[ -n "$jobs" ] || fail "no job folders"
for j in $jobs; do
  python3 - "$work/jobs/$j" << 'PY' || fail "job $j did not run on both nodes"
import json, sys
out = sys.argv[1]
m = json.load(open(out + "/metrics.json"))
assert m["ranks"] == 2, m["ranks"]
hosts = sorted(json.load(open(f"{out}/ranks/rank-{r}.json"))["host"] for r in (0, 1))
assert hosts == ["node-a", "node-b"], hosts
PY
done
cat "$work"/agent-*.log | grep -q "placed over 2 workers" || fail "no agent launched a spread job"
echo "mpirun_test: jobs $(echo $jobs) ran with a rank on node-a and one on node-b"

# The same EXRM training and evaluation specs on one node (2 ranks under a local mpirun):
# the same metrics.
one_node() {  # KIND -> the job folder of that kind, after rerunning its spec into DIR/single-KIND
  local spec
  spec=$(grep -l "\"kind\": \"$1\"" "$work"/jobs/s1-j*/spec.resolved.json | tail -1)
  [ -n "$spec" ] || fail "no $1 job"
  (cd "$work/run" && "$src/tests/mpi/mpirun.sh" 2 "$build/worker/train/rmgen-train" \
    --spec "$spec" --out "$work/single-$1" --quiet) > "$work/single-$1.log" 2>&1 ||
    fail "the one-node $1 run failed: $(tail -5 "$work/single-$1.log")"
  dirname "$spec"
}
train_dir=$(one_node reward)
eval_dir=$(one_node eval)
python3 - "$train_dir/metrics.json" "$work/single-reward/metrics.json" \
  "$eval_dir/metrics.json" "$work/single-eval/metrics.json" << 'PY' || fail "metrics differ"
import json, sys
ta, tb, ea, eb = (json.load(open(p)) for p in sys.argv[1:5])
def flat(x, pre=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, pre + "/" + k)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield pre, float(x)
def same(a, b, what):
    timing = ("per_s", "seconds", "_share")  # how fast, not what
    fa, fb = ({k: v for k, v in flat(x) if not any(t in k for t in timing)} for x in (a, b))
    assert fa.keys() == fb.keys() and fa, (what, sorted(fa), sorted(fb))
    for k in fa:  # the same ranks and reductions: equal up to float noise
        assert abs(fa[k] - fb[k]) <= 1e-6 * max(1.0, abs(fa[k])), (what, k, fa[k], fb[k])
    return len(fa)
n = same(ta["train"]["final"], tb["train"]["final"], "train.final")
assert ta["train"]["steps"] == tb["train"]["steps"] and ta["train"]["samples"] == tb["train"]["samples"]
m = same(ea["eval"], eb["eval"], "eval")
print(f"mpirun_test: on two nodes == on one node: {n} final training values "
      f"(loss {ta['train']['final']['loss']:.6f}), {m} evaluation values")
PY
failed=0
echo "mpirun_test: PASS"
