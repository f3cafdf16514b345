#!/bin/sh
# The job bench/chaos_soak.sh gives rmgen-worker's command launcher: called as
# `chaos_job.sh --spec ATTEMPT_DIR/spec.json --out DIR`, it logs "run JOB ATTEMPT PID
# SECONDS.NANOS ATTEMPT_DIR" to $CHAOS_RUN_LOG (the attempt comes from the agent's attempt
# folder, <state dir>/attempts/<job>.<attempt>), then becomes tests/service/fake_job.sh under
# the same pid, whose start/end lines (in $FAKE_JOB_LOG) carry that pid.
dir=$(dirname "$2")
echo "run $(basename "$4") ${dir##*.} $$ $(date +%s.%N) $dir" >> "${CHAOS_RUN_LOG:-/dev/null}"
exec /bin/sh "$(dirname "$0")/../tests/service/fake_job.sh" "$@"
