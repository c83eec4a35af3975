"""Jobs as they are now: fresh states from the backends (one query per backend), a sweep's
state from its points', a failed job's triage, the job list, logs, cancel and the monitor."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import rundir
from ..backends import backend_for
from ..errors import BadInput, HpcrunError
from ..job import JobRecord, JobStatus, State, combine, is_terminal
from ..shell import LocalRunner
from ..store import JobStore

if TYPE_CHECKING:  # the monitor is imported by the commands that watch or check a run
    from ..monitor import Event, Monitor


# --------------------------------------------------------------------------- status


@dataclass
class Triage:
    """Why a job failed, from what it left behind: the cause (failure.json and the known
    signature its log shows), the signal that killed a process, and the log's last lines."""

    cause: str
    signal: str | None = None
    failure: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "signal": self.signal, "failure": self.failure,
                "log_tail": self.log_tail}


@dataclass
class JobView:
    record: JobRecord
    status: JobStatus
    children: list[JobView] = field(default_factory=list)
    #: set by ``status`` for a failed job
    triage: Triage | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.record.to_dict()
        out.update(state=self.status.state, reason=self.status.reason,
                   exit_code=self.status.exit_code, **self.status.detail)
        if self.children:
            out["points"] = [c.to_dict() for c in self.children]
        if self.triage is not None:
            out["triage"] = self.triage.to_dict()
        return out


#: how a dead process shows in a log: torchrun's "Signal 9 (SIGKILL) received by PID" and
#: "exitcode  : -9"; failing those, a shell's exit code over 128 is 128 + the signal
_SIGNAL_RES = (re.compile(r"Signal (\d+) \((SIG[A-Z0-9]+)\)"),
               re.compile(r"exitcode\s*:\s*-(\d+)"))
TRIAGE_LOG_LINES = 12


def _signal_name(number: int) -> str | None:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def _signal_of(log: str, exit_code: int | None) -> str | None:
    found: tuple[int, str | None] | None = None
    for pattern in _SIGNAL_RES:
        for match in pattern.finditer(log):
            if found is None or match.start() > found[0]:
                number = int(match.group(1))
                name = match.group(2) if match.lastindex == 2 else _signal_name(number)
                found = (match.start(), name or f"signal {number}")
    if found is not None:
        return found[1]
    if exit_code is not None and 128 < exit_code < 128 + 65:
        return _signal_name(exit_code - 128)
    return None


def _trainer_lines(lines: list[str]) -> list[str]:
    """A failed torchrun ends its output with the launcher's own traceback and a summary box
    (whose rank, exit code and signal the triage reads); what the trainer said is before."""
    ends = [i for i, line in enumerate(lines) if "ChildFailedError" in line]
    if not ends:
        return lines
    starts = [i for i in range(ends[-1]) if lines[i].startswith("Traceback (most recent")]
    return lines[:starts[-1] if starts else ends[-1]]


def triage(view: JobView, backend: Any | None = None) -> Triage | None:
    """The failure triage of a failed job (None for any other state, and for a sweep, whose
    points each have their own)."""
    from ..diagnose import failed_flag, log_tail

    record = view.record
    if view.status.state is not State.FAILED or record.sweep:
        return None
    backend = backend or backend_for(record)
    lines = (backend.read_log(record) or "").splitlines()
    tail = log_tail("\n".join(lines))
    cause = failed_flag(Path(record.run_dir), tail).message
    failure = backend.run_failure(record)
    kept = failure.brief() if failure is not None else None
    return Triage(cause=cause,
                  signal=_signal_of(tail, view.status.exit_code), failure=kept or None,
                  log_tail=[line for line in _trainer_lines(lines)
                            if line.strip()][-TRIAGE_LOG_LINES:])


def _group_status(children: list[JobView], cancelled: bool = False) -> JobStatus:
    """A sweep's state from its points': running while any point runs, pending while any
    waits; then CANCELLED when it was cancelled, else how its points ended. Points no one
    knows any more (UNKNOWN) never hold it PENDING."""
    states = [c.status.state for c in children]
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
    return JobStatus(combine(states, sequential=False, cancelled=cancelled), reason=summary)


def _cancelled(record: JobRecord) -> bool:
    """Whether the sweep was cancelled (``cancel`` leaves a marker in its folder)."""
    return (Path(record.run_dir) / rundir.JOB_CANCELLED).exists()


def _last_seen(record: JobRecord, status: JobStatus) -> JobStatus:
    """A job the scheduler has forgotten (or cannot be asked about) after it was seen to end
    keeps the end it was seen with: an end does not change."""
    if status.state is State.UNKNOWN and is_terminal(record.state):
        note = f"{record.state} as last seen; now: {status.reason or 'unknown'}"
        return JobStatus(record.state, detail={**status.detail, "note": note})
    return status


def _backend_key(record: JobRecord) -> str:
    return f"{record.backend}:{record.info.remote or ''}"


