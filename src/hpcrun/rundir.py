"""The run directory: the one owner of its file names and CSV schemas.

The trainer writes through these helpers; monitor, fetch and report read through them. The
layout (see docs/run-directory.md)::

    runs/<experiment>/<run-id>/
      config.yaml metadata.json status.json failure.json MANIFEST.sha256 logs/
      <stage>/training.csv loss_components.csv gradient_stats.csv gradient_layers.csv
              probability_stats.csv gpu_memory.csv evaluation.csv predictions.csv checkpoints/

CSVs are append-only with one row per epoch (per phase where stated), flushed and fsynced at
the end of each epoch, so a reader never sees a torn row. Pure Python: no torch, no pandas.

One module on purpose (about 1,000 lines): it is the whole contract of a run directory (every
file name and schema, the typed readers of its JSON files, atomic writers, the manifest), so
no other module needs to know how a file is laid out.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import stat as stat_module
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from .formats import STAGE

CONFIG = "config.yaml"
METADATA = "metadata.json"
STATUS = "status.json"
FAILURE = "failure.json"
MANIFEST = "MANIFEST.sha256"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.pt"
BEST_CKPT = "best.pt"

#: written by the job's wrapper around the trainer (the backend), not by the trainer
JOB_SCRIPT = "job.sh"
JOB_PID = "job.pid"
JOB_EXIT = "job.exit"
JOB_CANCELLED = "job.cancelled"
JOB_OUTPUT = f"{LOGS}/job.out"


def rank_log(rank: int) -> str:
    """A rank's own output in the run directory (``logs/train.rank<N>.log``)."""
    return f"{LOGS}/train.rank{rank}.log"


def rank_pid(rank: int) -> str:
    """``logs/rank<N>.pid``: "HOST PID" of the rank's process, for signal forwarding and for
    telling which rank of a job ended first."""
    return f"{LOGS}/rank{rank}.pid"
REPORT = "report"
#: the job's working folder: a mirror of its code snapshot (links), plus what the job writes
#: into its current folder (``./wandb/``, ``./lightning_logs/``), any time
WORK = "work"
#: folders of the run directory that are not stages: a stage may not take their names
RESERVED_STAGE_NAMES = (LOGS, REPORT, CHECKPOINTS, WORK)
#: written after the trainer's MANIFEST (by the wrapper, the scheduler or `hpcrun report`),
#: so the manifest cannot cover them
_UNMANIFESTED = (JOB_SCRIPT, JOB_PID, JOB_EXIT, JOB_CANCELLED, "system.csv")
_UNMANIFESTED_DIRS = (f"{REPORT}/", f"{WORK}/")
#: logs grow until the last process of a job has ended, after the manifest was written; so
#: does system.csv, which the sampler beside the launcher appends to
_UNMANIFESTED_LOGS = ("job.", "slurm-", "pbs-", "scheduler.", "rank", "train.rank")

TRAINING = "training.csv"
LOSS_COMPONENTS = "loss_components.csv"
GRADIENT_STATS = "gradient_stats.csv"
GRADIENT_LAYERS = "gradient_layers.csv"
PROBABILITY_STATS = "probability_stats.csv"
GPU_MEMORY = "gpu_memory.csv"
EVALUATION = "evaluation.csv"
PREDICTIONS = "predictions.csv"
#: every job's samples of its GPUs and processes, at the run directory's top
SYSTEM = "system.csv"
SYSTEM_COLUMNS = ["time", "host", "gpu", "gpu_util_pct", "gpu_mem_used_mb", "gpu_mem_total_mb",
                  "gpu_power_w", "cpu_pct", "rss_mb", "processes"]

#: the classification metrics hpcrun computes, with their display names in training.csv's
#: ``Val <metric>`` columns; the one list config, evaluation.csv and compare use
METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC", "accuracy": "Accuracy", "sensitivity": "Sensitivity",
    "specificity": "Specificity", "precision": "Precision", "recall": "Recall", "f1": "F1",
    "mcc": "MCC",
}
METRICS = tuple(METRIC_LABELS)
EVALUATION_COLUMNS = ["split", *METRICS]
#: evaluation.csv of a regression (``hpcrun.track``'s ``evaluate(..., kind="regression")``)
REGRESSION_COLUMNS = ["split", "rmse", "mae", "r2"]
GRADIENT_COLUMNS = ["epoch", "steps", "norm_mean", "norm_std", "norm_min", "norm_max",
                    "norm_last", "clipped_fraction", "nonfinite_steps"]
