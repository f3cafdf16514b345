# The multi-node tests' common part (sourced by mpirun_test.sh and slurm_test.sh): two nodes
# up (nodes.sh), a work folder outside /tmp, cleanup, the coordinator on node-a, the study,
# and the checks. The sourcing script sets `name` (for messages) and `src`, `build`.
#   mn_init               work folder, the two nodes (on_a, on_b, NODE_A_PID, NODE_B_PID),
#                         cleanup at exit (processes in `pids`, then `mn_extra_cleanup`)
#   mn_start_coordinator  rmgen-coordinator on node-a; exports RMGEN_COORDINATOR
#   mn_run_study          writes and submits the study (2-rank jobs), waits for it
#   mn_check_jobs CHECK   each job ran with a rank on node-a and one on node-b; CHECK (a
#                         shell command, given the job folder) more
#   mn_same_as_one_node KIND...   each KIND job's spec again on one node: the same metrics

mn_init() {
  work=$(mktemp -d /var/tmp/rmgen-mn.XXXXXX)  # not /tmp: each node has its own
  pids=()
  failed=1
  trap mn_cleanup EXIT
  local up
  up=$("$src/tests/multinode/nodes.sh" up "$work/nodes" "$src" "$build") ||
    fail "the two nodes did not come up"
  eval "$up"
  echo "$name: nodes up ($(on_a hostname), $(on_b hostname))"
  rmgen=$build/client/rmgen
  "$rmgen" data synth --out "$work/run/synth" --train 200 --validation 48 --shifted 48 \
    > /dev/null 2>&1
}
on_a() { "$src/tests/multinode/nodes.sh" run "$NODE_A_PID" "$@"; }
on_b() { "$src/tests/multinode/nodes.sh" run "$NODE_B_PID" "$@"; }

mn_extra_cleanup() { :; }
mn_cleanup() {
  set +e
  mn_extra_cleanup
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null; done
  "$src/tests/multinode/nodes.sh" down "$work/nodes"
  if [ "${KEEP:-0}" = 1 ] || [ "$failed" = 1 ]; then
    echo "$name: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
fail() {
  echo "$name: FAIL: $*" >&2
  for f in "$work"/*.log "$work"/cluster/log/*.log "$work"/jobs/*/logs/*.log; do
    [ -f "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }
  done
  exit 1
}

mn_start_coordinator() {
  # (nodes.sh directly, not on_a: $! must be the process itself, which nodes.sh becomes)
  "$src/tests/multinode/nodes.sh" run "$NODE_A_PID" "$build/coordinator/rmgen-coordinator" \
    --listen 10.231.0.1:0 --insecure --data-dir "$work/coord" --lease-ms 10000 \
    --output-root "$work/jobs" > "$work/coordinator.log" 2>&1 &
  pids+=($!)
  disown  # (no job-control notice when cleanup kills it)
  for _ in $(seq 100); do grep -q '^port ' "$work/coordinator.log" && break; sleep 0.1; done
  local port
  port=$(sed -n 's/^port //p' "$work/coordinator.log")
  [ -n "$port" ] || fail "the coordinator did not start"
  export RMGEN_COORDINATOR=10.231.0.1:$port
}

mn_run_study() {
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
}

mn_check_jobs() {
  local check=$1 j
  jobs=$(ls "$work/jobs" | grep -E '^s1-j[0-9]+$' || true)
  [ -n "$jobs" ] || fail "no job folders"
  for j in $jobs; do
    $check "$work/jobs/$j" || fail "job $j: $check"
    python3 - "$work/jobs/$j" << 'PY' || fail "job $j did not run on both nodes"
import json, sys
out = sys.argv[1]
m = json.load(open(out + "/metrics.json"))
assert m["ranks"] == 2, m["ranks"]
hosts = sorted(json.load(open(f"{out}/ranks/rank-{r}.json"))["host"] for r in (0, 1))
assert hosts == ["node-a", "node-b"], hosts
PY
  done
  echo "$name: jobs $(echo $jobs) ran with a rank on node-a and one on node-b"
}

mn_same_as_one_node() {
  local kind spec
  for kind in "$@"; do
    spec=$(grep -l "\"kind\": \"$kind\"" "$work"/jobs/s1-j*/spec.resolved.json | tail -1 || true)
    [ -n "$spec" ] || fail "no $kind job"
    (cd "$work/run" && "$src/tests/mpi/mpirun.sh" 2 "$build/worker/train/rmgen-train" \
      --spec "$spec" --out "$work/single-$kind" --quiet) > "$work/single-$kind.log" 2>&1 ||
      fail "the one-node $kind run failed: $(tail -5 "$work/single-$kind.log")"
    python3 - "$(dirname "$spec")/metrics.json" "$work/single-$kind/metrics.json" "$kind" \
      << 'PY' || fail "the $kind job's metrics differ from one node's"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def flat(x, pre=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, pre + "/" + k)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield pre, float(x)
timing = ("per_s", "seconds", "_share")  # how fast, not what
def same(x, y, what):
    fa, fb = ({k: v for k, v in flat(z) if not any(t in k for t in timing)} for z in (x, y))
    assert fa.keys() == fb.keys() and fa, (what, sorted(fa), sorted(fb))
    for k in fa:  # the same ranks and reductions: equal up to float noise
        assert abs(fa[k] - fb[k]) <= 1e-6 * max(1.0, abs(fa[k])), (what, k, fa[k], fb[k])
    return len(fa)
if "train" in a:
    n = same(a["train"]["final"], b["train"]["final"], "train.final")
    assert a["train"]["steps"] == b["train"]["steps"] and a["train"]["samples"] == b["train"]["samples"]
    print(f"{sys.argv[3]}: {n} final training values equal (loss {a['train']['final']['loss']:.6f})")
if a.get("eval"):
    print(f"{sys.argv[3]}: {same(a['eval'], b['eval'], 'eval')} evaluation values equal")
PY
  done
}
