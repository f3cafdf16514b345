#!/bin/bash
# Chaos soak: real processes under random faults, then a check that nothing was lost, done
# twice or run twice at once.
#
#   bench/chaos_soak.sh [--minutes 10] [--out DIR] [--build DIR] [--seed 1] [--agents 4]
#                       [--slots 2] [--lease-ms 3000] [--max-attempts 20] [--drain-s 600]
#
# A real rmgen-coordinator (SQLite in DIR/work/data, --lease-ms 3000) and --agents real
# rmgen-worker agents (--slots each, their own --state-dir, the command launcher running
# bench/chaos_job.sh: tests/service/fake_job.sh, FAKE_STEPS=6 x FAKE_STEP_S=0.5, a 3 s job).
# A feeder submits studies through the rmgen CLI (each "wave": 8 seeds x {train, eval} = 16
# jobs, seeds never repeated, so no job is reused from another) whenever fewer jobs wait than
# the agents have slots x 2, so every slot stays busy. For --minutes, every 4 to 12 s (seeded
# RNG, each event logged with its time) one of:
#   agent        SIGKILL an agent, restart it 0.5 to 3 s later (same --id and --state-dir)
#   rank         SIGKILL one running fake_job.sh process
#   coordinator  SIGKILL the coordinator, restart it 0.3 to 2 s later (same data dir, port)
# (the first three events are one of each, in a seeded order). Then the feeder stops, every
# job is let finish (at most --drain-s), the agents and the coordinator are stopped, and
# bench/chaos_soak_report.py checks, from the store (DIR/work/data/state.db), the jobs' own
# logs and the agents' attempt folders:
#   - no job lost: every submitted job is in the store, in its study, final, and SUCCEEDED;
#     each study has the jobs it was planned with, and one study per wave;
#   - no result duplicated: one result row per job;
#   - no split brain: no two runs (fake_job.sh start..end, or its attempt's exit.json when it
#     was killed) of the same job overlap in time, and no attempt started twice.
# Writes DIR/summary.json and, when matplotlib is there (Debian: python3-matplotlib),
# DIR/chaos_soak.png and .svg: jobs by state over time, the kills marked. Exit status 0 when
# every check holds. Every process it started is stopped on exit.
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$src/build
minutes=10 out="" seed=1 agents=4 slots=2 lease_ms=3000 max_attempts=20 drain_s=600
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2 ;;
    --out) out=$2 ;;
    --build) build=$2 ;;
    --seed) seed=$2 ;;
    --agents) agents=$2 ;;
    --slots) slots=$2 ;;
    --lease-ms) lease_ms=$2 ;;
    --max-attempts) max_attempts=$2 ;;
    --drain-s) drain_s=$2 ;;
    -h | --help)
      sed -n '2,29p' "$0"
      exit 0
      ;;
    *)
      echo "chaos_soak: unknown argument $1" >&2
      exit 2
      ;;
  esac
  shift 2 || { echo "chaos_soak: $1 needs a value" >&2; exit 2; }
done
build=$(realpath "$build")
coordinator_bin=$build/coordinator/rmgen-coordinator
worker_bin=$build/worker/agent/rmgen-worker
cli_bin=$build/client/rmgen
for b in "$coordinator_bin" "$worker_bin" "$cli_bin"; do
  [ -x "$b" ] || { echo "chaos_soak: $b not built" >&2; exit 2; }
done
out=${out:-$(mktemp -d /tmp/rmgen-chaos.XXXXXX)}
mkdir -p "$out"
out=$(realpath "$out")
work=$out/work
rm -rf "$work"
mkdir -p "$work/logs" "$work/data"
chaos_log=$work/chaos.log      # "EPOCH KIND what"
studies=$work/studies.txt      # "wave K STUDY JOBS"
timeline=$work/timeline.csv    # job states over time
: > "$chaos_log"
: > "$studies"
echo "t,PENDING,QUEUED,ASSIGNED,RUNNING,SUCCEEDED,FAILED,CANCELLED,studies" > "$timeline"
export HOME=$work  # no user config for the CLI
export FAKE_JOB_LOG=$work/fake_jobs.log CHAOS_RUN_LOG=$work/runs.log
export FAKE_STEPS=${FAKE_STEPS:-6} FAKE_STEP_S=${FAKE_STEP_S:-0.5}
: > "$FAKE_JOB_LOG"
: > "$CHAOS_RUN_LOG"
seeds_per_wave=8

now() { date +%s.%N; }
note() { echo "[chaos_soak $(date +%T)] $*" >&2; }
event() {  # KIND WHAT
  echo "$(now) $1 $2" >> "$chaos_log"
  note "$1: $2"
}

# ---- processes -----------------------------------------------------------------------
coordinator_pid="" port=0 coordinator_starts=0
declare -a agent_pid
helper_pids=""