GRADIENT_LAYER_COLUMNS = ["epoch", "layer", "norm_mean", "norm_max"]
PROBABILITY_COLUMNS = ["epoch", "phase", "pos_mean", "pos_std", "neg_mean", "neg_std",
                       "separation"]
#: host_total_mb came last, later: files written before it lack the column (it reads as NaN)
MEMORY_COLUMNS = ["epoch", "rank", "host", "device", "allocated_mb", "reserved_mb", "peak_mb",
                  "device_used_mb", "device_total_mb", "utilization_pct", "host_rss_mb",
                  "host_total_mb"]
PREDICTION_COLUMNS = ["split", "index", "label", "probability"]
#: predictions.csv of a multiclass classifier: the probability of the predicted class
MULTICLASS_PREDICTION_COLUMNS = [*PREDICTION_COLUMNS, "prediction"]
#: predictions.csv of a regression: the target and the prediction
REGRESSION_PREDICTION_COLUMNS = ["split", "index", "label", "prediction"]

class State(StrEnum):
    """A job's (or stage's) state: in status.json, the job store and every backend's table.

    Members are strings, so they compare equal to and serialise as their names."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"

    @property
    def terminal(self) -> bool:
        """A state a job does not leave by itself. PREEMPTED means it stopped with its
        checkpoint saved and nothing requeued it (a requeued SLURM job is PENDING again);
        ``submit --resume`` restarts it."""
        return self in TERMINAL_STATES

    @classmethod
    def of(cls, value: object) -> State | None:
        """The state named by ``value``; None for anything else."""
        try:
            return cls(value) if isinstance(value, str) else None
        except ValueError:
            return None


STATES = tuple(State)
TERMINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.PREEMPTED})


def training_columns(metrics: Sequence[str]) -> list[str]:
    """training.csv: ``Epoch,Epoch Time,Train Loss,Val Loss,Val <metric>...,Learning Rate``."""
    return ["Epoch", "Epoch Time", "Train Loss", "Val Loss",
            *(f"Val {METRIC_LABELS.get(m, m)}" for m in metrics), "Learning Rate"]


def loss_component_columns(components: Sequence[str], learned: bool) -> list[str]:
    columns = ["epoch", "phase", *components, "total"]
    if learned:
        columns += [f"weight_{c}" for c in components] + [f"sigma_{c}" for c in components]
    return columns


# --------------------------------------------------------------------------- layout


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metadata(self) -> Path:
        return self.root / METADATA

    @property
    def status(self) -> Path:
        return self.root / STATUS

    @property
    def failure(self) -> Path:
        return self.root / FAILURE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    def stage(self, name: str) -> Path:
        return self.root / name

    def checkpoints(self, stage: str) -> Path:
        return self.root / stage / CHECKPOINTS

    def checkpoint(self, stage: str, which: str = "best") -> Path:
        return self.checkpoints(stage) / f"{which}.pt"

    def stages(self) -> list[str]:
        """Stage directories present, in pipeline order when the status knows it."""
        order = list(read_status(self.status).stages)
        stage_files = (TRAINING, EVALUATION, PREDICTIONS, CHECKPOINTS)
        present = [p.name for p in sorted(self.root.iterdir())
                   if p.is_dir() and p.name not in RESERVED_STAGE_NAMES
                   and any((p / f).exists() for f in stage_files)
                   ] if self.root.is_dir() else []
        return [s for s in order if s in present] + [s for s in present if s not in order]


def new_run_id(now: float, token: str) -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{token}"


# --------------------------------------------------------------------------- writing


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], object],
                 mode: int | None = None) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` so a
    reader sees the old or the new file, never a torn one: temp file, fsync, rename, fsync
    of the directory. The file gets ``mode`` (default: what ``open`` gives under the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    write_atomic(path, (text + "\n").encode())


def open_regular(path: Path | str) -> BinaryIO:
    """A file of a run directory (or a bundle) opened for reading: a regular file only, not
    through a symbolic link, and never blocking: a FIFO or a device in a CSV's place (which
    would hang every reader), or a link to a file outside the run, is an OSError, which every
    reader takes as "not there"."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: Path | str) -> str:
    """A run-directory file's text (``open_regular``), undecodable bytes replaced."""
    with open_regular(path) as handle:
        return handle.read().decode("utf-8", errors="replace")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(value: Any) -> Any:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 output (a
    terminal, the HTML report) can carry: each becomes U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_no_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_no_surrogates(k): _no_surrogates(v) for k, v in value.items()}
    return value


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return _no_surrogates(json.loads(read_text(path)))
    except (OSError, ValueError, RecursionError):  # deeply nested: not a record of ours
        return None


