#!/bin/sh
# mpirun for the tests: N ranks on this machine, more ranks than cores allowed. OpenMPI
# refuses to run as root unless told to; clusters do not run as root, so the flag is only
# added here, when the tests run as root.
# usage: tests/mpi/mpirun.sh N PROGRAM [ARGS...]
set -eu
n=$1
shift
extra=""
if [ "$(id -u)" = 0 ]; then extra="--allow-run-as-root"; fi
exec mpirun $extra --oversubscribe --bind-to none -np "$n" "$@"
