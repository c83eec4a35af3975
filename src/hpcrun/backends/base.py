"""The backend interface every kind of machine implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from ..job import JobRecord, JobStatus
from ..render import JobSpec, SubmitPlan


class Backend(Protocol):
    name: str

    def render(self, spec: JobSpec, project_dir: Path | None = None) -> SubmitPlan:
        """Pure: the exact script and command for ``spec`` (what --dry-run prints)."""

    def submit(self, plan: SubmitPlan) -> str:
        """Start or queue the rendered job; return its native id (pid, scheduler id)."""

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """States of many jobs in one query, keyed by job id."""

    def logs(self, record: JobRecord, rank: int | None = None) -> Path:
        """The log file to show (the job's output, or one rank's trainer log)."""

    def follow(self, record: JobRecord, rank: int | None = None) -> Iterator[str]:
        """Lines of the log as they are written, until the job ends."""

    def cancel(self, record: JobRecord) -> JobStatus:
        """Stop the job; cancelling a finished or cancelled job changes nothing."""
