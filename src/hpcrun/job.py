"""Jobs as hpcrun sees them: states, records in the job store, handles."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import formats
from .errors import BadInput
from .rundir import STATES, TERMINAL_STATES

__all__ = ["STATES", "TERMINAL_STATES", "JobRecord", "JobStatus", "parse_handle", "is_terminal"]

HANDLE = formats.Format(r"(?P<backend>[a-z]+)://(?P<host>[^/]+)/(?P<id>[0-9a-f]+)",
                        "look like BACKEND://HOST/ID")


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


@dataclass
class JobRecord:
    """One submitted job (a pipeline run, or one point of a sweep) in the job store."""

    id: str
    backend: str
    host: str
    experiment: str
    run_dir: str
    project_dir: str
    native_id: str | None = None
    state: str = "PENDING"
    submitted_at: float = 0.0
    updated_at: float = 0.0
    group: str | None = None  # the sweep this job belongs to
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def handle(self) -> str:
        return f"{self.backend}://{self.host}/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "handle": self.handle}


@dataclass
class JobStatus:
    """What a backend knows about a job right now."""

    state: str
    reason: str | None = None
    exit_code: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def parse_handle(text: str) -> tuple[str, str, str] | None:
    """``local://HOST/ID`` -> (backend, host, id); None when ``text`` is not a handle."""
    match = HANDLE.parse(text)
    if not match:
        if "://" in text:
            raise BadInput(f"not a job handle: {text!r} (expected BACKEND://HOST/ID)")
        return None
    return match.group("backend"), match.group("host"), match.group("id")
