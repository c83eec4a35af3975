"""Jobs as hpcrun sees them: states and how they combine, records in the job store, what a
backend reports when it queues a job, handles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from . import formats
from .errors import BadInput
from .rundir import STATES, TERMINAL_STATES, State

__all__ = ["STATES", "TERMINAL_STATES", "State", "JobInfo", "JobRecord", "JobStatus",
           "Submission", "combine", "parse_handle", "is_terminal"]

HANDLE = formats.Format(r"(?P<backend>[a-z]+)://(?P<host>[^/]+)/(?P<id>[0-9a-f]+)",
                        "look like BACKEND://HOST/ID")


def is_terminal(state: str | None) -> bool:
    return state in TERMINAL_STATES


def combine(states: Iterable[str], *, sequential: bool, cancelled: bool = False) -> State:
    """The state of a whole made of parts: a pipeline's stages (``sequential``: each waits
    for the one before, so a stage that failed, was cancelled or preempted ends the whole) or
    a sweep's points (independent).

    Then: RUNNING while a part runs, PENDING while one waits, SUCCEEDED when all did (also
    when cancelled after that), CANCELLED when the whole was ``cancelled``, else the worst
    end among the parts: FAILED, PREEMPTED, CANCELLED. Parts no one knows any more (UNKNOWN)
    never hold the whole PENDING; only a whole with no known end is UNKNOWN. A state that is
    not a :class:`State` (a backend's BLOCKED stage, whose dependency can never be met) is
    not known to end by itself: it counts as UNKNOWN, so it never holds the whole PENDING.
    """
    seen = {State.of(s) or State.UNKNOWN for s in states}
    if sequential:
        for end in (State.FAILED, State.CANCELLED, State.PREEMPTED):
            if end in seen:
                return end
    for state in (State.RUNNING, State.PENDING):
        if state in seen:
            return state
    if seen == {State.SUCCEEDED}:
        return State.SUCCEEDED
    if cancelled:
        return State.CANCELLED
    return next((s for s in (State.FAILED, State.PREEMPTED, State.CANCELLED) if s in seen),
                State.UNKNOWN)


#: the type of each JobInfo field that may be None
_OPTIONAL = {"config": str, "program": str, "bundle_hash": str, "sweep_point": dict,
             "parallel": int, "remote": str, "remote_run_dir": str, "sweep_logs": str}


def _fits(name: str, value: Any, default: Any) -> bool:
    """Whether ``value`` has the type JobInfo's field ``name`` holds."""
    if value is None:
        return name in _OPTIONAL
    kind = _OPTIONAL.get(name) or type(default)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


@dataclass
class JobInfo:
    """What the job store keeps of a job beside its columns (JSON in one column). Read
    tolerantly: a value of the wrong type is its default, keys of other versions are kept."""

    kind: Literal["job", "sweep"] = "job"
    config: str | None = None               # the experiment as named to submit
    overrides: list[str] = field(default_factory=list)   # the --set overrides
    program: str | None = None              # an own script's program
    stages: list[str] = field(default_factory=list)
    bundle_hash: str | None = None
    sweep_point: dict[str, Any] | None = None  # this point's overrides
    points: list[str] = field(default_factory=list)      # a sweep's points (job ids)
    grid: list[dict[str, Any]] = field(default_factory=list)  # a sweep's overrides, by point
    parallel: int | None = None             # a sweep's --parallel
    native: dict[str, str] = field(default_factory=dict)  # stage -> scheduler id
    scripts: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)  # what --resume runs again
    remote: str | None = None               # the remote's name in remotes.yaml
    remote_run_dir: str | None = None
    sweep_logs: str | None = None           # a point's sweep's log folder (remote path)
    resumed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sweep(self) -> bool:
        return self.kind == "sweep"

    @classmethod
    def of(cls, data: Any) -> JobInfo:
        data = data if isinstance(data, Mapping) else {}
        known: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            if f.name != "extra" and f.name in data \
                    and _fits(f.name, data[f.name], getattr(defaults, f.name)):
                known[f.name] = data[f.name]
        if known.get("kind") not in (None, "job", "sweep"):
            del known["kind"]
        names = {f.name for f in fields(cls)}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {**out.pop("extra"), **out}


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
    state: State = State.PENDING
    submitted_at: float = 0.0
    updated_at: float = 0.0
    group: str | None = None  # the sweep this job belongs to
    info: JobInfo = field(default_factory=JobInfo)

    def __post_init__(self) -> None:
        if not isinstance(self.info, JobInfo):
            self.info = JobInfo.of(self.info)
        self.state = State.of(self.state) or State.UNKNOWN

    @property
    def sweep(self) -> bool:
        """A sweep (its points are jobs of their own)."""
        return self.info.sweep

    @property
    def handle(self) -> str:
        return f"{self.backend}://{self.host}/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "info": self.info.to_dict(), "handle": self.handle}


@dataclass
class JobStatus:
    """What a backend knows about a job right now."""

    state: State
    reason: str | None = None
    exit_code: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = State.of(self.state) or State.UNKNOWN


@dataclass
class Submission:
    """What a backend reports of one job (or sweep) it queued or started."""

    native_id: str | None = None
    native: dict[str, str] = field(default_factory=dict)  # stage -> scheduler id, if any

    def apply(self, record: JobRecord, kept: Mapping[str, str] | None = None) -> None:
        """Record it on ``record`` (``kept``: scheduler ids of stages that are not rerun)."""
        record.native_id = self.native_id
        if self.native or kept:
            record.info.native = {**(kept or {}), **self.native}


def parse_handle(text: str) -> tuple[str, str, str] | None:
    """``local://HOST/ID`` -> (backend, host, id); None when ``text`` is not a handle."""
    match = HANDLE.parse(text)
    if not match:
        if "://" in text:
            raise BadInput(f"not a job handle: {text!r} (expected BACKEND://HOST/ID)")
        return None
    return match.group("backend"), match.group("host"), match.group("id")
