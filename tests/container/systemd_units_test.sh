#!/usr/bin/env bash
# The units in deploy/systemd/ pass `systemd-analyze verify` (every key known, the commands
# executable) with their ExecStart pointed at this build's binaries, and keep what an
# operator relies on: a restart policy, a dedicated user, a state directory, the token as a
# credential (never on the command line), and the agent's graceful stop.
#   tests/container/systemd_units_test.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
SRC=$(cd "$(dirname "$0")/../.." && pwd)
command -v systemd-analyze > /dev/null || { echo "SKIPPED: no systemd-analyze"; exit 77; }
fail() { echo "systemd_units_test: FAILED: $*" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in "$SRC"/deploy/systemd/*.service; do
  sed -e "s#/usr/local/bin/rmgen-coordinator#$BUILD/coordinator/rmgen-coordinator#" \
    -e "s#/usr/local/bin/rmgen-worker#$BUILD/worker/agent/rmgen-worker#" \
    "$unit" > "$work/$(basename "$unit")"
done
out=$(cd "$work" && systemd-analyze verify ./*.service 2>&1) || fail "verify: $out"
# Warnings (an unknown key, a bad value) leave the exit status 0: none may be printed.
[[ -z $out ]] || fail "verify printed: $out"
for unit in "$work"/*.service; do
  name=$(basename "$unit")
  for key in '^Restart=' '^User=' '^StateDirectory=' '^LoadCredential=' '^NoNewPrivileges=yes'; do
    grep -q "$key" "$unit" || fail "$name: no $key"
  done
  grep '^ExecStart=' "$unit" | grep -c -- '--token ' > /dev/null && fail "$name: a token on the command line"
  grep -q 'CREDENTIALS_DIRECTORY' "$unit" || fail "$name: the token is not read from a credential"
done
grep -q '^KillMode=process' "$work/rmgen-worker.service" ||
  fail "rmgen-worker.service: the supervisors must outlive the agent (KillMode=process)"
grep -q '^KillSignal=SIGTERM' "$work/rmgen-worker.service" || fail "rmgen-worker: SIGTERM stop"
echo "systemd_units_test: PASSED"
