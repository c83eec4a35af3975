#!/usr/bin/env bash
# Start a real SLURM cluster on this machine for tests and demos: munge, slurmctld and one or
# more slurmd "nodes", every file (config, state, spool, logs, pids, munge key and socket)
# under one state directory. /etc and the system's services are left alone. Idempotent:
# running it again reuses what is already up. Prints the environment to use.
#
#   hpc/slurm/up.sh                 # 2 nodes (n1, n2) in partition "debug"
#   HPCRUN_SLURM_NODES=1 hpc/slurm/up.sh
#   eval "$(hpc/slurm/up.sh --env)" # only the export lines, for a shell
#   hpc/slurm/up.sh --accounting    # also slurmdbd + MariaDB, so `sacct` answers for real
#
# State directory: $HPCRUN_SLURM_DIR (default /tmp/hpcrun-slurm). Running it again with a
# different mode restarts the SLURM daemons with the new configuration (jobs are kept).
set -euo pipefail

state=${HPCRUN_SLURM_DIR:-/tmp/hpcrun-slurm}
nodes=${HPCRUN_SLURM_NODES:-2}
cpus=${HPCRUN_SLURM_CPUS:-2}
mem=${HPCRUN_SLURM_MEM_MB:-4000}
env_only=0
accounting=${HPCRUN_SLURM_ACCOUNTING:-0}
for arg in "$@"; do
  case $arg in
    --env) env_only=1 ;;
    --accounting) accounting=1 ;;
    *) echo "hpc/slurm/up.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { [[ $env_only == 1 ]] || echo "hpc/slurm: $*" >&2; }

install_missing() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  if [[ $accounting == 1 ]]; then
    command -v slurmdbd >/dev/null 2>&1 || missing+=(slurmdbd slurm-wlm-mysql-plugin)
    command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server-core mariadb-client-core)
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing ${missing[*]} (apt)"
    if [[ $(id -u) -ne 0 ]]; then
      echo "hpc/slurm: need root to apt-get install ${missing[*]}" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends \
           "${missing[@]}" >/dev/null; }
  fi
}

