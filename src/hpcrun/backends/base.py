"""The backend interface every kind of machine implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from ..job import JobRecord, JobStatus
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