# --------------------------------------------------------------------------- records
#
# status.json, failure.json and metadata.json as typed values. Reading is tolerant: a file
# that is missing, torn or not JSON, or a field of the wrong type, reads as missing (None),
# never as an exception: these files are read while other processes write them, from runs
# of earlier versions, and from remote machines.


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _whole(value: Any) -> int | None:
    """A whole number (3, 3.0 or "3"); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    return to_int(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass
class Status:
    """status.json: the run's state, its stage and epoch (the heartbeat), per-stage states."""

    state: State | None = None
    stage: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    stages: dict[str, State] = field(default_factory=dict)
    message: str | None = None
    updated_at: float | None = None
    run_id: str | None = None
    experiment: str | None = None

    @classmethod
    def of(cls, data: Any) -> Status:
        data = data if isinstance(data, dict) else {}
        stages = data.get("stages")
        stage = _text(data.get("stage"))
        # the stage names a folder here: a name no stage can have (a '/', a NUL) is no stage
        return cls(state=State.of(data.get("state")),
                   stage=stage if STAGE.matches(stage) else None,
                   epoch=_whole(data.get("epoch")), epochs=_whole(data.get("epochs")),
                   stages={str(k): state for k, v in stages.items()
                           if (state := State.of(v)) is not None}
                   if isinstance(stages, dict) else {},
                   message=_text(data.get("message")),
                   updated_at=_number(data.get("updated_at")),
                   run_id=_text(data.get("run_id")), experiment=_text(data.get("experiment")))

    def detail(self) -> dict[str, Any]:
        """What a backend reports of the run beside the job's state."""
        found = {"stage": self.stage, "epoch": self.epoch, "epochs": self.epochs,
                 "stages": dict(self.stages) or None, "message": self.message}
        return {k: v for k, v in found.items() if v is not None}

    def succeeded(self) -> set[str]:
        """The stages that finished (a resume skips them)."""
        return {name for name, state in self.stages.items() if state is State.SUCCEEDED}


@dataclass
class Failure:
    """failure.json: the first rank to fail, where, and how (absent when nothing failed)."""

    exception: str | None = None
    rank: int | None = None
    host: str | None = None
    pid: int | None = None
    stage: str | None = None
    epoch: int | None = None
    traceback: list[str] = field(default_factory=list)
    time: float | None = None
    exit_code: int | None = None

    @classmethod
    def of(cls, data: Any) -> Failure | None:
        if not isinstance(data, dict) or not data:
            return None
        trace = data.get("traceback")
        lines = [trace] if isinstance(trace, str) else [str(x) for x in trace] \
            if isinstance(trace, list) else []
        exception = data.get("exception")
        return cls(exception=None if exception is None else str(exception),
                   rank=_whole(data.get("rank")), host=_text(data.get("host")),
                   pid=_whole(data.get("pid")), stage=_text(data.get("stage")),
                   epoch=_whole(data.get("epoch")), traceback=lines,
                   time=_number(data.get("time")), exit_code=_whole(data.get("exit_code")))

    def who(self) -> str:
        """``rank 1 on node2``, as messages name the failing rank."""
        return f"rank {self.rank} on {self.host}"

    def brief(self) -> dict[str, Any]:
        """What a triage shows of it."""
        found = {"rank": self.rank, "host": self.host, "stage": self.stage,
                 "epoch": self.epoch, "exception": self.exception}
        return {k: v for k, v in found.items() if v is not None}


