#!/usr/bin/env bash
# hpcrun's launcher: runs ON the machine that trains (this machine, a compute node, a pod).
# It works out the torchrun arguments for where it runs, then execs torchrun:
#   nodes         HPCRUN_NNODES, else SLURM_JOB_NUM_NODES / SLURM_NNODES, else PBS_NODEFILE, else 1
#   node rank     SLURM_NODEID, else the position of this host in PBS_NODEFILE, else 0
#   rendezvous    first host of SLURM_JOB_NODELIST (scontrol show hostnames, then its NodeAddr)
#                 or of PBS_NODEFILE; HPCRUN_RDZV_HOST overrides; port HPCRUN_RDZV_PORT or one
#                 derived from the job id
#   processes     HPCRUN_NPROC if a number; else visible GPUs; else the CPUs/tasks given
#                 (SLURM_NTASKS_PER_NODE, SLURM_CPUS_PER_TASK, HPCRUN_CPUS); else 1
# Usage: torchrun.sh [--launcher=python] PROGRAM...
#   PROGRAM is what torchrun runs in each process: `-m hpcrun.train --config ...` (hpcrun's
#   trainer) or `-m hpcrun.rank ...` (your own script, module or command). --launcher=python
#   runs it once per node with plain python instead (frameworks that start their own workers),
#   with MASTER_ADDR, MASTER_PORT, NODE_RANK and NNODES set.
# Beside it, `python -m hpcrun.sampler` writes system.csv in HPCRUN_RUN_ROOT every
# HPCRUN_SYSTEM_INTERVAL seconds (default 10; 0 turns it off) until the launch ends.
set -euo pipefail
# the job's working folder (a mirror of its code snapshot); pbsdsh starts elsewhere
if [[ -n ${HPCRUN_WORK_DIR-} ]]; then cd "$HPCRUN_WORK_DIR"; fi

python_bin=${HPCRUN_PYTHON:-python3}
launcher=torchrun
if [[ ${1-} == --launcher=* ]]; then
  launcher=${1#--launcher=}
  shift
fi

count_gpus() {
  if [[ -n ${CUDA_VISIBLE_DEVICES-} ]]; then
    if [[ $CUDA_VISIBLE_DEVICES == "" || $CUDA_VISIBLE_DEVICES == "-1" ]]; then
      echo 0
    else
      local IFS=,
      # shellcheck disable=SC2086
      set -- $CUDA_VISIBLE_DEVICES
      echo $#
    fi
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

first_word() { printf '%s\n' "${1%%[ ,(]*}"; }

nnodes=${HPCRUN_NNODES:-}
node_rank=0
rdzv_host=${HPCRUN_RDZV_HOST:-}
job_id=${SLURM_JOB_ID:-${PBS_JOBID:-${HPCRUN_JOB_ID:-local}}}

if [[ -n ${SLURM_JOB_ID-} ]]; then
  nnodes=${nnodes:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}
  node_rank=${SLURM_NODEID:-0}
  if [[ -z $rdzv_host && -n ${SLURM_JOB_NODELIST-} ]]; then
    first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n 1 || true)
    # the node's address as SLURM knows it (node names need not resolve)
    addr=$(scontrol show node -o "$first" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2 || true)
    rdzv_host=${addr:-$first}
  fi
elif [[ -n ${PBS_NODEFILE-} && -r ${PBS_NODEFILE-} ]]; then
  mapfile -t pbs_hosts < <(awk '!seen[$0]++' "$PBS_NODEFILE")
  nnodes=${nnodes:-${#pbs_hosts[@]}}
  [[ -n $rdzv_host ]] || rdzv_host=${pbs_hosts[0]}
  this_host=$(hostname)
  for i in "${!pbs_hosts[@]}"; do
    [[ ${pbs_hosts[$i]} == "$this_host" || ${pbs_hosts[$i]} == "${this_host%%.*}" ]] && node_rank=$i
  done
fi
nnodes=${nnodes:-1}

nproc=${HPCRUN_NPROC:-auto}
if ! [[ $nproc =~ ^[0-9]+$ ]]; then
  gpus=$(count_gpus)
  if [[ $gpus -gt 0 ]]; then
    nproc=$gpus
  elif [[ -n ${SLURM_NTASKS_PER_NODE-} ]]; then
    nproc=$(first_word "$SLURM_NTASKS_PER_NODE")
  elif [[ -n ${SLURM_CPUS_PER_TASK-} ]]; then
    nproc=$SLURM_CPUS_PER_TASK
  elif [[ -n ${HPCRUN_CPUS-} ]]; then
    nproc=$HPCRUN_CPUS
  else
    nproc=1
  fi
fi

digits=${job_id//[^0-9]/}
port=${HPCRUN_RDZV_PORT:-$((29500 + ${digits:-0} % 2000))}

if [[ -n ${HPCRUN_RUN_ROOT-} && ${HPCRUN_SYSTEM_INTERVAL:-10} != 0 ]]; then
  # watches this process (torchrun or python after the exec below) and ends with it
  "$python_bin" -m hpcrun.sampler --run-dir "$HPCRUN_RUN_ROOT" --watch $$ \
    --interval "${HPCRUN_SYSTEM_INTERVAL:-10}" </dev/null >/dev/null 2>&1 &
fi

if [[ $launcher == python ]]; then
  export NODE_RANK=$node_rank NNODES=$nnodes MASTER_ADDR=${rdzv_host:-127.0.0.1} \
         MASTER_PORT=$port HPCRUN_NODE_RANK=$node_rank
  echo "hpcrun launcher: host=$(hostname) nnodes=$nnodes node_rank=$node_rank python" >&2
  exec "$python_bin" "$@"
fi

args=(-m torch.distributed.run --nproc_per_node="$nproc")
if [[ $nnodes -gt 1 ]]; then
  # torchrun sets OMP_NUM_THREADS=1 only for several processes per node; agents of one
  # process each would otherwise oversubscribe the cores of a shared host
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  if [[ -z $rdzv_host ]]; then
    echo "hpcrun launcher: $nnodes nodes but no rendezvous host (set HPCRUN_RDZV_HOST)" >&2
    exit 2
  fi
  args+=(--nnodes="$nnodes" --node_rank="$node_rank" --rdzv_backend=c10d
         --rdzv_endpoint="$rdzv_host:$port" --rdzv_id="hpcrun-$job_id"
         --rdzv_conf="timeout=${HPCRUN_RDZV_TIMEOUT:-900}")
else
  args+=(--standalone)
fi

echo "hpcrun launcher: host=$(hostname) nnodes=$nnodes node_rank=$node_rank nproc=$nproc" \
     "rdzv=${rdzv_host:-standalone}" >&2
exec "$python_bin" "${args[@]}" "$@"