running() { # pidfile -> true if that process is alive
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Daemons must not inherit our descriptors (a held lock fd made a second start hang; a held
# stdout pipe keeps a caller reading our output waiting forever).
close_fds() {
  for fd in "/proc/$BASHPID/fd"/*; do
    fd=${fd##*/}
    [[ $fd -gt 2 ]] && eval "exec $fd>&-" 2>/dev/null
  done
  return 0
}
start_daemon() {     # a program that daemonizes itself
  ( close_fds; exec "$@" </dev/null >>"$state/log/daemons.out" 2>&1 ) || true
}
start_background() { # a program that stays in the foreground: one fork, then exec
  ( close_fds; exec "$@" </dev/null >>"$state/log/daemons.out" 2>&1 ) &
}

install_missing
mkdir -p "$state"/{etc,log,run,ctld,spool,munge/socket}
chmod 0711 "$state/munge/socket"
host=$(hostname -s)

# -- munge -------------------------------------------------------------------------------
key=$state/munge/munge.key
if [[ ! -s $key ]]; then
  mungekey -c -k "$key" >/dev/null 2>&1 || dd if=/dev/urandom of="$key" bs=1024 count=1 2>/dev/null
  chmod 0400 "$key"
fi
socket=$state/munge/socket/munge.socket.2
if ! running "$state/run/munged.pid"; then
  say "starting munged"
  rm -f "$socket" "$socket.lock"
  # every sbatch, squeue and slurmd RPC asks munged for a credential: with its default two
  # threads a burst of 50 submits timed out in munged, which closed the socket under sbatch
  # (killed by SIGPIPE with nothing queued or said)
  start_daemon munged --key-file="$key" --socket="$socket" --num-threads=16 \
    --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" \
    --seed-file="$state/munge/munged.seed" --force
fi

# -- accounting: MariaDB + slurmdbd (only with --accounting) ----------------------------------
accounting_lines="AccountingStorageType=accounting_storage/none"
min_job_age=3600
if [[ $accounting == 1 ]]; then
  mkdir -p "$state/mysql/data" "$state/mysql/run"
  dbsock=$state/mysql/run/mysql.sock
  if [[ ! -d $state/mysql/data/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$state/mysql/data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$state/log/mariadb-install.log" 2>&1
  fi
  if ! running "$state/mysql/run/mysql.pid"; then
    say "starting mariadbd"
    start_background /usr/sbin/mariadbd --no-defaults --datadir="$state/mysql/data" \
      --socket="$dbsock" --pid-file="$state/mysql/run/mysql.pid" --port=6838 \
      --bind-address=127.0.0.1 --user=root --log-error="$state/log/mariadb.log"
    for _ in $(seq 1 100); do [[ -S $dbsock ]] && break; sleep 0.1; done
  fi
  mariadb --no-defaults -S "$dbsock" -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; \
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'hpcrun-sandbox'; \
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  dbd=$state/etc/slurmdbd.conf
  cat >"$dbd" <<DBD
AuthType=auth/munge
AuthInfo=socket=$socket
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=6839
SlurmUser=root
PidFile=$state/run/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=6838
StorageUser=slurm
StoragePass=hpcrun-sandbox
StorageLoc=slurm_acct_db
DBD
  chmod 0600 "$dbd"
  if ! running "$state/run/slurmdbd.pid"; then
    say "starting slurmdbd"
    SLURM_CONF=$state/etc/slurm.conf start_daemon slurmdbd
    for _ in $(seq 1 100); do
      (exec 3<>/dev/tcp/127.0.0.1/6839) 2>/dev/null && break
      sleep 0.1
    done
  fi
  accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6839
AccountingStoragePass=$socket
JobAcctGatherType=jobacct_gather/none"
  min_job_age=10  # finished jobs leave squeue quickly: status must come from sacct
fi

# -- slurm.conf ----------------------------------------------------------------------------
conf=$state/etc/slurm.conf
node_lines=""
for i in $(seq 1 "$nodes"); do
  node_lines+="NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((6830 + i))"
  node_lines+=" CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem"
  node_lines+=" State=UNKNOWN"$'\n'
done
cat >"$conf.new" <<CONF
# Generated by hpc/slurm/up.sh: a $nodes-node SLURM cluster on $host (loopback only).
ClusterName=hpcrun
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6829
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=10
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd-%n.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerNode=500
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=200
MinJobAge=$min_job_age
MaxArraySize=1001
KillWait=10
JobRequeue=1
MessageTimeout=10
JobCompType=jobcomp/filetxt
JobCompLoc=$state/log/jobcomp.txt
${accounting_lines}
${node_lines}PartitionName=debug Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
if [[ -f $conf ]] && cmp -s "$conf" "$conf.new"; then
  rm -f "$conf.new"
else
  mv "$conf.new" "$conf"
  changed=1
fi
export SLURM_CONF=$conf

# -- daemons ---------------------------------------------------------------------------
# A cold start (no daemon of the cluster alive: after down.sh, a reboot, or a machine whose
# processes were ended) begins with an empty queue: jobs recovered from the saved state have
# lost their processes, and their nodes would stay COMPLETING until SLURM gives up on them.
# A controller restarted under running slurmd's keeps its jobs.
cold=1
for pidfile in "$state/run/slurmctld.pid" "$state"/run/slurmd-*.pid; do
  running "$pidfile" && cold=0
done
clear_state=()
[[ $cold == 1 ]] && clear_state=(-c)
if [[ $accounting == 1 ]]; then
  sacctmgr -i add cluster hpcrun >/dev/null 2>&1 || true
fi
if running "$state/run/slurmctld.pid" && [[ ${changed:-0} == 1 ]]; then
  say "configuration changed: restarting the SLURM daemons (jobs are kept)"
  for pidfile in "$state"/run/slurmd-*.pid "$state/run/slurmctld.pid"; do
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
fi
if ! running "$state/run/slurmctld.pid"; then
  say "starting slurmctld${clear_state:+ (cold start: empty queue)}"
  start_daemon slurmctld "${clear_state[@]}" -f "$conf"
fi
for i in $(seq 1 "$nodes"); do
  if ! running "$state/run/slurmd-n$i.pid"; then
    say "starting slurmd n$i"
    start_daemon slurmd -N "n$i" -f "$conf"
  fi
done

# -- wait until the nodes take jobs --------------------------------------------------------
for _ in $(seq 1 300); do
  idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)' || true)
  [[ $idle -ge $nodes ]] && break
  sleep 0.2
done
if [[ ${idle:-0} -lt $nodes ]]; then
  for i in $(seq 1 "$nodes"); do scontrol update NodeName="n$i" State=RESUME >/dev/null 2>&1 || true; done
  sleep 1
  idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)' || true)
  if [[ $idle -lt $nodes ]]; then
    echo "hpc/slurm: nodes did not come up; see $state/log/" >&2
    sinfo -N >&2 || true
    exit 1
  fi
fi
say "up: $nodes node(s) in partition debug"
echo "export SLURM_CONF=$conf"
echo "export HPCRUN_SLURM_DIR=$state"