@dataclass
class Metadata:
    """metadata.json: the fields hpcrun reads back (the file holds more: versions, git, data,
    one entry per start)."""

    run_id: str | None = None
    experiment: str | None = None
    state: str | None = None
    pipeline: list[str] = field(default_factory=list)
    world_size: int | None = None
    hosts: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, data: Any) -> Metadata:
        data = data if isinstance(data, dict) else {}

        def texts(value: Any) -> list[str]:
            return [str(v) for v in value] if isinstance(value, list) else []

        return cls(run_id=_text(data.get("run_id")), experiment=_text(data.get("experiment")),
                   state=_text(data.get("state")), pipeline=texts(data.get("pipeline")),
                   world_size=_whole(data.get("world_size")), hosts=texts(data.get("hosts")),
                   job_ids=texts(data.get("job_ids")))


def read_status(path: str | os.PathLike[str]) -> Status:
    return Status.of(read_json(Path(path)))


def read_failure(path: str | os.PathLike[str]) -> Failure | None:
    return Failure.of(read_json(Path(path)))


def read_metadata(path: str | os.PathLike[str]) -> Metadata:
    return Metadata.of(read_json(Path(path)))


def format_value(value: Any) -> str:
    """CSV cell text. Floats keep full precision (``repr``); NaN is ``nan``, None is empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)
    return str(value)


class CsvLog:
    """An append-only CSV with a fixed header. ``sync()`` makes written rows durable.

    A file written by an earlier version whose header is the start of ``columns`` (columns
    are only ever added at the end) is continued with its own header: a resumed run keeps one
    schema per file."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = list(columns)
        self._width = len(self.columns)  # values a row is given
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists:
            header = read_header(self.path)
            if header != self.columns[:len(header)] or not header:
                raise ValueError(f"{self.path}: header {header} differs from {self.columns}")
            self.columns = header
        self._handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._handle, lineterminator="\n")
        if not exists:
            self._writer.writerow(self.columns)

    def write(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        if isinstance(row, Mapping):
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise KeyError(f"{self.path.name}: row lacks {missing}")
            values = [row[c] for c in self.columns]
        else:
            if len(row) != self._width:
                raise ValueError(f"{self.path.name}: {len(row)} values for "
                                 f"{self._width} columns")
            values = list(row)[:len(self.columns)]
        self._writer.writerow([format_value(v) for v in values])

    def sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self.sync()
            self._handle.close()

    def abandon(self) -> None:
        """Close after a failure without raising again: rows that could not be flushed are
        lost either way, and the error already on its way is the one to report."""
        try:
            self._handle.close()
        except (OSError, ValueError):
            pass


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a whole CSV atomically (for files produced once, e.g. predictions.csv)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(v) for v in row])
    write_atomic(Path(path), buffer.getvalue().encode())


def truncate_epochs(path: Path, last_epoch: int) -> int:
    """Drop rows whose first column (the epoch) is past ``last_epoch``; return rows dropped.

    Used on resume so that no epoch appears twice. A torn final line is dropped too.
    """

    def keep(row: list[str]) -> bool:
        try:
            return int(row[0]) <= last_epoch
        except (ValueError, IndexError):
            return False

    return filter_rows(path, keep)


def filter_rows(path: Path, keep: Callable[[list[str]], bool]) -> int:
    """Rewrite ``path`` (atomically) with the rows ``keep`` accepts; return rows dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    raw = read_text(path)
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # an unterminated last line was being written when the job died
    if not lines:
        return 0
    kept = [lines[0]]
    dropped = 0
    for line in lines[1:]:
        row = next(csv.reader([line]), [])
        if keep(row):
            kept.append(line)
        else:
            dropped += 1
    new = "\n".join(kept) + "\n"
    if new != raw:
        write_atomic(path, new.encode())
    return dropped


# --------------------------------------------------------------------------- reading


def read_header(path: Path) -> list[str]:
    with open_regular(path) as handle:
        first = handle.readline().decode("utf-8", errors="replace")
    return next(csv.reader([first]), [])


def _complete_rows(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    """A CSV's header and its complete, non-blank rows (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return None, []
    try:
        text = read_text(path)
    except OSError:
        return None, []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    return header, [row for row in rows if row]


