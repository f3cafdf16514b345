#!/bin/sh
# A stand-in for rmgen-train under rmgen-worker's command launcher (real processes, no
# torch): called as `fake_job.sh --spec FILE --out DIR`, it writes FAKE_STEPS progress events
# (FAKE_STEP_S seconds apart) to DIR/events.jsonl, then DIR/metrics.json, and logs
# "start|end JOB SECONDS.NANOS PID" lines to $FAKE_JOB_LOG.
#   FAKE_MODE=stubborn  ignores SIGTERM and leaves a grandchild in its own session behind
set -u
out=$4
job=$(basename "$out")
steps=${FAKE_STEPS:-4}
log=${FAKE_JOB_LOG:-/dev/null}
echo "start $job $(date +%s.%N) $$" >> "$log"
# As rmgen-train does: rewrite events.jsonl when starting (no checkpoint here: empty).
: > "$out/events.jsonl.tmp" && mv "$out/events.jsonl.tmp" "$out/events.jsonl"
if [ "${FAKE_MODE:-}" = stubborn ]; then
  trap '' TERM
  setsid sleep 300 &
fi
i=1
while [ "$i" -le "$steps" ]; do
  sleep "${FAKE_STEP_S:-0.1}"
  echo "{\"step\": $i, \"total_steps\": $steps, \"loss\": 0.5}" >> "$out/events.jsonl"
  i=$((i + 1))
done
echo '{"kind": "fake", "train": {"steps": '"$steps"'}}' > "$out/metrics.json.tmp"
mv "$out/metrics.json.tmp" "$out/metrics.json"
echo "end $job $(date +%s.%N) $$" >> "$log"
