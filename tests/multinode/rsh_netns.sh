#!/bin/sh
# OpenMPI's remote launcher for the two test nodes (mpirun --mca plm_rsh_agent THIS): where a
# cluster uses `ssh HOST COMMAND`, this enters the node that has HOST's address.
#   RMGEN_TEST_NODES="10.231.0.1=PID 10.231.0.2=PID"  (holder pids from nodes.sh)
set -eu
host=$1
shift
for entry in $RMGEN_TEST_NODES; do
  if [ "${entry%%=*}" = "$host" ]; then
    exec nsenter -t "${entry#*=}" --net --uts --mount -- /bin/sh -c "$*"
  fi
done
echo "rsh_netns.sh: no test node has address $host" >&2
exit 255
