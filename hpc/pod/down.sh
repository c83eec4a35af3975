#!/usr/bin/env bash
# Stop the sshd started by hpc/pod/up.sh (by its pid file). --purge removes the state too.
set -euo pipefail
state=${HPCRUN_POD_DIR:-/tmp/hpcrun-pod}
pidfile=$state/run/sshd.pid
if [[ -s $pidfile ]]; then
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
fi
[[ ${1-} == "--purge" ]] && rm -rf "$state"
echo "hpc/pod: down" >&2
