# Shell functions for the test Slurm clusters (sourced by tests/slurm/cluster.sh and
# tests/multinode/slurm_test.sh). Needs root.

# munged (as the munge user) with a key, unless one runs; the pid it started goes to
# DIR/munged.pid, so the cluster's `stop` ends it.
start_munge() {
  local dir=$1
  mkdir -p "$dir"
  pgrep -x munged > /dev/null && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  rm -f /run/munge/munged.pid  # (a killed munged leaves its pid file behind)
  runuser -u munge -- /usr/sbin/munged
  # Ready when a credential goes through it.
  local ok=""
  for _ in $(seq 100); do
    if [ -f /run/munge/munged.pid ] && munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  [ -f /run/munge/munged.pid ] && cp /run/munge/munged.pid "$dir/munged.pid"
  [ -n "$ok" ] || { echo "start_munge: munged did not answer (see /var/log/munge)" >&2; return 1; }
}

# DIR/slurm.conf for a test cluster: every file under DIR (state, per-node spool, pid and log
# files: %n is the node name), random ports, cons_tres by core, one partition over all nodes.
# Job ids start at a random number: the PMIx plugin names its folders in /tmp by job and
# step id, and one left behind by an earlier cluster with the same ids fails the step.
#   write_slurm_conf DIR NAME CONTROLLER NODE_LINES PARTITION_NODES
write_slurm_conf() {
  local dir=$1 name=$2 controller=$3 nodes=$4 partition=$5
  mkdir -p "$dir"/{state,log}
  cat > "$dir/slurm.conf" << CONF
ClusterName=$name
SlurmctldHost=$controller
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
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
SlurmctldPort=$((6817 + RANDOM % 1000))
SlurmdPort=$((7817 + RANDOM % 1000))
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=10
InactiveLimit=0
MinJobAge=60
FirstJobId=$((1000 + RANDOM % 30000 * 10))
$nodes
PartitionName=debug Nodes=$partition Default=YES MaxTime=INFINITE State=UP
CONF
}

# Kills the daemons whose pid files are in DIR (slurmd, slurmctld, munged if started here).
stop_cluster() {
  local dir=$1 f pid
  for f in "$dir"/slurmd*.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null || true
    rm -f "$f"
  done
}
