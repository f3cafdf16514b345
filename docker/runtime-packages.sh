#!/bin/sh
# Prints the Debian packages (as name=version, the versions the build stage linked against)
# that own the shared libraries the given binaries load, plus any extra package names given
# after "--" (pinned the same way). The runtime stage installs exactly this list.
#   docker/runtime-packages.sh BIN... [-- PKG...]
set -eu
bins=""
extra=""
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; extra="$*"; break; fi
  bins="$bins $1"
  shift
done
{
  # shellcheck disable=SC2086
  ldd $bins | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
    dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true
  done | cut -d: -f1
  for p in $extra; do echo "$p"; done
} | sort -u | while read -r pkg; do
  dpkg-query -W -f='${Package}=${Version}\n' "$pkg"
done