def views(records: Sequence[JobRecord], store: JobStore,
          backends: dict[str, Any] | None = None) -> list[JobView]:
    """Fresh states for ``records`` (one backend query per backend); the store is updated.
    ``backends`` keeps the backend objects (and their connections) across calls."""
    backends = {} if backends is None else backends
    by_backend: dict[str, list[JobRecord]] = {}
    for record in records:
        if not record.sweep:
            by_backend.setdefault(_backend_key(record), []).append(record)
    states: dict[str, JobStatus] = {}
    for key, group in by_backend.items():
        try:
            if key not in backends:
                backends[key] = backend_for(group[0])
            states.update(backends[key].status(group))
        except HpcrunError as exc:  # one unreachable cluster or pod must not hide the rest
            states.update({r.id: JobStatus(State.UNKNOWN, reason=exc.message) for r in group})
    out = []
    for record in records:
        if record.sweep:
            children = views([c for c in (store.get(i) for i in record.info.points)
                              if c is not None], store, backends)
            status = _group_status(children, _cancelled(record))
            view = JobView(record, status, children)
        else:
            status = _last_seen(record, states[record.id])
            view = JobView(record, status)
        if status.state != record.state and status.state is not State.UNKNOWN:
            store.update(record.id, state=status.state)
            record.state = status.state
        out.append(view)
    return out


def status(refs: Sequence[str], project_dir: Path, store: JobStore | None = None) -> list[JobView]:
    """Fresh states of jobs, each failed one with its triage."""
    store = store or JobStore()
    records = [store.resolve(ref, str(project_dir.resolve())) for ref in (refs or ["latest"])]
    out = views(records, store)
    for view in out:
        view.triage = triage(view)
    return out


def list_jobs(project_dir: Path, all_projects: bool = False, limit: int = 50,
              store: JobStore | None = None) -> list[JobView]:
    """The newest ``limit`` jobs and sweeps (a sweep's points are shown inside it)."""
    store = store or JobStore()
    records = store.list(None if all_projects else str(project_dir.resolve()), limit=limit,
                         top_level=True)
    return views(records, store)


# --------------------------------------------------------------------------- logs, cancel


def _single(record: JobRecord) -> None:
    if record.sweep:
        points = ", ".join(record.info.points)
        raise BadInput(f"job {record.id} is a sweep; name one of its points: {points}")


def log_file(ref: str | None, rank: int | None, project_dir: Path,
             store: JobStore | None = None) -> tuple[JobRecord, str | None]:
    """A job's output (or one rank's log) as text; None when nothing was written yet."""
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    text = backend_for(record).read_log(record, rank)
    if rank is not None and text is None:
        raise BadInput(f"no log for rank {rank} of job {record.id} (not started yet, or no "
                       "such rank)")
    return record, text


def follow_logs(record: JobRecord, rank: int | None) -> Iterator[str]:
    return backend_for(record).follow(record, rank)


def cancel(ref: str | None, project_dir: Path, store: JobStore | None = None) -> list[JobView]:
    """Cancel a job, or a sweep with every point in one request to its backend (a scheduler's
    array jobs at once). A job that ends unknown to the scheduler (a waiting array task is
    forgotten once cancelled) is recorded CANCELLED."""
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    backend = backend_for(record)
    targets = [record]
    if record.sweep:
        marker = Path(record.run_dir) / rundir.JOB_CANCELLED
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.time()}\n")
        targets += [r for r in (store.get(i) for i in record.info.points) if r]
    ended = backend.cancel(targets)
    for target in targets:
        state = ended.get(target.id)
        if state is not None and state.state is State.UNKNOWN and not is_terminal(target.state):
            store.update(target.id, state=State.CANCELLED)
    return views([record], store, {_backend_key(record): backend})


# --------------------------------------------------------------------------- monitor


def open_monitor(ref: str | None, project_dir: Path, store: JobStore | None = None) -> Monitor:
    """A ``Monitor`` of one job: one backend (one ssh connection for a remote) for all its
    refreshes, and the job store kept up to date with the states it sees."""
    from ..monitor import Monitor

    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    backend = backend_for(record)
    cache = {_backend_key(record): backend}
    return Monitor(record, lambda: views([record], store, cache)[0], backend)


def notify(command: str, event: Event, runner: LocalRunner | None = None) -> str | None:
    """Run a ``--notify`` command through ``sh -c`` with the event in its environment (the
    event's values never become part of the command). Returns a warning when it failed."""
    runner = runner or LocalRunner()
    try:
        result = runner.run(["sh", "-c", command], env={**os.environ, **event.environment()},
                            check=False, timeout=60)
    except HpcrunError as exc:
        return f"--notify command failed: {exc.message}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [""])[-1]
        return f"--notify command exited {result.returncode}" + (f": {last}" if last else "")
    return None


