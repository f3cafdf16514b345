#!/bin/bash
# ctest -L multinode (a): a study whose jobs are placed over two workers on two nodes, run by
# mpirun over TCP with a rank on each. Two network namespaces stand for the nodes
# (tests/multinode/nodes.sh: own addresses 10.231.0.1/.2, host names node-a/node-b, /tmp);
# the coordinator and agent A run on node-a, agent B on node-b, each agent with one slot.
# Every job asks for 2 ranks, so the scheduler spreads it over both workers and the first
# launches `mpirun --hostfile` (its remote launcher enters node-b where a cluster would ssh).
# Checked: each job's ranks ran on node-a and node-b; the EXRM training and evaluation jobs'
# metrics equal those of the same specs run on one node with 2 ranks.
#   tests/multinode/mpirun_test.sh BUILD_DIR
set -euo pipefail
name=mpirun_test
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: mpirun_test.sh BUILD_DIR}")
if [ "$(id -u)" != 0 ]; then
  echo "$name: needs root for network namespaces; skipped" >&2
  exit 77
fi
# shellcheck source=tests/multinode/lib.sh
. "$src/tests/multinode/lib.sh"
mn_init
export RMGEN_TEST_NODES="10.231.0.1=$NODE_A_PID 10.231.0.2=$NODE_B_PID"
# (root only here: OpenMPI's daemons on the other node need the same consent as mpirun)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mn_start_coordinator

mpi_args=()
for a in --mca plm_rsh_agent "$src/tests/multinode/rsh_netns.sh" --mca btl tcp,self \
  --mca btl_tcp_if_include 10.231.0.0/24 --mca oob_tcp_if_include 10.231.0.0/24; do
  mpi_args+=(--launcher-arg "$a")
done
start_agent() {  # node host holder-pid
  local node=$1 host=$2
  "$src/tests/multinode/nodes.sh" run "$3" "$build/worker/agent/rmgen-worker" \
    --coordinator "$RMGEN_COORDINATOR" --id "node-$node" --host "$host" --slots 1 \
    --state-dir "$work/state-$node" --workdir "$work/run" \
    --train-bin "$build/worker/train/rmgen-train" --grace-ms 3000 "${mpi_args[@]}" \
    > "$work/agent-$node.log" 2>&1 &
  pids+=($!)
  disown
}
start_agent a 10.231.0.1 "$NODE_A_PID"
start_agent b 10.231.0.2 "$NODE_B_PID"

mn_run_study
mn_check_jobs true
grep -q "placed over 2 workers" "$work"/agent-*.log || fail "no agent launched a spread job"
mn_same_as_one_node reward eval
failed=0
echo "$name: PASS"
