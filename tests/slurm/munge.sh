#!/bin/bash
# munged for the test clusters: a key and the daemon (as the munge user), unless one runs.
#   tests/slurm/munge.sh DIR   records the pid it started in DIR/munged.pid (for `stop`)
set -euo pipefail
dir=${1:?usage: munge.sh DIR}
pgrep -x munged > /dev/null && exit 0
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do [ -f /run/munge/munged.pid ] && break; sleep 0.1; done
cp /run/munge/munged.pid "$dir/munged.pid"
