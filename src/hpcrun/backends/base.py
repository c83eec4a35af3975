"""The backend interface every kind of machine implements."""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from .. import rundir
from ..bundle import Bundle
from ..job import JobRecord, JobStatus, is_terminal
from ..render import JobSpec, SubmitPlan
from .files import LocalFiles, RemoteFiles


def fill_dependencies(argv: Sequence[str], ids: dict[str, str], prefix: str,
                      flag: str | None = None) -> list[str]:
    """``argv`` with each ``PREFIX...{stage}`` argument filled in from the native ``ids`` of
    the stages queued so far. One naming a stage not queued this time (it succeeded before a
    resume: its output is already there) is dropped, with its ``flag`` word before it."""
    out: list[str] = []
    for arg in argv:
        if not arg.startswith(prefix):
            out.append(arg)
        elif set(re.findall(r"{([^{}]+)}", arg)) <= set(ids):
            out.append(arg.format(**ids))
        elif flag is not None and out and out[-1] == flag:
            out.pop()
    return out


class Backend(Protocol):
    name: str

    def render(self, specs: Sequence[JobSpec], *, group: JobRecord | None = None,
               parallel: int | None = None, project_dir: Path | None = None) -> list[SubmitPlan]:
        """Pure: the exact scripts and commands for ``specs`` (what --dry-run prints). A
        ``group`` is a sweep whose points are ``specs``; ``parallel`` caps how many run at
        once."""

    def preflight(self, plans: Sequence[SubmitPlan]) -> None:
        """Ask the scheduler whether it would accept the plans, queueing nothing; raise
        ``BadInput`` naming the directive it refuses."""

    def submit(self, plans: Sequence[SubmitPlan]) -> dict[str, dict]:
        """Write the scripts and start or queue them. Returns, per job (or sweep) id,
        ``{"id": native id, "info": {extra facts for the job store}}``."""

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """States of many jobs in one query, keyed by job id."""

    def logs(self, record: JobRecord, rank: int | None = None) -> Path:
        """The log file to show (the job's output, or one rank's trainer log)."""

    def follow(self, record: JobRecord, rank: int | None = None) -> Iterator[str]:
        """Lines of the log as they are written, until the job ends."""

    def cancel(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """Stop the jobs, all in one request where the machine allows (a sweep's points and
        its array jobs at once), and wait for their ends; cancelling a finished or cancelled
        job changes nothing. The states after, keyed by job id (UNKNOWN: the scheduler has
        forgotten the job, as it does with array tasks that never started)."""


class ScriptBackend:
    """What every backend that writes job scripts shares: where its files live (``files``:
    this machine, or a remote over ssh), writing a plan's script, reading and following logs,
    and bringing a remote run directory back. Subclasses provide ``status`` and
    ``log_paths``."""

    follow_interval = 1.0
    files: LocalFiles | RemoteFiles = LocalFiles()

    def bundle_dir(self, bundle: Bundle) -> str:
        """Where jobs will find the bundle (pure)."""
        return self.files.bundle_dir(bundle)

    def ship(self, bundle: Bundle) -> None:
        """Put the bundle where ``bundle_dir`` says (once per content)."""
        self.files.ship(bundle)

    def place(self, local_run_dir: str) -> str:
        """Where the job's run directory is, seen from where it runs (pure)."""
        return self.files.place(local_run_dir)

    def write(self, plan: SubmitPlan) -> None:
        path = Path(plan.script_path)
        Path(plan.files["output"]).parent.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(path, plan.script.encode())
        path.chmod(0o755)

    def log_paths(self, record: JobRecord, rank: int | None = None) -> list[str]:
        """Candidate log files, newest last; the first that exists (from the end) is shown."""
        raise NotImplementedError

    def logs(self, record: JobRecord, rank: int | None = None) -> Path:
        return Path(self.log_paths(record, rank)[-1])

    def read_log(self, record: JobRecord, rank: int | None = None) -> str | None:
        for path in reversed(self.log_paths(record, rank)):
            text = self.files.read_text(path)
            if text is not None:
                return text
        return None

    def follow(self, record: JobRecord, rank: int | None = None) -> Iterator[str]:
        shown = 0
        pending = ""
        while True:
            finished = is_terminal(self.status([record])[record.id].state)  # type: ignore[attr-defined]
            text = self.read_log(record, rank) or ""
            pending += text[shown:]
            shown = len(text)
            *lines, pending = pending.split("\n")
            yield from lines
            if finished:
                if pending:
                    yield pending
                return
            time.sleep(self.follow_interval)

    def pull(self, record: JobRecord, partial: bool = False) -> None:
        """Bring a remote run directory back (nothing to do when it is on this machine)."""
        if isinstance(self.files, RemoteFiles):
            self.files.pull(record, partial)

    def resume(self, record: JobRecord, plans: Sequence[SubmitPlan]) -> dict[str, dict]:
        """Start ``plans`` (a job's stored plans) again in the job's run directory, after
        removing what its previous end left there (exit code, pid, cancel marker)."""
        run = self.files.run_dir(record)
        self.files.remove([posixpath.join(run, name) for name in
                           (rundir.JOB_EXIT, rundir.JOB_PID, rundir.JOB_CANCELLED)])
        return self.submit(plans)  # type: ignore[attr-defined]

    def catch_up(self, record: JobRecord, known: dict[str, list]) -> None:
        """Bring the local copy of a remote job's watched files up to date (only what was
        added since ``known``); nothing to do when the run directory is on this machine."""
        self.files.catch_up(record, known)

    def prepare_run_dirs(self, configs: dict[str, str]) -> None:
        """Give each remote run directory its config.yaml ({local run dir: text}); the
        local copies were written by the caller."""
        if isinstance(self.files, RemoteFiles):
            self.files.write({posixpath.join(self.place(run), rundir.CONFIG): text
                              for run, text in configs.items()})

    def remote_info(self, record: JobRecord) -> dict[str, str]:
        """What the job store keeps to find the job's files again."""
        if isinstance(self.files, RemoteFiles):
            return {"remote": self.files.remote_name, "remote_run_dir": self.place(record.run_dir)}
        return {}
