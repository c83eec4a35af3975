#!/usr/bin/env bash
# Send a signal to the trainer processes of a run that live on THIS host.
#   signal-trainer.sh RUN_DIR [SIGNAL]      (default SIGNAL: USR1)
# Each rank records "HOST PID" in RUN_DIR/logs/rank<N>.pid. Signalling any one rank is
# enough: the ranks agree on a stop through a collective, so all of them stop together.
# A pid file is data: only a positive pid of a process whose environment names this run
# (HPCRUN_RUN_ROOT=RUN_DIR, as the job script exports it) is signalled, never 0, -1 (every
# process of the user), a process group or an unrelated process that reused the pid.
set -u
run_dir=${1:?usage: signal-trainer.sh RUN_DIR [SIGNAL]}
sig=${2:-USR1}
host=$(hostname)
sent=0
belongs() {
  [[ -r /proc/$1/environ ]] && tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null \
    | grep -qxF "HPCRUN_RUN_ROOT=$run_dir"
}
for file in "$run_dir"/logs/rank*.pid; do
  [[ -r $file ]] || continue
  read -r rank_host pid <"$file" || continue
  [[ $pid =~ ^[1-9][0-9]{0,9}$ ]] || continue
  if [[ $rank_host == "$host" || $rank_host == "${host%%.*}" ]] && kill -0 "$pid" 2>/dev/null \
      && belongs "$pid"; then
    kill -s "$sig" "$pid" 2>/dev/null && sent=$((sent + 1))
  fi
done
echo "hpcrun: sent SIG$sig to $sent trainer process(es) on $host" >&2