start_coordinator() {  # LISTEN
  coordinator_starts=$((coordinator_starts + 1))
  local log=$work/logs/coordinator-$coordinator_starts.log
  "$coordinator_bin" --listen "$1" --data-dir "$work/data" --lease-ms "$lease_ms" \
    --max-attempts "$max_attempts" --output-root "$work/jobs" > "$log" 2>&1 &
  coordinator_pid=$!
  for _ in $(seq 200); do
    if grep -q '^port ' "$log"; then
      port=$(sed -n 's/^port \([0-9]*\)$/\1/p' "$log" | tail -1)
      return 0
    fi
    kill -0 "$coordinator_pid" 2> /dev/null || break
    sleep 0.1
  done
  note "the coordinator did not start:"
  tail -20 "$log" >&2
  return 1
}

start_agent() {  # INDEX
  local i=$1
  "$worker_bin" --coordinator "127.0.0.1:$port" --id "chaos-a$i" --slots "$slots" \
    --state-dir "$work/state-a$i" --workdir "$work" --grace-ms 1500 \
    --launcher command --command "/bin/sh $src/bench/chaos_job.sh" \
    >> "$work/logs/agent-a$i.log" 2>&1 &
  agent_pid[i]=$!
}

# SIGKILL a process we started, and reap it.
kill9() {
  kill -KILL "$1" 2> /dev/null
  wait "$1" 2> /dev/null
}

# Processes of this run outside our own children: the supervisors (their own sessions) and
# the jobs, found by their arguments, which name this run's state folders.
# (The pattern goes through the environment: awk's own arguments must not match it.)
strays() {
  ps -eo pid=,args= | PAT=" $work/state-a" awk 'index($0, ENVIRON["PAT"]) { print $1 }'
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  rm -f "$work/feeding" "$work/polling"
  for p in $helper_pids; do
    pkill -TERM -P "$p" 2> /dev/null  # its CLI call or sleep
    kill -TERM "$p" 2> /dev/null
  done
  # Agents first (SIGTERM: they stop their ranks), then the coordinator.
  for i in "${!agent_pid[@]}"; do kill -TERM "${agent_pid[i]}" 2> /dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for i in "${!agent_pid[@]}"; do kill -0 "${agent_pid[i]}" 2> /dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for i in "${!agent_pid[@]}"; do kill9 "${agent_pid[i]}"; done
  if [ -n "$coordinator_pid" ]; then
    kill -TERM "$coordinator_pid" 2> /dev/null
    for _ in $(seq 50); do kill -0 "$coordinator_pid" 2> /dev/null || break; sleep 0.1; done
    kill9 "$coordinator_pid"
  fi
  for p in $helper_pids; do kill9 "$p"; done
  local left
  left=$(strays)
  # shellcheck disable=SC2086
  [ -n "$left" ] && kill -KILL $left 2> /dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cli() { timeout 20 "$cli_bin" "$@" --coordinator "127.0.0.1:$port"; }

# Sums the job states of every study from `rmgen status`; prints "P,Q,A,R,S,F,C,studies".
states_now() {
  cli status 2> /dev/null | awk '
    / jobs:/ { n++; for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) c[kv[1]] += kv[2] }
    END { printf "%d,%d,%d,%d,%d,%d,%d,%d\n", c["PENDING"], c["QUEUED"], c["ASSIGNED"],
          c["RUNNING"], c["SUCCEEDED"], c["FAILED"], c["CANCELLED"], n }'
}

# The timeline: every second while $work/polling exists (nothing while the coordinator is
# down: those seconds are gaps).
poller() {
  while [ -e "$work/polling" ]; do
    local t s
    t=$(now)
    if s=$(states_now) && [ -n "$s" ] && [ "${s##*,}" != 0 ]; then echo "$t,$s" >> "$timeline"; fi
    sleep 1
  done
}

# Submits wave K (retried until the coordinator answers: a lost reply gets the same study
# back, the request id being the file's content).
submit_wave() {
  local k=$1 f=$work/wave-$1.yaml seeds="" s id
  for ((s = k * seeds_per_wave; s < (k + 1) * seeds_per_wave; s++)); do
    seeds="$seeds${seeds:+, }$s"
  done
  cat > "$f" << EOF
name: chaos-w$k
setting: chaos
catalog: synth/datasets.yaml
models:
  - {name: tiny, config: synth/model.json, tokenizer: synth/tokenizer.model, template: zephyr}
methods: [exrm]
seeds: [$seeds]
train: synth-id:train
eval: {id: [synth-id:validation]}
exrm: {epochs: 1}
resources: {ranks: 1}
EOF
  for _ in $(seq 120); do
    local r
    if r=$(cli submit "$f" 2>&1); then
      id=$(echo "$r" | sed -n 's/^study \([^ ]*\) .*/\1/p' | head -1)
      echo "wave $k $id $((2 * seeds_per_wave))" >> "$studies"
      return 0
    fi
    sleep 0.5
  done
  echo "wave $k SUBMIT-FAILED $((2 * seeds_per_wave))" >> "$studies"
  note "wave $k: not submitted: $r"
  return 1
}

# Keeps more jobs waiting than the agents have slots, while $work/feeding exists.
feeder() {  # FIRST_WAVE
  local k=$1 s waiting
  while [ -e "$work/feeding" ]; do
    if s=$(states_now) && [ -n "$s" ] && [ "${s##*,}" != 0 ]; then
      IFS=, read -r p q _ <<< "$s"
      waiting=$((p + q))
      if [ "$waiting" -lt $((2 * agents * slots)) ]; then
        submit_wave "$k"
        k=$((k + 1))
        continue
      fi
    fi
    sleep 1
  done
}

