#!/bin/bash
# A real single-node Slurm cluster on localhost for the tests (Debian 12's munge, slurmctld,
# slurmd), all of its state under DIR.
#   tests/slurm/cluster.sh start DIR   writes DIR/slurm.conf, starts munged (as the munge user)
#                                      if none runs, slurmctld and slurmd; waits until the node
#                                      is idle; prints `export SLURM_CONF=DIR/slurm.conf`
#   tests/slurm/cluster.sh stop DIR    stops only the daemons this script started (by pid)
# Needs root (slurmd runs jobs as their users).
set -euo pipefail
cmd=${1:?usage: cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")

# shellcheck source=tests/slurm/lib.sh
. "$(dirname "$0")/lib.sh"
stop() { stop_cluster "$dir"; }

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: cluster.sh start|stop DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "cluster.sh: needs root" >&2; exit 1; }
for b in munged slurmctld slurmd sinfo; do
  command -v "$b" >/dev/null || { echo "cluster.sh: $b not installed (scripts/setup.sh installs it)" >&2; exit 1; }
done
start_munge "$dir"
write_slurm_conf "$dir" rmgen-test localhost "NodeName=localhost CPUs=$(nproc) State=UNKNOWN" localhost
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 300); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  if [ "$state" = idle ]; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "cluster.sh: the node did not become idle (state '${state:-none}'); logs in $dir/log" >&2
tail -20 "$dir"/log/*.log >&2 || true
stop
exit 1
