#!/usr/bin/env bash
# hpcrun job <JOB_ID> (v3), rendered for the local backend.
# Runs detached in its own session; writes its pid to job.pid and its exit code to job.exit.
set -u
printf '%s\n' "$$" > <RUN_DIR>/job.pid.tmp && mv <RUN_DIR>/job.pid.tmp <RUN_DIR>/job.pid
cd <BUNDLE> || exit 1
export PYTHONPATH=<BUNDLE>/src:<BUNDLE>${PYTHONPATH:+:$PYTHONPATH}
export HPCRUN_BACKEND=local
export HPCRUN_BUNDLE_HASH=<HASH>
export HPCRUN_CPUS=2
export HPCRUN_DATA_DIR=<PROJECT>
export HPCRUN_EXPERIMENT=v3
export HPCRUN_GIT_COMMIT=<GIT>
export HPCRUN_GIT_DIRTY=<GIT>
export HPCRUN_JOB_ID=<JOB_ID>
export HPCRUN_NPROC=auto
export HPCRUN_PYTHON=<PYTHON>
export HPCRUN_RUN_ROOT=<RUN_DIR>
export HPCRUN_SYSTEM_INTERVAL=10
# the job works in its run's work/ (a mirror of the snapshot): what it writes stays there
work=$("$HPCRUN_PYTHON" -m hpcrun.snapshots <BUNDLE> "$HPCRUN_RUN_ROOT") && cd "$work" || exit 1
export HPCRUN_WORK_DIR=$work
<LAUNCHERS>/torchrun.sh -m hpcrun.train --config <RUN_DIR>/config.yaml --stage all --run-dir <RUN_DIR>
code=$?
printf '%s\n' "$code" > <RUN_DIR>/job.exit.tmp && mv <RUN_DIR>/job.exit.tmp <RUN_DIR>/job.exit
exit "$code"
