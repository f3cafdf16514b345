#!/bin/bash
# ctest -L multinode (b): a real two-node Slurm cluster on one machine. The two nodes are
# network namespaces (tests/multinode/nodes.sh); slurmctld and one slurmd run on node-a, a
# second slurmd on node-b (each slurmd takes its node name from its host name). The worker
# agent is deploy/slurm/rmgen-worker.sbatch submitted with `sbatch --nodes=2`: one agent for
# the 2-node allocation, each job an `srun --ntasks=2 --mpi=pmix` step across both nodes. A
# small study runs through rmgen-coordinator; checked: each job's ranks ran on node-a and
# node-b, and the EXRM training job's metrics equal the same spec's on one node.
#   tests/multinode/slurm_test.sh BUILD_DIR
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: slurm_test.sh BUILD_DIR}")
if [ "$(id -u)" != 0 ]; then
  echo "slurm_test: needs root for network namespaces and slurmd; skipped" >&2
  exit 77
fi
for b in munged slurmctld slurmd sbatch nsenter; do
  command -v "$b" > /dev/null || { echo "slurm_test: $b not installed (scripts/setup.sh)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/rmgen-mns.XXXXXX)  # not /tmp: each node has its own
pids=()
job=""
cleanup() {
  set +e
  [ -n "$job" ] && on_a scancel "$job" 2> /dev/null
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null; done
  for f in "$work"/cluster/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2> /dev/null; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null; done
  for f in "$work"/cluster/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2> /dev/null; done
  "$src/tests/multinode/nodes.sh" down "$work/nodes"
  if [ "${KEEP:-0}" = 1 ] || [ "${failed:-1}" = 1 ]; then
    echo "slurm_test: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
fail() {
  echo "slurm_test: FAIL: $*" >&2
  for f in "$work"/*.log "$work"/cluster/log/*.log "$work"/jobs/*/logs/*.log; do
    [ -f "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }
  done
  exit 1
}

eval "$("$src/tests/multinode/nodes.sh" up "$work/nodes")"
on_a() { "$src/tests/multinode/nodes.sh" run "$NODE_A_PID" "$@"; }
on_b() { "$src/tests/multinode/nodes.sh" run "$NODE_B_PID" "$@"; }

c=$work/cluster
mkdir -p "$c"/{state,log}
"$src/tests/slurm/munge.sh" "$c"
cat > "$c/slurm.conf" << CONF
ClusterName=rmgen-2node
SlurmctldHost=node-a(10.231.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$c/state
SlurmdSpoolDir=$c/spool-%n
SlurmctldPidFile=$c/slurmctld.pid
SlurmdPidFile=$c/slurmd-%n.pid
SlurmctldLogFile=$c/log/slurmctld.log
SlurmdLogFile=$c/log/slurmd-%n.log
SlurmctldPort=$((6817 + RANDOM % 1000))
SlurmdPort=$((7817 + RANDOM % 1000))
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=10
InactiveLimit=0
MinJobAge=60
NodeName=node-a NodeAddr=10.231.0.1 CPUs=1 State=UNKNOWN
NodeName=node-b NodeAddr=10.231.0.2 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=node-a,node-b Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$c/slurm.conf
on_a slurmctld -f "$SLURM_CONF"
on_a slurmd -f "$SLURM_CONF"
on_b slurmd -f "$SLURM_CONF"
idle=""
for _ in $(seq 300); do
  idle=$(on_a sinfo -h -N -o '%N %T' 2> /dev/null | grep -c ' idle$' || true)
  [ "$idle" = 2 ] && break
  sleep 0.2
done
[ "$idle" = 2 ] || fail "the two nodes did not become idle: $(on_a sinfo -N 2>&1)"
echo "slurm_test: two-node cluster up"

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

job=$(cd "$work" && RMGEN_WORKER=$build/worker/agent/rmgen-worker \
  RMGEN_TRAIN=$build/worker/train/rmgen-train RMGEN_STATE_ROOT=$work/state \
  RMGEN_WORKDIR=$work/run RMGEN_GRACE_MS=5000 \
  "$src/tests/multinode/nodes.sh" run "$NODE_A_PID" sbatch --parsable --nodes=2 \
  --ntasks-per-node=1 --output="$work/worker-%j.log" "$src/deploy/slurm/rmgen-worker.sbatch")
echo "slurm_test: worker allocation $job (2 nodes)"

cat > "$work/study.yaml" << YAML
name: slurm2
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

jobs=$(ls "$work/jobs" | grep -E '^s1-j[0-9]+$' || true)
[ -n "$jobs" ] || fail "no job folders"
for j in $jobs; do
  grep -q "started pid .*: srun" "$work/jobs/$j/logs/attempt-1.log" || fail "job $j was not an srun step"
  python3 - "$work/jobs/$j" << 'PY' || fail "job $j did not run on both nodes"
import json, sys
out = sys.argv[1]
m = json.load(open(out + "/metrics.json"))
assert m["ranks"] == 2, m["ranks"]
hosts = sorted(json.load(open(f"{out}/ranks/rank-{r}.json"))["host"] for r in (0, 1))
assert hosts == ["node-a", "node-b"], hosts
PY
done
echo "slurm_test: jobs $(echo $jobs) ran as srun steps with a rank on node-a and one on node-b"

spec=$(grep -l '"kind": "reward"' "$work"/jobs/s1-j*/spec.resolved.json | head -1)
[ -n "$spec" ] || fail "no reward job"
(cd "$work/run" && "$src/tests/mpi/mpirun.sh" 2 "$build/worker/train/rmgen-train" \
  --spec "$spec" --out "$work/single" --quiet) > "$work/single.log" 2>&1 ||
  fail "the one-node run failed: $(tail -5 "$work/single.log")"
python3 - "$(dirname "$spec")/metrics.json" "$work/single/metrics.json" << 'PY' || fail "metrics differ"
import json, sys
a, b = (json.load(open(p))["train"] for p in sys.argv[1:3])
assert a["steps"] == b["steps"] and a["samples"] == b["samples"], (a["steps"], b["steps"])
fa, fb = a["final"], b["final"]
assert fa.keys() == fb.keys() and fa
for k in fa:
    assert abs(fa[k] - fb[k]) <= 1e-6 * max(1.0, abs(fa[k])), (k, fa[k], fb[k])
print(f"slurm_test: on two Slurm nodes == on one node: final loss {fa['loss']:.6f}")
PY

on_a scancel "$job"
for _ in $(seq 100); do
  on_a squeue -h -j "$job" 2> /dev/null | grep -q . || break
  sleep 0.2
done
job=""
failed=0
echo "slurm_test: PASS"