# ---- the run -------------------------------------------------------------------------
note "output in $out; $agents agents x $slots slots, lease $lease_ms ms, seed $seed, $minutes min"
start_coordinator 127.0.0.1:0 || exit 1
for ((i = 0; i < agents; i++)); do start_agent $i; done
touch "$work/feeding" "$work/polling"
poller &
helper_pids="$helper_pids $!"
# The first wave before any fault: every slot busy from the start.
submit_wave 0
feeder 1 &
feeder_pid=$!
helper_pids="$helper_pids $feeder_pid"
sleep 5

RANDOM=$seed
start=$(date +%s)
end=$((start + ${minutes%.*} * 60))
[ "${minutes%.*}" != "$minutes" ] && end=$(awk -v s="$start" -v m="$minutes" 'BEGIN { printf "%d", s + m * 60 }')
# The first three events: one of each kind, in a seeded order.
kinds=(agent rank coordinator)
first=$((RANDOM % 3))
order=("${kinds[first]}" "${kinds[(first + 1 + RANDOM % 2) % 3]}")
for k in "${kinds[@]}"; do [[ " ${order[*]} " == *" $k "* ]] || order+=("$k"); done
n=0
while :; do
  gap=$((4 + RANDOM % 9))
  [ $(($(date +%s) + gap)) -ge "$end" ] && break
  sleep "$gap"
  if [ $n -lt 3 ]; then
    kind=${order[n]}
  else
    r=$((RANDOM % 100))
    if [ $r -lt 40 ]; then kind=agent; elif [ $r -lt 80 ]; then kind=rank; else kind=coordinator; fi
  fi
  n=$((n + 1))
  case $kind in
    agent)
      i=$((RANDOM % agents))
      pause=$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", 0.5 + 2.5 * r / 32768 }')
      kill9 "${agent_pid[i]}"
      event agent "chaos-a$i SIGKILL, restart after ${pause}s"
      sleep "$pause"
      start_agent "$i"
      event agent-restart "chaos-a$i"
      ;;
    rank)
      mapfile -t ranks < <(ps -eo pid=,args= | PAT="fake_job.sh --spec $work/state-a" \
        awk 'index($0, ENVIRON["PAT"]) { print $1 " " $(NF-2) }')
      if [ ${#ranks[@]} -eq 0 ]; then
        event rank-none "no rank running"
        continue
      fi
      pick=${ranks[RANDOM % ${#ranks[@]}]}
      pid=${pick%% *} spec=${pick#* }
      kill -KILL "$pid" 2> /dev/null
      attempt_dir=$(dirname "$spec")
      event rank "pid $pid $(basename "$attempt_dir")"
      ;;
    coordinator)
      pause=$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", 0.3 + 1.7 * r / 32768 }')
      kill9 "$coordinator_pid"
      event coordinator "SIGKILL, restart after ${pause}s"
      sleep "$pause"
      if ! start_coordinator "127.0.0.1:$port"; then
        event coordinator-restart "FAILED"
        exit 1
      fi
      event coordinator-restart "port $port"
      ;;
  esac
done
event chaos-end "$n events"

# ---- drain ---------------------------------------------------------------------------
rm -f "$work/feeding"
wait "$feeder_pid" 2> /dev/null
deadline=$(($(date +%s) + drain_s))
drained=0
while [ "$(date +%s)" -lt "$deadline" ]; do
  if s=$(states_now) && [ -n "$s" ] && [ "${s##*,}" != 0 ]; then
    IFS=, read -r p q a r _ <<< "$s"
    if [ $((p + q + a + r)) -eq 0 ]; then
      drained=1
      break
    fi
  fi
  sleep 1
done
event drained "$([ $drained = 1 ] && echo "every job final" || echo "NOT every job final after ${drain_s}s")"
sleep 1.5  # a last timeline row
rm -f "$work/polling"
# Stop the agents and the coordinator (politely), so the store is read at rest.
for i in "${!agent_pid[@]}"; do kill -TERM "${agent_pid[i]}" 2> /dev/null; done
for i in "${!agent_pid[@]}"; do wait "${agent_pid[i]}" 2> /dev/null; done
agent_pid=()
kill -TERM "$coordinator_pid" 2> /dev/null
wait "$coordinator_pid" 2> /dev/null
coordinator_pid=""

py=""
for c in ${PYTHON:-} /usr/bin/python3 python3; do
  if command -v "$c" > /dev/null 2>&1 && "$c" -c 'import matplotlib' 2> /dev/null; then
    py=$c
    break
  fi
done
if [ -z "$py" ]; then
  note "no python3 with matplotlib (apt-get install python3-matplotlib): summary only"
  py=python3
fi
"$py" "$src/bench/chaos_soak_report.py" --work "$work" --out "$out" --minutes "$minutes" \
  --seed "$seed" --lease-ms "$lease_ms" --max-attempts "$max_attempts"
