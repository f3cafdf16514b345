#!/bin/sh
# Writes random tokens for docker/compose.yaml into docker/secrets/ (once; kept if present):
# tokens.yaml for the coordinator, and one file per role for the clients and workers.
set -eu
dir="$(dirname "$0")/secrets"
[ -f "$dir/tokens.yaml" ] && { echo "docker/secrets: already there"; exit 0; }
mkdir -p "$dir"
umask 077
for role in submitter operator worker; do
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/$role-token"
done
{
  echo "tokens:"
  echo "  - {token: $(cat "$dir/submitter-token"), user: researcher, role: submitter}"
  echo "  - {token: $(cat "$dir/operator-token"), user: operator, role: operator}"
  echo "  - {token: $(cat "$dir/worker-token"), user: workers, role: worker}"
} > "$dir/tokens.yaml"
chmod 644 "$dir"/*   # read inside the containers by their non-root user
echo "docker/secrets: tokens written"
