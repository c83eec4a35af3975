"""cancel: the local backend sends SIGTERM and SIGKILLs what is still alive after the grace
(also a worker in a session of its own); SLURM's cancel waits until squeue stops showing the
job COMPLETING, up to CANCEL_WAIT_S. Real processes for the local backend, squeue and scontrol
answered in memory for SLURM, its clock faked."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hpcrun import rundir
from hpcrun.backends import local as local_backend
from hpcrun.backends import slurm as slurm_backend
from hpcrun.backends.local import LocalBackend
from hpcrun.backends.slurm import SlurmBackend
from hpcrun.job import JobInfo, JobRecord
from hpcrun.shell import Result

# a process that writes READY once its SIGTERM disposition is set, then sleeps
STUBBORN = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").close()
time.sleep(60)
"""
POLITE = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1] + ".term", "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], "w").close()
time.sleep(60)
"""


def _wait_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start(tmp_path: Path, code: str, name: str) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / name
    proc = subprocess.Popen([sys.executable, "-c", code, str(ready)], start_new_session=True,
                            stdin=subprocess.DEVNULL)
    _wait_file(ready)
    return proc, ready


def test_a_process_ignoring_sigterm_is_killed_once_the_grace_is_over(tmp_path):
    proc, _ = _start(tmp_path, STUBBORN, "stubborn")
    try:
        began = time.monotonic()
        LocalBackend._stop_trees([psutil.Process(proc.pid)], grace=0.6)
        took = time.monotonic() - began
        assert _gone(proc.pid)
        assert took >= 0.6  # SIGTERM first (ignored), SIGKILL only after the grace
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_process_that_stops_on_sigterm_gets_no_sigkill_and_no_wait(tmp_path):
    proc, ready = _start(tmp_path, POLITE, "polite")
    try:
        began = time.monotonic()
        LocalBackend._stop_trees([psutil.Process(proc.pid)], grace=60.0)
        took = time.monotonic() - began
        assert _gone(proc.pid)
        assert Path(str(ready) + ".term").exists()  # its SIGTERM handler ran (a trainer saves)
        assert took < 30  # returned when the tree was gone, not at the end of the grace
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cancel_stops_a_job_and_a_worker_in_its_own_session_ignoring_sigterm(tmp_path,
                                                                             monkeypatch):
    """What ``hpcrun cancel`` does to a local job whose script started a worker in a new
    session (as torchrun does) that ignores SIGTERM: both are gone after the grace."""
    monkeypatch.setattr(LocalBackend, "_stop_trees", staticmethod(
        functools.partial(LocalBackend._stop_trees, grace=0.6)))
    run = tmp_path / "runs" / "exp" / "r1"
    run.mkdir(parents=True)
    worker = tmp_path / "worker.py"
    worker.write_text(STUBBORN)
    ready = tmp_path / "worker-ready"
    script = run / rundir.JOB_SCRIPT
    script.write_text(f"""#!/usr/bin/env bash
trap '' TERM
printf '%s\\n' "$$" > {run / rundir.JOB_PID}
setsid {sys.executable} {worker} {ready} &
echo "$!" > {tmp_path / 'worker.pid'}
wait
""")
    record = JobRecord(id="a" * 12, backend="local", host="h", experiment="exp",
                       run_dir=str(run), project_dir=str(tmp_path))
    backend = LocalBackend()
    backend.runner.spawn_detached(["bash", str(script)], cwd=str(run),
                                  output=str(run / rundir.JOB_OUTPUT))
    _wait_file(ready)
    _wait_file(run / rundir.JOB_PID)
    job_pid = int((run / rundir.JOB_PID).read_text())
    worker_pid = int((tmp_path / "worker.pid").read_text())
    try:
        assert os.getsid(worker_pid) != os.getsid(job_pid)  # outside the job's session
        after = backend.cancel([record])
        assert after[record.id].state == "CANCELLED"
        assert (run / local_backend.CANCEL_MARKER).exists()
        assert _gone(job_pid) and _gone(worker_pid)
    finally:
        for pid in (job_pid, worker_pid):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- SLURM


class Clock:
    """time for the SLURM backend: sleep advances monotonic instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now


class Controller:
    """squeue answers the next of ``after_cancel`` once scancel was called (an empty answer:
    the job has left the queue); scontrol then knows it CANCELLED; no accounting."""

    def __init__(self, after_cancel: list[str], before: str = "RUNNING"):
        self.after_cancel = list(after_cancel)
        self.before = before
        self.cancelled = False
        self.calls: list[list[str]] = []
        self.squeue_after_cancel = 0

    def run(self, argv, **kwargs):
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "scancel":
            self.cancelled = True
            return Result(tuple(argv), 0, "", "")
        if argv[0] == "squeue":
            if not self.cancelled:
                state = self.before
            else:
                self.squeue_after_cancel += 1
                state = self.after_cancel.pop(0) if self.after_cancel else ""
            return Result(tuple(argv), 0, f"7|7|{state}|None|(null)\n" if state else "", "")
        if argv[0] == "sacct":
            return Result(tuple(argv), 1, "", "Slurm accounting storage is disabled")
        if argv[:3] == ["scontrol", "show", "job"]:
            return Result(tuple(argv), 0,
                          "JobId=7 JobName=x JobState=CANCELLED Reason=None ExitCode=0:15\n", "")
        return Result(tuple(argv), 0, "", "")


def _slurm_record(tmp_path) -> JobRecord:
    return JobRecord(id="b" * 12, backend="slurm", host="h", experiment="exp",
                     run_dir=str(tmp_path / "run"), project_dir=str(tmp_path),
                     native_id="7", info=JobInfo(native={"all": "7"}))


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(slurm_backend, "time", fake)
    return fake


def test_slurm_cancel_waits_while_the_job_is_completing(tmp_path, clock):
    controller = Controller(["COMPLETING"] * 4)
    record = _slurm_record(tmp_path)
    after = SlurmBackend(runner=controller).cancel([record])
    assert [c for c in controller.calls if c[0] == "scancel"] == [["scancel", "7"]]
    assert after[record.id].state == "CANCELLED"
    # four polls saw COMPLETING, then two in a row saw the end
    assert controller.squeue_after_cancel == 6


def test_a_cancelled_reading_before_completing_is_not_taken_as_the_end(tmp_path, clock):
    """Right after scancel squeue can say CANCELLED for a moment, then COMPLETING."""
    controller = Controller(["CANCELLED", "COMPLETING", "COMPLETING"])
    record = _slurm_record(tmp_path)
    after = SlurmBackend(runner=controller).cancel([record])
    assert after[record.id].state == "CANCELLED"
    assert controller.squeue_after_cancel == 5  # past both COMPLETINGs, then two ends


def test_slurm_cancel_gives_up_waiting_after_cancel_wait_s(tmp_path, clock):
    controller = Controller(["COMPLETING"] * 10_000)
    record = _slurm_record(tmp_path)
    after = SlurmBackend(runner=controller).cancel([record])
    assert after[record.id].state == "RUNNING"  # still completing: reported as it is
    waited = sum(clock.slept)
    assert slurm_backend.CANCEL_WAIT_S == 60
    assert 60 <= waited <= 61
