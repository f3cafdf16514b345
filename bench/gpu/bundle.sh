#!/usr/bin/env bash
# Makes bench/gpu/sysroot: the Debian 12 packages rmgen builds against, other than CUDA,
# NCCL and libtorch, extracted (not installed) so they can travel to a GPU machine that has
# only those. bench/gpu/run.sh picks the folder up.
#   bench/gpu/bundle.sh [SYSROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
SYSROOT=${1:-bench/gpu/sysroot}
PKGS=(libyaml-cpp-dev libyaml-cpp0.7 libsentencepiece-dev libsentencepiece0 nlohmann-json3-dev
  libgtest-dev libgmock-dev libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libhwloc15
  libhwloc-dev libevent-2.1-7 libevent-core-2.1-7 libevent-pthreads-2.1-7 libpmix2 libpmix-dev
  libfabric1 libucx0 libpsm2-2 libpsm-infinipath1 librdmacm1 libibverbs1 libnl-3-200
  libnl-route-3-200 libmunge2 libxnvctrl0 zlib1g-dev)
DEBS=$(mktemp -d)
trap 'rm -rf "$DEBS"' EXIT
(cd "$DEBS" && apt-get download "${PKGS[@]}" >/dev/null)
rm -rf "$SYSROOT"
mkdir -p "$SYSROOT"
for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$SYSROOT"; done
# Debian's absolute symlinks (for example libmpi.so) must point inside the sysroot.
find "$SYSROOT" -type l | while read -r l; do
  t=$(readlink "$l")
  if [[ $t == /* ]]; then ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$SYSROOT$t")" "$l"; fi
done
# The synthetic suite for the GPU runs (the rank-only build there has no `rmgen`).
BUILD=${BUILD:-build}
if [[ -x $BUILD/client/rmgen ]]; then
  rm -rf bench/gpu/data
  "$BUILD/client/rmgen" data synth --out bench/gpu/data --seed 0 --train 512 --validation 32 \
    --shifted 32 --lengths ultrafeedback >/dev/null 2>&1
  rm -f bench/gpu/data/corpus.txt*
fi
du -sh "$SYSROOT" bench/gpu/data
