"""The backend interface every kind of machine implements."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from .. import rundir
from ..bundle import Bundle, cache_dir, snapshot
from ..job import JobRecord, JobStatus, is_terminal
from ..render import JobSpec, SubmitPlan


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

    def cancel(self, record: JobRecord) -> JobStatus:
        """Stop the job; cancelling a finished or cancelled job changes nothing."""


class ScriptBackend:
    """What every backend that writes job scripts shares: writing a plan's script, and
    following a log until the job ends. Subclasses provide ``status`` and ``logs``."""

    follow_interval = 1.0

    def bundle_dir(self, bundle: Bundle) -> str:
        """Where jobs will find the bundle (pure): hpcrun's content-addressed cache."""
        return str(cache_dir() / bundle.hash[:24])

    def ship(self, bundle: Bundle) -> None:
        """Put the bundle where ``bundle_dir`` says (once per content)."""
        snapshot(bundle)

    def read_log(self, record: JobRecord, rank: int | None = None) -> str | None:
        path = self.logs(record, rank)  # type: ignore[attr-defined]
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else None

    def write(self, plan: SubmitPlan) -> None:
        path = Path(plan.script_path)
        Path(plan.files["output"]).parent.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(path, plan.script.encode())
        path.chmod(0o755)

    def follow(self, record: JobRecord, rank: int | None = None) -> Iterator[str]:
        offsets: dict[Path, int] = {}
        pending = ""
        while True:
            finished = is_terminal(self.status([record])[record.id].state)  # type: ignore[attr-defined]
            path = self.logs(record, rank)  # type: ignore[attr-defined]
            if path.exists():
                with open(path, encoding="utf-8", errors="replace") as handle:
                    handle.seek(offsets.get(path, 0))
                    pending += handle.read()
                    offsets[path] = handle.tell()
                *lines, pending = pending.split("\n")
                yield from lines
            if finished:
                if pending:
                    yield pending
                return
            time.sleep(self.follow_interval)
