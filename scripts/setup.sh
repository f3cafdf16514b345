#!/usr/bin/env bash
# Installs every dependency of rmgen from Debian 12 (idempotent), then configures and
# builds Release into build/. Run as root on a fresh machine, or as a user with sudo.
#   scripts/setup.sh [--deps-only] [--containers]
# --containers: also podman, buildah, debootstrap and runc, for `ctest -L container` (the
# images in docker/ built and run; that test is skipped without them).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config ccache git ca-certificates openssl clang-format python3
  libtorch-dev libopenblas0-openmp          # libtorch on CPU; without OpenBLAS it is ~20x slower
  libopenmpi-dev openmpi-bin                # data-parallel ranks
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libyaml-cpp-dev libsentencepiece-dev nlohmann-json3-dev libsqlite3-dev
  libgtest-dev libgmock-dev libcpp-httplib-dev zlib1g-dev
  clang libclang-rt-14-dev                  # libFuzzer targets (scripts/run_fuzz.sh)
  munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins  # ctest -L slurm (localhost)
  iproute2 util-linux                       # ctest -L multinode: network namespaces as nodes
  # ctest -L python: the Python client (client/python), its reports and the Parquet export;
  # the dashboard in a real Chromium (selenium); /metrics checked by promtool and a parser
  python3-venv python3-pip python3-setuptools python3-wheel python3-grpcio python3-protobuf
  python3-pandas python3-yaml python3-matplotlib python3-pytest python3-prometheus-client
  python3-selenium chromium chromium-driver prometheus fonts-dejavu-core
)

DEPS_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --deps-only) DEPS_ONLY=1 ;;
    --containers) PACKAGES+=(podman buildah debootstrap runc uidmap fuse-overlayfs) ;;
    *) echo "setup: unknown option $arg (--deps-only, --containers)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

# libtorch must use OpenBLAS (OpenMP build), not the reference BLAS.
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 || true)
case "$blas" in
  *openblas*) ;;
  *) $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu \
       /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 ;;
esac

if [ "$DEPS_ONLY" = 1 ]; then exit 0; fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo "setup: built into build/"

# build/pyenv: Debian's python3 with its packages (above), plus pyarrow from PyPI (not in
# Debian 12) for `python -m rmgen.data export`; and the rmgen Python package itself. The
# pyarrow pin keeps NumPy 1.x, which Debian's pandas is built against.
if [ ! -x build/pyenv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages build/pyenv
fi
if ! build/pyenv/bin/python -c 'import pyarrow.parquet' 2> /dev/null; then
  build/pyenv/bin/pip install --quiet --disable-pip-version-check 'pyarrow>=14,<19' ||
    echo "setup: WARNING: pyarrow did not install (no PyPI?): the Parquet export test is skipped"
fi
build/pyenv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  ./client/python && rm -rf client/python/build client/python/*.egg-info
echo "setup: build/pyenv has the rmgen Python package (build/pyenv/bin/python -m rmgen.report)"