def read_rows(path: Path) -> list[dict[str, str]]:
    """Every complete row of a CSV as a dict of strings (a torn last line is ignored)."""
    header, rows = _complete_rows(path)
    if header is None:
        return []
    # csv.DictReader's result (short rows padded with None, blank lines skipped) at about
    # half its cost
    pad = [None] * len(header)
    return [dict(zip(header, row if len(row) >= len(header) else row + pad, strict=False))
            for row in rows]


class Table:
    """A CSV read by columns: what summaries of hundreds of runs need (a few columns of
    every file) at a fraction of the cost of a dict per row."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[str]]):
        self.header = list(header)
        width = len(self.header)
        pad = [""] * width
        padded = [row if len(row) >= width else [*row, *pad[len(row):]] for row in rows]
        # tuples of strings, which the garbage collector stops tracking, where a list per row
        # would be traversed at every collection while hundreds of runs are held
        self._columns = dict(zip(self.header, zip(*padded, strict=False), strict=False))
        self._length = len(padded)

    def __len__(self) -> int:
        return self._length

    def column(self, name: str) -> Sequence[str]:
        """The column's texts ("" for each row when the file has no such column)."""
        return self._columns.get(name) or ("",) * self._length

    def floats(self, name: str) -> list[float]:
        return [to_float(text) for text in self.column(name)]

    def rows(self) -> list[dict[str, str]]:
        return [dict(zip(self.header, values, strict=True))
                for values in zip(*(self.column(c) for c in self.header), strict=True)]


def read_table(path: Path) -> Table:
    """Every complete row of a CSV, by column (empty when the file does not exist)."""
    header, rows = _complete_rows(path)
    return Table(header or [], rows)


