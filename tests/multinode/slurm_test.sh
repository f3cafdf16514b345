#!/bin/bash
# ctest -L multinode (b): a real two-node Slurm cluster on one machine. The two nodes are
# network namespaces (tests/multinode/nodes.sh); slurmctld and one slurmd run on node-a, a
# second slurmd on node-b (each slurmd takes its node name from its host name). The worker
# agent is deploy/slurm/rmgen-worker.sbatch submitted with `sbatch --nodes=2`: one agent for
# the 2-node allocation, each job an `srun --ntasks=2 --mpi=pmix` step across both nodes. A
# small study runs through rmgen-coordinator; checked: each job's ranks ran on node-a and
# node-b as srun steps, and the EXRM training and evaluation jobs' metrics equal the same
# specs' on one node.
#   tests/multinode/slurm_test.sh BUILD_DIR
set -euo pipefail
name=slurm_test
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: slurm_test.sh BUILD_DIR}")
if [ "$(id -u)" != 0 ]; then
  echo "$name: needs root for network namespaces and slurmd; skipped" >&2
  exit 77
fi
for b in munged slurmctld slurmd sbatch nsenter; do
  command -v "$b" > /dev/null || { echo "$name: $b not installed (scripts/setup.sh)" >&2; exit 1; }
done
# shellcheck source=tests/multinode/lib.sh
. "$src/tests/multinode/lib.sh"
# shellcheck source=tests/slurm/lib.sh
. "$src/tests/slurm/lib.sh"
job=""
mn_extra_cleanup() {
  if [ -n "$job" ]; then  # the allocation ends (its agent and steps) before the daemons stop
    on_a scancel "$job" 2> /dev/null
    for _ in $(seq 100); do
      on_a squeue -h -j "$job" 2> /dev/null | grep -q . || break
      sleep 0.2
    done
  fi
  stop_cluster "$work/cluster"
}
mn_init

c=$work/cluster
mkdir -p "$c"
start_munge "$c"
write_slurm_conf "$c" rmgen-2node "node-a(10.231.0.1)" \
  "NodeName=node-a NodeAddr=10.231.0.1 CPUs=1 State=UNKNOWN
NodeName=node-b NodeAddr=10.231.0.2 CPUs=1 State=UNKNOWN" node-a,node-b
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
echo "$name: two-node cluster up"
mn_start_coordinator

job=$(cd "$work" && RMGEN_WORKER=$build/worker/agent/rmgen-worker \
  RMGEN_TRAIN=$build/worker/train/rmgen-train RMGEN_STATE_ROOT=$work/state \
  RMGEN_WORKDIR=$work/run RMGEN_GRACE_MS=5000 \
  "$src/tests/multinode/nodes.sh" run "$NODE_A_PID" sbatch --parsable --nodes=2 \
  --ntasks-per-node=1 --output="$work/worker-%j.log" "$src/deploy/slurm/rmgen-worker.sbatch")
echo "$name: worker allocation $job (2 nodes)"

mn_run_study
srun_step() { grep -q "started pid .*: srun" "$1/logs/attempt-1.log"; }
mn_check_jobs srun_step
mn_same_as_one_node reward eval

on_a scancel "$job"
for _ in $(seq 100); do
  on_a squeue -h -j "$job" 2> /dev/null | grep -q . || break
  sleep 0.2
done
job=""
failed=0
echo "$name: PASS"
