#!/usr/bin/env bash
# Stop the SLURM sandbox started by up.sh: only the daemons whose pid files it wrote.
#   hpc/slurm/down.sh [--purge]     # --purge also removes the state directory
set -euo pipefail
state=${HPCRUN_SLURM_DIR:-/tmp/hpcrun-slurm}
stop() {
  local pidfile=$1 pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
for pidfile in "$state"/run/slurmd-*.pid; do stop "$pidfile"; done
stop "$state/run/slurmctld.pid"
stop "$state/run/slurmdbd.pid"
stop "$state/mysql/run/mysql.pid"
stop "$state/run/munged.pid"
if [[ ${1-} == "--purge" ]]; then
  rm -rf "$state"
fi
echo "hpc/slurm: down" >&2
