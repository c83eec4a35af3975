"""Watching one job while it runs: what ``hpcrun monitor`` shows, refreshed incrementally.

A ``Monitor`` keeps, between refreshes, one ``CsvTail`` per CSV of the run directory (a
refresh reads and converts only the rows added since the last one), the red-flag checks'
running state (``diagnose.Diagnosis``) and, for a job on a remote, the offsets of what it
already copied (a refresh is one round trip carrying only the new bytes). It never prints:
``refresh()`` returns a ``Snapshot`` and ``events()`` says what is worth a notification.

``watch`` is the one loop that follows a job (a ``Monitor``) or a sweep (a ``SweepWatch``)
until it ends: it refreshes, backs off while the machine cannot be reached, and hands each
snapshot to a sink, which shows it (JSON lines, plain lines or a live dashboard: the
caller's choice). Pure Python: no torch, no pandas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import rundir
from .diagnose import Diagnosis, log_tail
from .errors import HpcrunError
from .job import JobRecord, State, is_terminal
from .selection import BestRow, Selection, read_selections

SPARK_LEVELS = "▁▂▃▄▅▆▇█"

#: the curves the dashboard draws: label -> (file, column, phase filter)
_SERIES = {
    "val loss": (rundir.TRAINING, "Val Loss", None),
    "separation": (rundir.PROBABILITY_STATS, "separation", "val"),
    "grad norm": (rundir.GRADIENT_STATS, "norm_mean", None),
}
_MEMORY_KEYS = ("rank", "host", "device", "allocated_mb", "peak_mb", "device_used_mb",
                "device_total_mb", "host_rss_mb", "host_total_mb")


def sparkline(values: Sequence[float], width: int = 32) -> str:
    """The last ``width`` values as block characters scaled between their min and max; a
    value that is not finite shows as ``!``."""
    values = list(values)[-width:]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "!" * len(values)
    low, high = min(finite), max(finite)
    span = high - low
    top = len(SPARK_LEVELS) - 1
    return "".join(
        "!" if not math.isfinite(v)
        else SPARK_LEVELS[round(top * (v - low) / span) if span > 0 else top // 2]
        for v in values)


@dataclass
class Snapshot:
    """One refresh of a job: scheduler state, where the trainer is, its curves and flags."""

    view: Any  # ops.JobView: the record and its JobStatus
    stage: str | None = None
    epoch: int = 0
    epochs: int = 0
    stages: dict[str, str] = field(default_factory=dict)
    elapsed_s: float | None = None
    #: median epoch time of the current stage, and what it predicts for its remaining epochs
    epoch_time_s: float | None = None
    eta_s: float | None = None
    latest: dict[str, str] | None = None
    best: dict[str, str] | None = None
    #: the column the best epoch is chosen on (the stage's early-stopping metric)
    best_column: str | None = None
    #: curves of the current stage, per label (``val loss``, the metric, ``separation``,
    #: ``grad norm``)
    series: dict[str, list[float]] = field(default_factory=dict)
    #: the latest memory row of each rank
    memory: list[dict[str, str]] = field(default_factory=list)
    flags: list[Any] = field(default_factory=list)
    #: set while the job's machine cannot be reached (the data shown is the last read)
    connection: str | None = None

    @property
    def state(self) -> str:
        return self.view.status.state

    def to_dict(self) -> dict[str, Any]:
        def clean(values: list[float]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        return {"job": self.view.to_dict(), "stage": self.stage, "epoch": self.epoch,
                "epochs": self.epochs, "stages": self.stages, "elapsed_s": self.elapsed_s,
                "epoch_time_s": self.epoch_time_s, "eta_s": self.eta_s,
                "latest": self.latest, "best": self.best, "best_column": self.best_column,
                "series": {k: clean(v) for k, v in self.series.items()},
                "memory": self.memory, "flags": [f.to_dict() for f in self.flags],
                "connection": self.connection}


@dataclass(frozen=True)
class Event:
    """Something worth a notification: the job ended, or a new red flag."""

    kind: str  # "finished" or "flag"
    snapshot: Snapshot
    flag: Any = None

    def environment(self) -> dict[str, str]:
        """What a ``--notify`` command finds in its environment (values, never code)."""
        record, status = self.snapshot.view.record, self.snapshot.view.status
        env = {"HPCRUN_EVENT": self.kind, "HPCRUN_JOB_ID": record.id,
               "HPCRUN_JOB_HANDLE": record.handle, "HPCRUN_EXPERIMENT": record.experiment,
               "HPCRUN_RUN_DIR": record.run_dir, "HPCRUN_STATE": status.state,
               "HPCRUN_STAGE": self.snapshot.stage or "",
               "HPCRUN_MESSAGE": status.reason or status.state}
        if self.flag is not None:
            env.update(HPCRUN_FLAG=self.flag.code, HPCRUN_MESSAGE=self.flag.message,
                       HPCRUN_STAGE=self.flag.stage or "")
            if getattr(self.flag, "rank", None) is not None:
                env["HPCRUN_RANK"] = str(self.flag.rank)
        return env


def run_flags(record: JobRecord, state: str, backend: Any | None,
              diagnosis: Diagnosis | None = None) -> list[Any]:
    """The red flags of a job's run directory, with its state and, for a failed job, the end
    of its log read through ``backend`` (where known failure signatures are looked for).
    ``diagnosis`` is a live view's, kept between refreshes; without one the run is read
    whole."""
    log = None
    if state == State.FAILED and backend is not None:
        log = log_tail(backend.read_log(record) or "")
    return (diagnosis or Diagnosis(Path(record.run_dir))).flags(job_state=state, log_text=log)


class Monitor:
    """Refreshes of one job. ``view_of`` asks the backend for the job's state (one batched
    query); ``backend`` brings a remote run directory's new bytes to the local copy."""

    def __init__(self, record: JobRecord, view_of: Callable[[], Any], backend: Any):
        self.record, self._view_of, self._backend = record, view_of, backend
        self.run = rundir.RunDir(record.run_dir)
        self.tables = rundir.RunTables()
        self.diagnosis = Diagnosis(self.run.root, self.tables)
        self._known: dict[str, list[Any]] = {}
        self._last: Snapshot | None = None
        self._flagged: set[tuple[str, str | None, int | None]] = set()
        self._finished = False
        self._best: dict[tuple[str, Selection], BestRow] = {}
        self._selections: tuple[Any, dict[str, Any]] = (None, {})

    @property
    def refresh_s(self) -> float:
        """The run's ``monitor.refresh_s`` (the default when its config cannot be read)."""
        return self.diagnosis.limits().refresh_s

    def _selection(self, stage: str) -> Selection:
        """How the stage's best epoch is chosen; the config is parsed again only when
        config.yaml changed."""
        try:
            stat = self.run.config.stat()
            key: Any = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = None
        if key is None or key != self._selections[0]:
            self._selections = (key, read_selections(self.run) if key else {})
        return self._selections[1].get(stage) or Selection()

    def refresh(self) -> Snapshot:
        """A fresh snapshot. While the job's machine cannot be reached, the last snapshot is
        returned with ``connection`` saying why (the caller retries); the first refresh
        raises instead, as there is nothing to show."""
        try:
            view = self._view_of()
            if view.status.state is State.UNKNOWN and self._last is not None:
                return self._lost(view.status.reason or "state unknown")
            self._backend.catch_up(self.record, self._known)
        except HpcrunError as exc:
            if self._last is None:
                raise
            return self._lost(exc.message)
        # the trainer appends an epoch's CSV rows before it updates status.json: reading
        # the status first keeps the tables at least as far as the epoch it names
        trainer = rundir.read_status(self.run.status)
        self.tables.refresh()
        snap = self._read(view, trainer)
        self._last = snap
        return snap

    def _lost(self, why: str) -> Snapshot:
        assert self._last is not None
        last = self._last
        return Snapshot(**{**last.__dict__, "connection": why})

    def _read(self, view: Any, trainer: rundir.Status) -> Snapshot:
        stage = trainer.stage
        snap = Snapshot(view, stage=stage, epoch=trainer.epoch or 0, epochs=trainer.epochs or 0,
                        stages=dict(trainer.stages))
        terminal = is_terminal(view.status.state)
        end = (trainer.updated_at if trainer.updated_at is not None else math.nan) \
            if terminal else time.time()
        if math.isfinite(end) and end and self.record.submitted_at:
            snap.elapsed_s = max(0.0, end - self.record.submitted_at)
        if stage:
            folder = self.run.stage(stage)
            training = self.tables.tail(folder / rundir.TRAINING)
            rows = training.rows
            selection = self._selection(stage)
            column = selection.column
            if rows:
                snap.latest = rows[-1]
                written = rundir.to_int(rows[-1].get("Epoch"))
                if written is not None:
                    snap.epoch = max(snap.epoch, written)
                best = self._best.get((stage, selection))
                if best is None:
                    best = self._best[(stage, selection)] = BestRow(selection)
                snap.best = best.update(training)
                snap.best_column = column
                snap.epoch_time_s = self.diagnosis.epoch_time(stage)
                if snap.epoch_time_s is not None and not terminal and snap.epochs:
                    snap.eta_s = snap.epoch_time_s * max(0, snap.epochs - snap.epoch)
            snap.series = self._series(folder, training, column)
            snap.memory = self._memory(folder)
        snap.flags = run_flags(self.record, view.status.state, self._backend, self.diagnosis)
        return snap

    def _series(self, folder: Path, training: rundir.CsvTail,
                metric: str) -> dict[str, list[float]]:
        # copies of the tables' float lists: a snapshot must not change when the next
        # refresh appends to them
        out = {}
        for label, (name, column, phase) in _SERIES.items():
            tail = training if name == rundir.TRAINING else self.tables.tail(folder / name)
            values = tail.floats(column, ("phase", phase) if phase else None)
            if values:
                out[label] = list(values)
        if training.rows:  # the stage's metric, or the first validation metric when that is loss
            columns = [c for c in training.header or [] if c.startswith("Val ")
                       and c != "Val Loss"]
            chosen = metric if metric in columns else (columns[0] if columns else None)
            if chosen:
                out[chosen.removeprefix("Val ").lower()] = list(training.floats(chosen))
        out.update(self._system())
        return out

    def _system(self) -> dict[str, list[float]]:
        """From system.csv, per sample: the mean utilisation of the job's GPUs and the CPU %
        of its processes (summed over hosts)."""
        tail = self.tables.tail(self.run.root / rundir.SYSTEM)
        gpu: dict[float, list[float]] = {}
        cpu: dict[float, dict[str, float]] = {}
        for row, when, util, busy in zip(tail.rows, tail.floats("time"),
                                          tail.floats("gpu_util_pct"), tail.floats("cpu_pct"),
                                          strict=False):
            if when != when:  # NaN
                continue
            if util == util:
                gpu.setdefault(when, []).append(util)
            if busy == busy:
                cpu.setdefault(when, {})[row.get("host") or ""] = busy
        out = {}
        if gpu:
            out["gpu util %"] = [sum(v) / len(v) for _, v in sorted(gpu.items())]
        if cpu:
            out["job cpu %"] = [sum(v.values()) for _, v in sorted(cpu.items())]
        return out

    def _memory(self, folder: Path) -> list[dict[str, str]]:
        """The latest row of each rank (ranks that cannot be read are left out)."""
        tail = self.tables.tail(folder / rundir.GPU_MEMORY)
        latest = {}
        for text, rows in tail.index("rank").items():
            rank = rundir.to_int(text)
            if rank is not None:
                latest[rank] = tail.rows[rows[-1]]
        return [{k: row.get(k) or "" for k in _MEMORY_KEYS}
                for _, row in sorted(latest.items())]

    def events(self, snap: Snapshot) -> list[Event]:
        """What is new since the previous call: red flags not seen before (per stage and
        rank: the same flag on another rank is news), and the job's end (once)."""
        out = []
        for flag in snap.flags:
            key = (flag.code, flag.stage, getattr(flag, "rank", None))
            if key not in self._flagged:
                self._flagged.add(key)
                out.append(Event("flag", snap, flag))
        if is_terminal(snap.state) and not self._finished and snap.connection is None:
            self._finished = True
            out.append(Event("finished", snap))
        return out

    def summary(self) -> Any:
        """The run summary (report.summarize) of what was read so far."""
        from .report import summarize

        return summarize(self.run.root)


