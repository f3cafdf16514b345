#!/bin/bash
# ctest -L python: installs client/python with pip (stubs generated from proto/ at build
# time) into a temporary folder and runs its pytest suite against a real rmgen-coordinator
# and agent from BUILD_DIR. The dashboard's screenshots go to BUILD_DIR/screenshots. The Python is BUILD_DIR/pyenv (scripts/setup.sh: Debian's
# python3 with its packages, plus pyarrow from PyPI), else Debian's /usr/bin/python3.
#   tests/python/run_pytest.sh BUILD_DIR [PYTEST ARGS...]
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: run_pytest.sh BUILD_DIR [PYTEST ARGS...]}")
shift
python=/usr/bin/python3
[ -x "$build/pyenv/bin/python" ] && python="$build/pyenv/bin/python"
[ -x "$python" ] || python=$(command -v python3)
work=$(mktemp -d /tmp/rmgen-pytest.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A copy, so the build leaves nothing in the source tree.
cp -r "$src/client/python" "$work/src"
rm -rf "$work/src/build" "$work/src/"*.egg-info
RMGEN_PROTO_DIR="$src/proto" "$python" -m pip install --quiet --no-deps --no-build-isolation \
  --disable-pip-version-check --no-cache-dir --target "$work/site" "$work/src" ||
  { echo "run_pytest: pip could not install client/python" >&2; exit 1; }
cd "$work"
# The dashboard test's screenshots stay in the build folder, to be looked at.
export RMGEN_SCREENSHOT_DIR="${RMGEN_SCREENSHOT_DIR:-$build/screenshots}"
export PYTHONPATH="$work/site" RMGEN_BUILD_DIR="$build" RMGEN_SOURCE_DIR="$src" MPLBACKEND=Agg
exec "$python" -m pytest -p no:cacheprovider -q -rs "$work/src/tests" "$@"
