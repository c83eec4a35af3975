"""The job index: SQLite in the XDG state directory, safe under concurrent submits.

Each submit adds its records in one transaction; WAL mode and a generous busy timeout let many
``hpcrun submit`` processes write at once without losing a record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import BadInput, OperationFailed
from .job import JobInfo, JobRecord, parse_handle

_COLUMNS = ("id", "backend", "host", "experiment", "run_dir", "project_dir", "native_id",
            "state", "submitted_at", "updated_at", "grp", "info")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    host TEXT NOT NULL,
    experiment TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    project_dir TEXT NOT NULL,
    native_id TEXT,
    state TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    grp TEXT,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project_dir, submitted_at);
"""


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hpcrun"


def default_path() -> Path:
    return Path(os.environ.get("HPCRUN_STORE") or state_dir() / "jobs.sqlite")


class JobStore:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # this user's only; SQLite gives the -wal and -shm files the database's mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._unreadable(exc) from None
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA journal_mode = WAL")
            yield db
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:  # not a database, truncated, malformed
            raise self._unreadable(exc) from None
        finally:
            db.close()

    def _unreadable(self, exc: Exception) -> OperationFailed:
        return OperationFailed(
            f"the job store {self.path} cannot be read: {exc}",
            hint=f"move it aside (mv {self.path} {self.path}.broken) and run the command "
                 "again; run directories are not in it and stay as they are")

    def taken(self, ids: list[str]) -> set[str]:
        """Those of ``ids`` that jobs in the store already have."""
        if not ids:
            return set()
        with self._connect() as db:
            marks = ",".join("?" * len(ids))
            rows = db.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", ids).fetchall()
        return {row[0] for row in rows}

    @staticmethod
    def _row(record: JobRecord) -> tuple[Any, ...]:
        return (record.id, record.backend, record.host, record.experiment, record.run_dir,
                record.project_dir, record.native_id, record.state, record.submitted_at,
                record.updated_at, record.group, json.dumps(record.info.to_dict()))

    @staticmethod
    def _record(row: tuple[Any, ...]) -> JobRecord:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["group"] = values.pop("grp")
        try:
            values["info"] = JobInfo.of(json.loads(values["info"] or "{}"))
        except ValueError:  # a hand-edited store: the record stays readable
            values["info"] = JobInfo()
        return JobRecord(**values)

    def add(self, records: list[JobRecord]) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    record.submitted_at = record.submitted_at or now
                    record.updated_at = now
                    db.execute(f"INSERT INTO jobs VALUES ({','.join('?' * len(_COLUMNS))})",
                               self._row(record))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def update(self, job_id: str, **changes: Any) -> None:
        allowed = {"native_id", "state", "info", "run_dir"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        if "info" in changes:
            changes["info"] = json.dumps(changes["info"].to_dict())
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{key} = ?" for key in changes)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changes.values(), job_id))

    def get(self, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
        return self._record(row) if row else None

    def list(self, project_dir: str | None = None, group: str | None = None,
             limit: int | None = None, top_level: bool = False) -> list[JobRecord]:
        """Newest first; ``top_level``: jobs and sweeps, not the points of sweeps."""
        query = f"SELECT {','.join(_COLUMNS)} FROM jobs"
        clauses, params = [], []
        if top_level:
            clauses.append("grp IS NULL")
        if project_dir is not None:
            clauses.append("project_dir = ?")
            params.append(project_dir)
        if group is not None:
            clauses.append("grp = ?")
            params.append(group)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY submitted_at DESC, rowid DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        with self._connect() as db:
            return [self._record(row) for row in db.execute(query, params).fetchall()]

    def resolve(self, ref: str | None, project_dir: str | None = None) -> JobRecord:
        """A job from ``latest`` (default), a full id, a unique id prefix or a handle.

        ``latest`` means this project's most recent submission (after a sweep, the sweep, not
        its last point); ids and prefixes search every project.
        """
        ref = (ref or "latest").strip()
        if ref == "latest":
            jobs = self.list(project_dir=project_dir, limit=1, top_level=True)
            if not jobs:
                where = f" in {project_dir}" if project_dir else ""
                raise BadInput(f"no jobs submitted{where} yet", hint="hpcrun submit v3")
            return jobs[0]
        handle = parse_handle(ref)
        job_id = handle[2] if handle else ref
        if not job_id or not all(c in "0123456789abcdef" for c in job_id):
            raise BadInput(f"not a job id: {ref!r} (use an id from `hpcrun list`, a unique "
                           "prefix of one, a handle, or 'latest')")
        with self._connect() as db:
            rows = db.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id LIKE ? "
                              "ORDER BY submitted_at DESC LIMIT 6", (job_id + "%",)).fetchall()
        if not rows:
            raise BadInput(f"no job matches {ref!r}", hint="hpcrun list --all")
        if len(rows) > 1 and rows[0][0] != job_id:
            ids = ", ".join(r[0] for r in rows[:5])
            raise BadInput(f"job id prefix {ref!r} is ambiguous: {ids}; give more characters")
        record = self._record(rows[0])
        if handle and (record.backend, record.host) != handle[:2]:
            raise BadInput(f"no job matches {ref!r} (job {record.id} is {record.handle})")
        return record
