#!/usr/bin/env bash
# ctest -L container: the images built and run for real. A Debian 12 base made here with
# debootstrap (no registry is reachable) and imported with podman; the coordinator and CPU
# worker images built from docker/ with buildah; a coordinator container and two worker
# containers (podman, runc) run the demo study (configs/studies/demo.yaml), submitted with the
# CLI from outside; its results table is checked. The CUDA image is built when a CUDA devel
# base and the wheels are given (RMGEN_CUDA_BASE, RMGEN_WHEELS: a folder inside the repo),
# otherwise skipped with the reason. Exit 77 (skipped) when the tools or root are missing.
#   tests/container/container_test.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
SRC=$(cd "$(dirname "$0")/../.." && pwd)
skip() { echo "container_test: SKIPPED: $*"; exit 77; }
for tool in podman buildah debootstrap runc; do
  command -v "$tool" > /dev/null || skip "$tool is not installed (scripts/setup.sh --containers)"
done
[[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, podman's root storage)"
rmgen="$BUILD/client/rmgen"
[[ -x $rmgen ]] || skip "no $rmgen (RMGEN_WITH_SERVICE=OFF build)"

log() { echo "container_test: $(date +%T) $*"; }
fail() { echo "container_test: FAILED: $*" >&2; dump; exit 1; }
RUN=(podman --runtime runc run --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
BASE=localhost/rmgen-debian:bookworm
TAG=ct$$
work=$(mktemp -d /var/tmp/rmgen-ct.XXXXXX)
names=()
dump() {
  for n in "${names[@]}"; do echo "--- $n"; podman logs --tail 30 "$n" 2>&1 || true; done
}
cleanup() {
  for n in "${names[@]}"; do podman rm -f "$n" > /dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# 1. The base: debootstrap's minbase of bookworm, imported once (kept between runs).
if ! podman image exists "$BASE"; then
  log "debootstrap bookworm (minbase)"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
  tar -C "$work/rootfs" -c . | podman import - "$BASE" > /dev/null
  rm -rf "$work/rootfs"
fi

# 2. The images (buildah keeps layers: an unchanged tree rebuilds in seconds).
build() {  # NAME DOCKERFILE [ARGS...]
  local name=$1 file=$2
  shift 2
  log "building $name from $file"
  local t0=$SECONDS
  buildah bud --isolation chroot --layers --build-arg BASE="$BASE" --build-arg JOBS="$(nproc)" \
    -f "$SRC/$file" -t "localhost/$name:test" "$@" "$SRC" > "$work/$name.build.log" 2>&1 ||
    { tail -40 "$work/$name.build.log"; fail "building $name"; }
  log "built $name in $((SECONDS - t0)) s: $(podman image inspect --format '{{.Size}}' "localhost/$name:test" | awk '{printf "%.0f MB", $1/1e6}')"
}
build rmgen-coordinator docker/coordinator.Dockerfile
build rmgen-worker docker/worker.Dockerfile
if [[ -n ${RMGEN_CUDA_BASE:-} && -n ${RMGEN_WHEELS:-} ]]; then
  BASE=$RMGEN_CUDA_BASE build rmgen-worker-cuda docker/worker-cuda.Dockerfile \
    --build-arg WHEELS="$RMGEN_WHEELS"
else
  log "CUDA image not built: set RMGEN_CUDA_BASE (a CUDA devel image with a Debian 12 or" \
    "Ubuntu 22.04 userland) and RMGEN_WHEELS (a folder in the repo with the torch and" \
    "nvidia-nccl-cu12 wheels); neither a CUDA image nor the wheels are on this machine"
fi

# The images are what they say: non-root, the binaries in place, the runtime small.
[[ $("${RUN[@]}" --rm --entrypoint id "localhost/rmgen-coordinator:test" -u) == 10001 ]] ||
  fail "the coordinator image does not run as the rmgen user"
"${RUN[@]}" --rm --entrypoint sh localhost/rmgen-worker:test -c \
  'command -v mpirun && rmgen-train --help > /dev/null 2>&1; rmgen-worker --help 2>&1 | grep -q usage' \
  > /dev/null || fail "the worker image lacks mpirun, rmgen-train or rmgen-worker"
"${RUN[@]}" --rm --entrypoint sh localhost/rmgen-worker:test -c 'command -v g++ cmake' &&
  fail "the worker runtime image carries the compiler"

# 3. A coordinator and two workers (host network, loopback), the folders shared like volumes.
port=$((20000 + RANDOM % 20000))
hport=$((port + 1))
mkdir -p "$work"/{state,shared,agent-1,agent-2,secrets}
for role in submitter operator worker; do
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/secrets/$role-token"
done
cat > "$work/secrets/tokens.yaml" << YAML
tokens:
  - {token: $(cat "$work/secrets/submitter-token"), user: researcher, role: submitter}
  - {token: $(cat "$work/secrets/operator-token"), user: operator, role: operator}
  - {token: $(cat "$work/secrets/worker-token"), user: workers, role: worker}
YAML
cp "$work/secrets/operator-token" "$work/secrets/rmgen-token"  # the health check's
chown -R 10001:10001 "$work"/{state,shared,agent-1,agent-2}
chmod 755 "$work/secrets" && chmod 644 "$work"/secrets/*
log "synthetic suite into the shared folder"
"${RUN[@]}" --rm -v "$work/shared:/srv/rmgen" --entrypoint rmgen localhost/rmgen-worker:test \
  data synth --out /srv/rmgen/synth > "$work/synth.log" 2>&1 || { cat "$work/synth.log"; fail "synth"; }
names+=("$TAG-coordinator")
"${RUN[@]}" -d --name "$TAG-coordinator" --network host -e RMGEN_COORDINATOR="127.0.0.1:$port" \
  -v "$work/state:/var/lib/rmgen" \
  -v "$work/shared:/srv/rmgen" -v "$work/secrets:/run/secrets:ro" \
  localhost/rmgen-coordinator:test --listen "127.0.0.1:$port" --data-dir /var/lib/rmgen \
  --tokens /run/secrets/tokens.yaml --output-root /srv/rmgen/jobs \
  --http "127.0.0.1:$hport" > /dev/null
for i in 1 2; do
  names+=("$TAG-worker-$i")
  "${RUN[@]}" -d --name "$TAG-worker-$i" --network host --shm-size 1g \
    -v "$work/shared:/srv/rmgen" -v "$work/agent-$i:/var/lib/rmgen-agent" \
    -v "$work/secrets:/run/secrets:ro" localhost/rmgen-worker:test \
    --coordinator "127.0.0.1:$port" --token-file /run/secrets/worker-token --id "ct-worker-$i" \
    --slots 2 --state-dir /var/lib/rmgen-agent --workdir /srv/rmgen \
    --train-bin /usr/local/bin/rmgen-train > /dev/null
done
export RMGEN_COORDINATOR="127.0.0.1:$port" RMGEN_TOKEN_FILE="$work/secrets/submitter-token"
for _ in $(seq 150); do
  n=$(RMGEN_TOKEN_FILE="$work/secrets/operator-token" "$rmgen" workers 2> /dev/null |
    grep -c "ct-worker-" || true)
  [[ $n -eq 2 ]] && break
  sleep 0.2
done
[[ $n -eq 2 ]] || fail "the two worker containers did not register"
# The image's health check command, run in the container (buildah's default OCI format does
# not carry HEALTHCHECK; `--format docker` and Docker builds do).
podman exec "$TAG-coordinator" sh -c 'rmgen status > /dev/null' ||
  fail "the coordinator's health check fails"
# Its HTTP port: the dashboard page, and /metrics for the operator only.
python3 - "$hport" "$work/secrets/operator-token" << 'PY' || fail "the coordinator's HTTP port"
import sys, urllib.request, urllib.error
base = f"http://127.0.0.1:{sys.argv[1]}"
assert b"<title>rmgen</title>" in urllib.request.urlopen(base + "/", timeout=10).read()
try:
    urllib.request.urlopen(base + "/metrics", timeout=10)
    raise SystemExit("/metrics answered without a token")
except urllib.error.HTTPError as e:
    assert e.code == 401, e.code
token = open(sys.argv[2]).read().strip()
req = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer " + token})
assert b"rmgen_workers{state=\"alive\"} 2" in urllib.request.urlopen(req, timeout=10).read()
print("container_test: HTTP dashboard and metrics served")
PY

# 4. The demo study, submitted from outside; every job succeeds; the table has both methods.
log "demo study through the containers"
t0=$SECONDS
timeout 1200 "$rmgen" submit "$SRC/configs/studies/demo.yaml" --watch > "$work/watch.log" 2>&1 ||
  { tail -20 "$work/watch.log"; fail "the demo study did not succeed"; }
log "demo study done in $((SECONDS - t0)) s"
study=s1  # the first study of a fresh store
"$rmgen" results "$study" --format json > "$work/results.json" || fail "no results"
"$rmgen" results "$study" --format table | tee "$work/results.txt"
python3 - "$work/results.json" << 'PY' || fail "unexpected results"
import json, sys
r = json.load(open(sys.argv[1]))
rows = {row["method"]: row for row in r["rows"]}
assert set(rows) == {"exrm", "dpo"}, rows.keys()
for m, row in rows.items():
    assert len(row["per_seed"]) == 3, (m, row["per_seed"])
    assert 0.0 <= row["id"]["mean"] <= 1.0 and 0.0 <= row["ood"]["mean"] <= 1.0, row
print("container_test: ID accuracy", {m: round(row["id"]["mean"], 4) for m, row in rows.items()})
PY
# Both workers ran jobs, as the non-root user, in the shared folder.
for i in 1 2; do
  # A here-string, not a pipe: `grep -q` exits at the first match, and under pipefail the
  # writer's SIGPIPE would fail the check.
  grep -q "attempt 1 succeeded" <<< "$(podman logs "$TAG-worker-$i" 2>&1)" || fail "worker $i ran no job"
done
[[ $(stat -c %u "$work/shared/jobs") == 10001 ]] || fail "job folders not owned by the rmgen user"
log "PASSED"