@dataclass(frozen=True)
class SweepSnapshot:
    """One refresh of a sweep: its view (ops.JobView), with the points' states combined."""

    view: Any
    #: a sweep's state comes from the job store and the schedulers in one request; there is
    #: no machine of its own to lose
    connection: str | None = None

    @property
    def state(self) -> str:
        return self.view.status.state

    def to_dict(self) -> dict[str, Any]:
        return self.view.to_dict()


class SweepWatch:
    """Refreshes of a sweep: ``view_of`` asks for the sweep's view (its points' states)."""

    def __init__(self, view_of: Callable[[], Any]):
        self._view_of = view_of

    def refresh(self) -> SweepSnapshot:
        return SweepSnapshot(self._view_of())

    def events(self, snap: SweepSnapshot) -> list[Event]:
        return []


class Polled(Protocol):
    """What a refresh returns: the state, and why the machine cannot be reached (if so)."""

    @property
    def state(self) -> str: ...

    @property
    def connection(self) -> str | None: ...


S = TypeVar("S", bound=Polled)


class Watched(Protocol[S]):
    def refresh(self) -> S: ...

    def events(self, snap: S) -> list[Event]: ...


class Sink(Protocol[S]):
    """Where a watch's snapshots go: ``show`` while it goes on, ``end`` for the last one
    (the job has ended, or the watch looks once), ``close`` always, even after an error."""

    def show(self, snap: S) -> None: ...

    def end(self, snap: S) -> None: ...

    def close(self) -> None: ...


#: the longest wait between refreshes while the job's machine cannot be reached
MAX_BACKOFF_S = 30.0


def watch(source: Watched[S], sink: Sink[S], *, interval: float, once: bool = False,
          notify: Callable[[Event], None] | None = None,
          sleep: Callable[[float], None] = time.sleep) -> S:
    """Refresh ``source`` every ``interval`` seconds until what it watches has ended (or
    just once), handing each snapshot to ``sink``; ``notify`` gets each new event. While the
    machine cannot be reached the wait doubles, up to ``MAX_BACKOFF_S``. Returns the last
    snapshot; an error of a refresh propagates (the sink is closed first)."""
    failures = 0
    try:
        while True:
            snap = source.refresh()
            failures = failures + 1 if snap.connection else 0
            if notify is not None:
                for event in source.events(snap):
                    notify(event)
            if once or (snap.connection is None and is_terminal(snap.state)):
                sink.end(snap)
                return snap
            sink.show(snap)
            sleep(min(interval * 2 ** min(failures, 5), MAX_BACKOFF_S) if failures
                  else interval)
    finally:
        sink.close()