class CsvTail:
    """Reads a CSV incrementally: each ``refresh()`` reads only the bytes appended since the
    last one and returns the new complete rows (a torn last line waits for its newline). A
    file that was rewritten (resume truncation: it shrank, or it is a new file) is read again
    from the start, ``rows`` is replaced and ``generation`` goes up, so that whatever was
    derived from the old rows knows to start again. Blank lines are skipped, and a line the
    csv module cannot parse (a NUL byte, an oversized field) is dropped, not raised."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header: list[str] | None = None
        self.rows: list[dict[str, str]] = []
        self.generation = 0
        self._offset = 0
        self._identity: tuple[int, int] | None = None
        self._pending = b""
        # each row is converted once: per (column, filter), the rows looked at and the floats
        self._floats: dict[tuple[str, tuple[str, str] | None], _Derived] = {}
        self._index: dict[str, _Derived] = {}

    def _reset(self) -> None:
        self.header, self.rows, self._offset, self._pending = None, [], 0, b""
        self._floats, self._index = {}, {}
        self.generation += 1

    def refresh(self) -> list[dict[str, str]]:
        try:
            stat = self.path.stat()
        except OSError:
            if self._identity is not None:
                self._reset()
                self._identity = None
            return []
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._offset:
            self._reset()
            self._identity = identity
        if stat.st_size == self._offset:
            return []
        try:
            with open_regular(self.path) as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        end = data.rfind(b"\n") + 1
        complete, self._pending = data[:end], data[end:]
        lines = complete.decode("utf-8", errors="replace").splitlines()
        if self.header is None and lines:
            first = _parse_lines(lines[:1])
            self.header, lines = (first[0] if first else []), lines[1:]
        header = self.header or []
        new = [dict(zip(header, values, strict=False)) for values in _parse_lines(lines)]
        self.rows.extend(new)
        return new

    def floats(self, column: str, where: tuple[str, str] | None = None) -> list[float]:
        """The column as floats (NaN where a cell is empty, missing or not a number), each
        row converted once: a call converts only the rows read since the previous one.
        ``where=(other, text)`` keeps the rows whose ``other`` cell is ``text`` (e.g.
        ``("phase", "val")``). The list is the cache itself: read it, do not change it."""
        derived = self._floats.get((column, where))
        if derived is None:
            derived = self._floats[(column, where)] = _Derived([])
        rows = self.rows
        if derived.seen < len(rows):
            new = rows[derived.seen:]
            if where is not None:
                key, text = where
                new = [r for r in new if r.get(key) == text]
            texts, values = [r.get(column) for r in new], derived.value
            before = len(values)
            try:  # every cell a number: one pass in C
                values.extend(map(float, texts))  # type: ignore[arg-type]
            except (TypeError, ValueError):  # an empty or damaged cell: cell by cell
                del values[before:]
                values.extend(map(to_float, texts))
            derived.seen = len(rows)
        return derived.value

    def index(self, column: str) -> dict[str, list[int]]:
        """Row numbers by the text of ``column`` (e.g. each rank's rows), kept up to date the
        same way as ``floats``."""
        derived = self._index.get(column)
        if derived is None:
            derived = self._index[column] = _Derived({})
        rows, groups = self.rows, derived.value
        for i in range(derived.seen, len(rows)):
            groups.setdefault(rows[i].get(column) or "", []).append(i)
        derived.seen = len(rows)
        return groups


class _Derived:
    """Something computed from a CSV's rows and the number of rows it has seen."""

    __slots__ = ("seen", "value")

    def __init__(self, value: Any):
        self.seen, self.value = 0, value


def _parse_lines(lines: list[str]) -> list[list[str]]:
    """csv rows of ``lines``, without blank ones; a line the csv module rejects is dropped
    rather than ending the read (a damaged file still shows its other rows)."""
    try:
        return [row for row in csv.reader(lines) if row]
    except csv.Error:
        out = []
        for line in lines:
            try:
                out.extend(row for row in csv.reader([line]) if row)
            except csv.Error:
                continue
        return out


class RunTables:
    """Every CSV of one run directory through its own ``CsvTail``: ``rows(path)`` costs only
    the bytes appended since the previous ``refresh()``, and ``floats(path, column)`` only
    the conversion of those rows. ``refresh()`` starts a new round: each file is then read at
    most once until the next one. A fresh ``RunTables`` reads a run directory whole (what
    ``fetch`` does); one kept between refreshes reads it incrementally (what ``monitor``
    does): the readers above it are the same."""

    def __init__(self) -> None:
        self._tails: dict[Path, CsvTail] = {}
        self._fresh: set[Path] = set()

    def refresh(self) -> None:
        self._fresh.clear()

    def tail(self, path: Path) -> CsvTail:
        """The file's reader, brought up to date once per round."""
        path = Path(path)
        tail = self._tails.get(path)
        if tail is None:
            tail = self._tails[path] = CsvTail(path)
        if path not in self._fresh:
            tail.refresh()
            self._fresh.add(path)
        return tail

    def rows(self, path: Path) -> list[dict[str, str]]:
        return self.tail(path).rows

    def floats(self, path: Path, column: str,
               where: tuple[str, str] | None = None) -> list[float]:
        return self.tail(path).floats(column, where)


#: what a live view of a run reads: the small JSON files and the per-epoch CSVs (not the
#: predictions or per-layer gradients, which only a report needs)
WATCHED_FILES = (CONFIG, STATUS, FAILURE, METADATA, SYSTEM)
WATCHED_CSVS = (TRAINING, LOSS_COMPONENTS, GRADIENT_STATS, PROBABILITY_STATS, GPU_MEMORY,
                EVALUATION)


def read_since(root: str | os.PathLike[str], known: Mapping[str, Sequence[Any]]
               ) -> dict[str, dict[str, Any]]:
    """The watched files of a run directory that changed since ``known`` ({run-relative
    path: [file identity, bytes already read]}): for each, the bytes after that offset, or
    the whole file (``"reset": True``) when it is a different file or shrank. Bytes travel
    as latin-1 text, so the answer is JSON. Runs where the files are (``hpcrun.agent``)."""
    root = Path(root)
    names = [n for n in WATCHED_FILES if (root / n).is_file()]
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir()
                             if p.is_dir() and p.name not in RESERVED_STAGE_NAMES):
            names += [f"{folder.name}/{n}" for n in WATCHED_CSVS if (folder / n).is_file()]
    out: dict[str, dict[str, Any]] = {}
    for rel in names:
        try:
            with open_regular(root / rel) as handle:
                stat = os.fstat(handle.fileno())
                # CSVs only grow in place (a rewrite is a new file); the small files may be
                # rewritten in place, so any change of theirs sends them whole
                identity = [stat.st_dev, stat.st_ino,
                            0 if rel.endswith(".csv") else stat.st_mtime_ns]
                last_identity, offset = (known.get(rel) or [None, 0])[:2]
                reset = identity != last_identity or stat.st_size < offset
                if not reset and stat.st_size == offset:
                    continue
                handle.seek(0 if reset else offset)
                data = handle.read()
        except OSError:
            continue
        out[rel] = {"identity": identity, "reset": reset, "data": data.decode("latin-1")}
    return out


