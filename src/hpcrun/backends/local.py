"""The local backend: the job runs detached on this machine (a new session, so it survives the
CLI exiting and the terminal closing) and leaves pid and exit-code files in its run directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from .. import rundir
from ..job import JobRecord, JobStatus, State, Submission, is_terminal
from ..render import JobSpec, SubmitPlan, job_files, render_local, render_template
from ..resources import launchers_dir
from ..shell import LocalRunner
from .base import Backend

CANCEL_MARKER = rundir.JOB_CANCELLED
#: seconds between SIGTERM (the trainer saves and stops) and SIGKILL of the job's processes
CANCEL_GRACE_S = 15.0


def _newlines_as_psutil_reads(text: str) -> str:
    """``text`` as psutil returns it inside a command line on Linux: it reads /proc with
    universal newlines, so a carriage return comes back as a newline."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class LocalBackend(Backend):
    follow_interval = 0.5

    name = "local"

    def __init__(self, *, runner: LocalRunner | None = None, remote: Any = None,
                 remote_name: str | None = None):
        if remote is not None:  # get_backend refuses it with the fix for the user
            raise ValueError("the local backend takes no remote")
        super().__init__(runner=runner)  # the job's files are on this machine
        self.host = socket.gethostname()

    # -- rendering and submission -----------------------------------------------------------

    def render(self, specs: Sequence[JobSpec], *, group: JobRecord | None = None,
               parallel: int | None = None, project_dir: Path | None = None) -> list[SubmitPlan]:
        """One script per job running its whole pipeline; for a sweep, also a driver that runs
        the points' scripts, at most ``parallel`` at a time."""
        launcher = str(launchers_dir() / "torchrun.sh")
        plans = [render_local(spec, launcher, project_dir) for spec in specs]
        if group is None:
            return plans
        return [*plans, self._driver(group, plans, parallel or 1, project_dir)]

    def preflight(self, plans: Sequence[SubmitPlan]) -> None:
        """Nothing to ask: this machine runs what it is given."""

    def resubmit(self, group: JobRecord, plans: Sequence[SubmitPlan],
                 indices: Sequence[int]) -> dict[str, Submission]:
        """Run the chosen points' scripts again through a new driver."""
        points = [p for p in plans if p.kind != "driver"]
        chosen = [points[i] for i in indices]
        for plan in chosen:
            for name in (rundir.JOB_EXIT, rundir.JOB_PID, CANCEL_MARKER):
                (Path(plan.script_path).parent / name).unlink(missing_ok=True)
        for name in (rundir.JOB_EXIT, rundir.JOB_PID, CANCEL_MARKER):
            (Path(group.run_dir) / name).unlink(missing_ok=True)
        specs_parallel = group.info.parallel or 1
        driver = self._driver(group, chosen, specs_parallel)
        return self.submit([*chosen, driver]) | {p.job_id: Submission() for p in chosen}

    def _driver(self, group: JobRecord, plans: Sequence[SubmitPlan], parallel: int,
                project_dir: Path | None = None) -> SubmitPlan:
        files = job_files(group.run_dir)
        script = render_template("local-sweep.sh.j2", {
            "group": group, "parallel": parallel, "scripts": [p.script_path for p in plans],
            "files": files, "cancel_marker": str(Path(group.run_dir) / CANCEL_MARKER)},
            project_dir)
        return SubmitPlan(job_id=group.id, script=script, script_path=files["script"],
                          argv=("bash", files["script"]), files=files, kind="driver")

    def submit(self, plans: Sequence[SubmitPlan]) -> dict[str, Submission]:
        """Write every script; start the driver if there is one, else the single job."""
        for plan in plans:
            self.write(plan)
        drivers = [p for p in plans if p.kind == "driver"]
        started = drivers or list(plans)
        out = {}
        for plan in started:
            pid = self.runner.spawn_detached(plan.argv, cwd=str(Path(plan.script_path).parent),
                                             output=plan.files["output"])
            out[plan.job_id] = Submission(str(pid))
        return out

    # -- state ----------------------------------------------------------------------------

    @staticmethod
    def _process(record: JobRecord) -> psutil.Process | None:
        """The job's script process, if it is alive (guarding against pid reuse)."""
        files = job_files(record.run_dir)
        pid = _read_int(Path(files["pid_file"]))
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            line = " ".join(proc.cmdline())
            if not any(form in line for form in (files["script"],
                                                 _newlines_as_psutil_reads(files["script"]))):
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def _one(self, record: JobRecord) -> JobStatus:
        files = job_files(record.run_dir)
        root = Path(record.run_dir)
        trainer = rundir.read_status(root / rundir.STATUS)
        detail = trainer.detail()
        cancelled = (root / CANCEL_MARKER).exists()
        code = _read_int(Path(files["exit_file"]))
        if code is None and self._process(record) is not None:
            return JobStatus(State.RUNNING, detail=detail)
        if code is None:
            code = _read_int(Path(files["exit_file"]))  # it may have ended just now
        if cancelled:
            return JobStatus(State.CANCELLED, reason="cancelled by the user", exit_code=code,
                             detail=detail)
        if code is None:
            if not Path(files["pid_file"]).exists():
                return JobStatus(State.PENDING, reason="waiting to start", detail=detail)
            return JobStatus(State.FAILED, reason="the job's process ended without an exit code "
                             "(killed, or the machine restarted)", detail=detail)
        if code == 0:
            return JobStatus(State.SUCCEEDED, exit_code=0, detail=detail)
        if trainer.state is State.PREEMPTED:
            return JobStatus(State.PREEMPTED, reason=trainer.message, exit_code=code,
                             detail=detail)
        failure = rundir.read_failure(root / rundir.FAILURE)
        reason = (failure.exception if failure else None) or trainer.message or \
            f"exit code {code}"
        if failure is not None and failure.rank is not None:
            reason = f"{failure.who()}: {reason}"
        return JobStatus(State.FAILED, reason=reason, exit_code=code, detail=detail)

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        return {record.id: self._one(record) for record in records}

    # -- logs -----------------------------------------------------------------------------

    def log_paths(self, record: JobRecord, rank: int | None = None) -> list[str]:
        if rank is None:
            return [job_files(record.run_dir)["output"]]
        return [str(Path(record.run_dir) / rundir.rank_log(rank))]

    # -- cancel ---------------------------------------------------------------------------

    def cancel(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        roots = []
        for record in records:
            if is_terminal(self._one(record).state):
                continue
            root = Path(record.run_dir)
            root.mkdir(parents=True, exist_ok=True)
            (root / CANCEL_MARKER).write_text(f"{time.time()}\n")
            proc = self._process(record)
            if proc is not None:
                roots.append(proc)
        self._stop_trees(roots)
        return self.status(records)

    @staticmethod
    def _stop_trees(roots: Sequence[psutil.Process], grace: float = CANCEL_GRACE_S) -> None:
        """SIGTERM the jobs' processes (torchrun puts its workers in sessions of their own,
        so each tree is walked, not just its process group); SIGKILL what is left after one
        ``grace`` for all of them."""
        def trees() -> set[psutil.Process]:
            found: set[psutil.Process] = set()
            for root in roots:
                with contextlib.suppress(psutil.Error):
                    found.update([root, *root.children(recursive=True)])
            return found

        members = trees()
        for root in roots:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(root.pid, signal.SIGTERM)
        for proc in members - set(roots):
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            members = {p for p in members | trees() if _alive(p)}
            if not members:
                return
            time.sleep(0.2)
        for proc in members | trees():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(list(members), timeout=5)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
