"""The run's shared records: metadata.json, status.json, failure.json and MANIFEST.sha256.

One writer for every kind of job: hpcrun's trainer, ``hpcrun.track`` in your own loop, and
``hpcrun.rank`` around a program that never imports hpcrun. Imports neither torch nor numpy.
Rank 0 writes metadata and status; the first rank to fail writes failure.json.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__, rundir

#: how many lines of a traceback failure.json keeps
TRACEBACK_LINES = 25


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def job_id() -> str | None:
    """The scheduler's id for this start (array tasks as ARRAYID_TASK), else hpcrun's."""
    for name in ("SLURM_JOB_ID", "PBS_JOBID", "HPCRUN_JOB_ID"):
        if os.environ.get(name):
            value = os.environ[name]
            if name == "SLURM_JOB_ID" and os.environ.get("SLURM_ARRAY_TASK_ID"):
                value = f"{os.environ.get('SLURM_ARRAY_JOB_ID', value)}_" \
                        f"{os.environ['SLURM_ARRAY_TASK_ID']}"
            return value
    return None


def git_state() -> dict[str, Any]:
    """The commit the job's bundle was made from (submit passes it on), else the working
    directory's."""
    if "HPCRUN_GIT_COMMIT" in os.environ:
        dirty = os.environ.get("HPCRUN_GIT_DIRTY", "")
        return {"commit": os.environ["HPCRUN_GIT_COMMIT"] or None,
                "dirty": {"1": True, "0": False}.get(dirty)}
    from ..bundle import git_state as state

    return state(Path.cwd()).as_dict()


def versions() -> dict[str, Any]:
    """Python, torch, CUDA and hpcrun versions, without importing torch when it is not
    imported already."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        found = {"torch": torch.__version__, "cuda": torch.version.cuda}
    else:
        from importlib import metadata

        try:
            found = {"torch": metadata.version("torch"), "cuda": None}
        except metadata.PackageNotFoundError:
            found = {"torch": None, "cuda": None}
    return {"python": platform.python_version(), **found, "hpcrun": __version__}


def mark_failed(status: dict[str, Any], message: str) -> None:
    """The running stage FAILED; the stages after it CANCELLED, saying why."""
    stages = status.setdefault("stages", {})
    current = status.get("stage")
    if current in stages:
        stages[current] = "FAILED"
    for name, value in stages.items():
        if value in ("PENDING", "RUNNING") and name != current:
            stages[name] = "CANCELLED"
    prefix = f"stage {current} failed: " if current else ""
    status.update(state="FAILED", message=(prefix + message)[:400], updated_at=time.time())


class RunRecords:
    """Rank 0's view of a run's shared files (metadata.json, status.json)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.dir = rundir.RunDir(root)
        self.status: dict[str, Any] = {}

    def start(self, experiment: str, stages: Sequence[str], *, world_size: int, hosts: list[str],
              extra: dict[str, Any] | None = None, host: str | None = None) -> None:
        """Record a start of the run (a first start, a resume or a requeue): metadata.json
        gains this start, status.json says RUNNING and keeps the stages already done."""
        run = self.dir
        run.root.mkdir(parents=True, exist_ok=True)
        run.logs.mkdir(exist_ok=True)
        meta = rundir.read_json(run.metadata) or {
            "run_id": run.root.name, "experiment": experiment,
            "created_at": now_text(), "job_ids": [], "runs": [],
        }
        meta.setdefault("job_ids", [])
        meta.setdefault("runs", [])
        this_job = job_id()
        if this_job and this_job not in meta["job_ids"]:
            meta["job_ids"].append(this_job)
        meta.update({
            "hpcrun_job_id": os.environ.get("HPCRUN_JOB_ID"),
            "backend": os.environ.get("HPCRUN_BACKEND", "local"),
            "hosts": hosts, "world_size": world_size,
            "git": git_state(), "bundle_hash": os.environ.get("HPCRUN_BUNDLE_HASH"),
            "versions": versions(),
            "sweep_overrides": json.loads(os.environ.get("HPCRUN_SWEEP_OVERRIDES", "null")),
            "pipeline": list(stages), **(extra or {}),
        })
        previous = rundir.read_json(run.status) or {}
        meta["runs"].append({"job_id": this_job, "restart": os.environ.get("SLURM_RESTART_COUNT"),
                             "started_at": now_text(), "ended_at": None, "state": "RUNNING",
                             "pid": os.getpid(), "host": host or socket.gethostname(),
                             "resumed": bool(previous)})
        rundir.write_json(run.metadata, meta)
        done = previous.get("stages") if isinstance(previous.get("stages"), dict) else {}
        self.status = {
            "state": "RUNNING", "run_id": run.root.name, "experiment": experiment,
            "stage": None, "epoch": 0, "epochs": None,
            "stages": {name: done.get(name, "PENDING") for name in stages},
            "message": None, "updated_at": time.time(),
        }
        self.write_status()

    def load(self) -> dict[str, Any]:
        """Continue from status.json as it is (another process of the run started it)."""
        found = rundir.read_json(self.dir.status)
        self.status = found if isinstance(found, dict) else {}
        return self.status

    def write_status(self, **changes: Any) -> None:
        self.status.update(changes, updated_at=time.time())
        rundir.write_json(self.dir.status, self.status)

    def stage_done(self, name: str) -> bool:
        return (self.status.get("stages") or {}).get(name) == "SUCCEEDED"

    def begin_stage(self, name: str, epochs: int | None = None) -> None:
        self.status.setdefault("stages", {})[name] = "RUNNING"
        self.write_status(state="RUNNING", stage=name, epoch=0, epochs=epochs, message=None)

    def end_stage(self, name: str) -> None:
        """Stage ``name`` succeeded: the run has succeeded when no stage is left."""
        stages = self.status.setdefault("stages", {})
        stages[name] = "SUCCEEDED"
        remaining = [s for s, state in stages.items() if state != "SUCCEEDED"]
        if remaining:
            self.finish("PENDING", f"waiting for stage {remaining[0]}")
        else:
            self.finish("SUCCEEDED")

    def preempted(self, name: str | None, message: str) -> None:
        if name is not None:
            self.status.setdefault("stages", {})[name] = "PREEMPTED"
        self.finish("PREEMPTED", message)

    def fail(self, message: str) -> None:
        mark_failed(self.status, message)
        self.finish("FAILED", self.status["message"])

    def finish(self, state: str, message: str | None = None) -> None:
        self.write_status(state=state, message=message)
        meta = rundir.read_json(self.dir.metadata)
        if not isinstance(meta, dict):
            return
        runs = meta.get("runs") or [{}]
        runs[-1].update(ended_at=now_text(), state=state)
        meta.update(runs=runs, ended_at=now_text(), state=state)
        rundir.write_json(self.dir.metadata, meta)