def mirror(root: Path, changes: Mapping[str, Mapping[str, Any]],
           known: dict[str, list[Any]]) -> None:
    """Apply ``read_since``'s answer to a local copy of the run directory and remember what
    was read in ``known``. A rewritten file is replaced (new identity), so a ``CsvTail`` on
    the copy starts it again; appended bytes are appended."""
    root = Path(root).resolve()
    for rel, change in changes.items():
        path = (root / rel).resolve()
        if root not in path.parents:  # a hostile answer must not write outside the copy
            continue
        data = change["data"].encode("latin-1")
        if change["reset"]:
            write_atomic(path, data)
            offset = len(data)
        else:
            with open(path, "ab") as handle:
                handle.write(data)
            offset = int((known.get(rel) or [None, 0])[1]) + len(data)
        known[rel] = [change["identity"], offset]


def to_float(text: Any) -> float:
    """A CSV cell as a float; NaN where it is empty, missing or not a number."""
    if text is None or text == "":
        return math.nan
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def to_int(text: Any) -> int | None:
    """A whole-number cell (an epoch, a rank, a count); None where it is not one."""
    value = to_float(text)
    return int(value) if math.isfinite(value) and value.is_integer() else None


# --------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifested(rel: str) -> bool:
    """Whether the trainer's manifest covers this run-relative path."""
    if rel in _UNMANIFESTED or rel.startswith(_UNMANIFESTED_DIRS):
        return False
    name = rel[len(LOGS) + 1:]
    return not (rel.startswith(f"{LOGS}/") and name.startswith(_UNMANIFESTED_LOGS))


def manifest_entries(root: Path) -> list[tuple[str, str]]:
    root = Path(root)
    entries = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if manifested((here / d).relative_to(root).as_posix() + "/")]
        for name in files:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if name == MANIFEST or name.startswith(".") or not manifested(rel) \
                    or not stat_module.S_ISREG(path.lstat().st_mode):
                continue
            entries.append((sha256_file(path), rel))
    return sorted(entries, key=lambda entry: Path(entry[1]).parts)


def write_manifest(root: Path) -> Path:
    """``MANIFEST.sha256`` in sha256sum's format, written last, atomically."""
    text = "".join(f"{digest}  {rel}\n" for digest, rel in manifest_entries(root))
    path = Path(root) / MANIFEST
    write_atomic(path, text.encode())
    return path


def verify_manifest(root: Path) -> list[str]:
    """Problems found (empty when every listed file matches its checksum)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        return [f"{MANIFEST} is missing"]
    problems = []
    try:
        listed = read_text(path).splitlines()
    except OSError as exc:
        return [f"{MANIFEST} cannot be read: {exc.strerror or exc}"]
    for line in listed:
        digest, _, rel = line.partition("  ")
        target = (root / rel).resolve()
        if not rel or root.resolve() not in target.parents:
            problems.append(f"{rel!r}: path outside the run directory")
            continue
        try:
            if sha256_file(target) != digest:
                problems.append(f"{rel}: checksum mismatch")
        except OSError:
            problems.append(f"{rel}: missing (or not a regular file)")
    return problems


# --------------------------------------------------------------------------- job scripts


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcrun.rundir preempted RUN_DIR``: exit 0 when the run's status.json says
    PREEMPTED (a job script decides whether to requeue itself), 1 otherwise."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "preempted":
        print("usage: python -m hpcrun.rundir preempted RUN_DIR", file=sys.stderr)
        return 2
    return 0 if read_status(Path(args[1]) / STATUS).state is State.PREEMPTED else 1


if __name__ == "__main__":
    raise SystemExit(main())
