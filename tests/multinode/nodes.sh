#!/bin/bash
# Two "nodes" on one machine for the multi-node tests: two network namespaces joined by a
# veth pair, each with its own address (10.231.0.1 and .2) and, through a holder process,
# its own host name (a UTS namespace), its own /tmp (a tmpfs in its mount namespace, as real
# nodes have: OpenMPI's session folders and Slurm's PMIx folders go there), and an
# /etc/hosts naming both nodes (bound from /etc/netns/NS/hosts). The rest of the file
# system is shared, as a cluster's shared file system is: keep test folders out of /tmp (DIR
# too), or name them to `up`.
#   tests/multinode/nodes.sh up DIR [PATH...]   prints `export NODE_A_PID=... NODE_B_PID=...`;
#                                       PATHs under /tmp (the source and build trees, when
#                                       they are there) stay visible on the nodes
#   tests/multinode/nodes.sh down DIR   removes what `up` made (idempotent)
#   tests/multinode/nodes.sh run PID CMD...   runs CMD in that node (its network and name)
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
set -euo pipefail
cmd=${1:?usage: nodes.sh up|down DIR | run PID CMD...}
if [ "$cmd" = run ]; then
  pid=${2:?usage: nodes.sh run PID CMD...}
  shift 2
  exec nsenter -t "$pid" --net --uts --mount -- "$@"
fi
dir=$(realpath -m "${2:?usage: nodes.sh up|down DIR}")
ns_a=rmgn-a-$(basename "$(dirname "$dir")" | tr -cd 'a-zA-Z0-9' | tail -c 6)
ns_b=rmgn-b-${ns_a#rmgn-a-}
veth=rmgv${ns_a#rmgn-a-}

down() {
  # Everything still running on the nodes goes with them (supervisors, mpirun, orted, ranks).
  for ns in "$ns_a" "$ns_b"; do
    ip netns pids "$ns" 2> /dev/null | xargs -r kill -9 2> /dev/null || true
  done
  for f in "$dir"/holder-*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  ip link del "${veth}a" 2>/dev/null || true
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "/etc/netns/$ns_a" "/etc/netns/$ns_b"
  # (rmdir, never rm -r: inside a node this folder was the host's /tmp)
  rmdir "$dir"/host-tmp-* 2> /dev/null || true
}

if [ "$cmd" = down ]; then
  down
  exit 0
fi
[ "$cmd" = up ] || { echo "usage: nodes.sh up|down DIR | run PID CMD..." >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "nodes.sh: needs root" >&2; exit 1; }
mkdir -p "$dir"
down
ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add "${veth}a" type veth peer name "${veth}b"
ip link set "${veth}a" netns "$ns_a"
ip link set "${veth}b" netns "$ns_b"
ip -n "$ns_a" addr add 10.231.0.1/24 dev "${veth}a"
ip -n "$ns_b" addr add 10.231.0.2/24 dev "${veth}b"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "${veth}a" up
ip -n "$ns_b" link set "${veth}b" up
# A holder per node: its network namespace; a mount namespace of its own (a copy of the
# host's, cgroups included, which slurmd needs) with the hosts file bound over /etc/hosts and
# a tmpfs on /tmp; and a UTS namespace with the node's name.
shift 2
keep=""  # the PATHs under /tmp, relative to it
for p in "$@"; do
  p=$(realpath -m "$p")
  case "$p" in /tmp/?*) keep="$keep ${p#/tmp/}" ;; esac
done
for n in a b; do
  ns=rmgn-$n-${ns_a#rmgn-a-}
  mkdir -p "/etc/netns/$ns" "$dir/host-tmp-$n"
  printf '127.0.0.1 localhost\n10.231.0.1 node-a\n10.231.0.2 node-b\n' > "/etc/netns/$ns/hosts"
  # In the node's own (private) mount namespace: the host's /tmp is bound at host-tmp-N
  # first, a tmpfs goes over /tmp, and the kept PATHs are bound back into it.
  nsenter --net="/run/netns/$ns" -- unshare --mount --propagation private --uts -- /bin/sh -c '
    set -e
    hostname "node-$1"; hosts=$2; host_tmp=$3; shift 3
    mount --bind "$hosts" /etc/hosts
    mount --bind /tmp "$host_tmp"
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    for p in "$@"; do mkdir -p "/tmp/$p"; mount --bind "$host_tmp/$p" "/tmp/$p"; done
    exec sleep 86400' node "$n" "/etc/netns/$ns/hosts" "$dir/host-tmp-$n" $keep \
    > /dev/null 2>&1 &
  echo $! > "$dir/holder-$n.pid"
done
for n in a b; do
  for _ in $(seq 50); do
    pid=$(cat "$dir/holder-$n.pid")
    [ "$(nsenter -t "$pid" --uts hostname 2> /dev/null)" = "node-$n" ] &&
      nsenter -t "$pid" --mount -- grep -q ' /tmp tmpfs' /proc/mounts 2> /dev/null && break
    sleep 0.1
  done
done
# The link works (when ping is there to say so).
if command -v ping > /dev/null; then
  nsenter -t "$(cat "$dir/holder-a.pid")" --net ping -c 1 -W 2 10.231.0.2 > /dev/null ||
    { echo "nodes.sh: node-a cannot reach node-b" >&2; down; exit 1; }
fi
echo "export NODE_A_PID=$(cat "$dir/holder-a.pid") NODE_B_PID=$(cat "$dir/holder-b.pid")"
