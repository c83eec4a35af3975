"""SLURM output parsers and the state table, against output captured from slurm 22.05."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcrun.backends.slurm import (
    STATE_TABLE,
    SlurmBackend,
    controller_trouble,
    parse_jobcomp,
    parse_sacct,
    parse_scontrol,
    parse_squeue,
    preflight_error,
)
from hpcrun.job import JobRecord

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_squeue_expands_pending_array_ranges_and_keeps_reasons():
    states = parse_squeue(text("squeue.txt"))
    assert states["25"].reason == "DependencyNeverSatisfied"
    assert states["22"].reason is None
    assert {k for k in states if k.startswith("30_")} == {"30_0", "30_1", "30_2", "30_3"}
    assert states["30_3"].state == "PENDING" and states["30_0"].state == "RUNNING"


def test_sacct_exit_codes_and_states():
    states = parse_sacct(text("sacct.txt"))
    assert states["41"].state == "FAILED" and states["41"].exit_code == 3
    assert states["42"].state == "CANCELLED" and states["42"].exit_code == 128 + 15
    assert states["43_1"].state == "OUT_OF_MEMORY"


def test_scontrol_maps_array_tasks_to_their_array_ids():
    states = parse_scontrol(text("scontrol.txt"))
    assert states["22"].exit_code == 2 and states["22"].reason == "NonZeroExitCode"
    assert states["50_1"].state == "COMPLETED"


def test_jobcomp_lines():
    states = parse_jobcomp(text("jobcomp.txt"))
    assert states["2"].state == "COMPLETED" and states["2"].exit_code == 0
    assert states["3"].state == "FAILED" and states["3"].exit_code == 1


@pytest.mark.parametrize("native, ours", [
    ("PENDING", "PENDING"), ("RUNNING", "RUNNING"), ("COMPLETING", "RUNNING"),
    ("COMPLETED", "SUCCEEDED"), ("FAILED", "FAILED"), ("TIMEOUT", "FAILED"),
    ("OUT_OF_MEMORY", "FAILED"), ("NODE_FAIL", "FAILED"), ("CANCELLED", "CANCELLED"),
    ("PREEMPTED", "PREEMPTED"), ("REQUEUED", "PENDING"),
])
def test_state_table(native, ours):
    assert STATE_TABLE[native] == ours


@pytest.mark.parametrize("stderr, directive", [
    ("sbatch: error: Batch job submission failed: Invalid partition name specified",
     "partition"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
     "combination specified", "account"),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or "
     "exceeds some limit)", "time"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not "
     "available", "nodes/cpus_per_task"),
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "qos"),
])
def test_preflight_errors_name_the_directive(stderr, directive):
    message = preflight_error(stderr)
    assert f"slurm refused {directive}" in message and "\n" not in message


def record(native: dict[str, str], tmp_path) -> JobRecord:
    return JobRecord(id="abc", backend="slurm", host="h", experiment="v3",
                     run_dir=str(tmp_path), project_dir=str(tmp_path), info={"native": native})


def test_combined_state_reports_blocked_dependents(tmp_path):
    states = parse_squeue(text("squeue.txt"))
    states["24"] = parse_sacct("24|FAILED|1:0")["24"]
    status = SlurmBackend()._combine(record({"pretrain": "24", "finetune": "25", "eval": "26"},
                                          tmp_path), states)
    assert status.state == "FAILED"
    assert "stage pretrain failed (job 24, exit code 1)" in status.reason
    assert "finetune blocked by it" in status.reason
    assert status.detail["stages"]["finetune"] == "BLOCKED"


def test_combined_state_pending_with_reason_and_timeout_as_failure(tmp_path):
    states = parse_squeue(text("squeue.txt"))
    pending = SlurmBackend()._combine(record({"train": "30_3"}, tmp_path), states)
    assert pending.state == "PENDING" and pending.reason == "stage train: JobArrayTaskLimit"
    timeout = SlurmBackend()._combine(record({"train": "31"}, tmp_path), states)
    assert timeout.state == "FAILED" and "timeout" in timeout.reason


@pytest.mark.parametrize("stderr, trouble", [
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", False),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid", False),
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", True),
    ("sbatch: error: slurm_receive_msg: Zero Bytes were transmitted or received", True),
    ("sbatch: error: Unable to contact slurm controller (connect failure)", True),
    ("", True),
])
def test_a_silent_or_unreachable_controller_is_not_a_refusal(stderr, trouble):
    assert controller_trouble(stderr) is trouble


def test_squeue_wins_over_what_scontrol_says_of_an_arrays_other_tasks():
    """Asked about an array job squeue no longer lists, scontrol answers for every task: a
    task squeue shows COMPLETING (cancelled, processes still ending) stays running."""
    from hpcrun.shell import Result

    class Runner:
        def run(self, argv, **kwargs):
            out = {"squeue": "7_0|8|COMPLETING|None|(null)\n",
                   "scontrol": "JobId=8 ArrayJobId=7 ArrayTaskId=0 JobState=CANCELLED "
                               "ExitCode=0:15\nJobId=7 ArrayJobId=7 ArrayTaskId=1 "
                               "JobState=CANCELLED ExitCode=0:0\n"}.get(argv[0], "")
            return Result(list(argv), 0 if argv[0] != "sacct" else 1, out, "")

    states = SlurmBackend(runner=Runner())._query(["7", "7_0", "7_1"])
    assert states["7_0"].state == "COMPLETING" and states["7_1"].state == "CANCELLED"