def create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` holding ``text`` whole, or raise FileExistsError if it exists: a reader
    never sees a half-written record, and a full disk leaves no empty one behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if the record exists, like O_EXCL
        except FileExistsError:
            raise
        except OSError:  # no hard links on this filesystem: create it in place
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    rundir.fsync_dir(path.parent)


def failure_record(*, rank: int, exception: str, trace: Sequence[str],
                   stage: str | None = None, epoch: int | None = None,
                   **extra: Any) -> dict[str, Any]:
    """failure.json's fields: who failed, where, and how."""
    return {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
            "stage": stage, "epoch": epoch, "exception": exception.strip(),
            "traceback": list(trace)[-TRACEBACK_LINES:], "time": time.time(), **extra}


def exception_record(exc: BaseException, *, rank: int, stage: str | None = None,
                     epoch: int | None = None) -> dict[str, Any]:
    return failure_record(rank=rank, exception=f"{type(exc).__name__}: {exc}",
                          trace="".join(traceback.format_exception(exc)).splitlines(),
                          stage=stage, epoch=epoch)


def record_failure(root: Path, info: dict[str, Any]) -> bool:
    """Write failure.json unless another rank already has (the first failure is the root
    cause). True when this record was written."""
    path = rundir.RunDir(root).failure
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_exclusive(path, json.dumps(info, indent=2))
        return True
    except FileExistsError:
        return False


def set_aside_failure(root: Path) -> None:
    """A rerun of a failed run keeps the old failure record beside, renamed."""
    failure = rundir.RunDir(root).failure
    if failure.exists():
        failure.rename(failure.with_name(f"failure-{int(failure.stat().st_mtime)}.json"))


def last_exception_line(lines: Sequence[str]) -> str | None:
    """The last line of the last Python traceback in ``lines`` (``ValueError: bad``)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return None
    last = None
    for line in lines[starts[-1] + 1:]:
        if line.startswith((" ", "\t")) or not line.strip():
            continue
        last = line.strip()
        if not line.startswith(("During handling", "The above exception")):
            break
    return last
