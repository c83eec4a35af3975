"""ops over many jobs at once, against an in-memory scheduler: a sweep is cancelled in one
request, ends CANCELLED even when the scheduler forgets the points it never started, and
`list` counts the rows it shows."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from hpcrun import ops
from hpcrun.job import JobInfo, JobRecord, JobStatus, is_terminal
from hpcrun.store import JobStore


class Scheduler:
    """Forgets a pending job the moment it is cancelled (as SLURM does with array tasks that
    never started once squeue and the accounting have nothing on them)."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.calls: list[tuple[str, int]] = []

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        self.calls.append(("status", len(records)))
        return {r.id: JobStatus(self.states[r.id]) if r.id in self.states
                else JobStatus("UNKNOWN", reason="the scheduler no longer knows the job")
                for r in records}

    def cancel(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        self.calls.append(("cancel", len(records)))
        for record in records:
            state = self.states.get(record.id)
            if state == "PENDING":
                del self.states[record.id]
            elif state == "RUNNING":
                self.states[record.id] = "CANCELLED"
        return self.status(records)


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    scheduler = Scheduler()
    monkeypatch.setattr(ops.jobs, "backend_for", lambda record, project_dir=None: scheduler)
    return tmp_path, scheduler, JobStore()


def _sweep(tmp_path, store: JobStore, points: int, running: int, scheduler: Scheduler
           ) -> JobRecord:
    now = time.time()
    group = JobRecord(id="5" * 12, backend="slurm", host="h", experiment="v3",
                      run_dir=str(tmp_path / "runs" / "v3" / "sweep"),
                      project_dir=str(tmp_path), submitted_at=now)
    members = [JobRecord(id=f"{i:012x}", backend="slurm", host="h", experiment="v3",
                         run_dir=str(tmp_path / "runs" / "v3" / f"p{i}"),
                         project_dir=str(tmp_path), submitted_at=now, group=group.id)
               for i in range(points)]
    group.info = JobInfo(kind="sweep", points=[m.id for m in members])
    store.add([group, *members])
    for index, member in enumerate(members):
        scheduler.states[member.id] = "RUNNING" if index < running else "PENDING"
    return group


def test_a_200_point_sweep_is_cancelled_in_one_request_and_ends_cancelled(world):
    tmp_path, scheduler, store = world
    group = _sweep(tmp_path, store, 200, 7, scheduler)
    [view] = ops.cancel(group.id, tmp_path, store)
    assert [c for c in scheduler.calls if c[0] == "cancel"] == [("cancel", 201)]
    assert view.status.state == "CANCELLED", view.status
    assert all(c.status.state == "CANCELLED" for c in view.children)
    # later reads: the scheduler still knows nothing of 193 points; what was seen last stays
    [again] = ops.status([group.id], tmp_path, store)
    assert again.status.state == "CANCELLED" and is_terminal(again.status.state)
    assert store.get(f"{199:012x}").state == "CANCELLED"


def test_a_sweep_cancelled_after_it_succeeded_stays_succeeded(world):
    tmp_path, scheduler, store = world
    group = _sweep(tmp_path, store, 3, 0, scheduler)
    scheduler.states.update({f"{i:012x}": "SUCCEEDED" for i in range(3)})
    [view] = ops.cancel(group.id, tmp_path, store)
    assert view.status.state == "SUCCEEDED", view.status


def test_points_the_scheduler_forgot_do_not_hold_a_sweep_pending(world):
    tmp_path, scheduler, store = world
    group = _sweep(tmp_path, store, 4, 0, scheduler)
    scheduler.states.update({f"{0:012x}": "SUCCEEDED", f"{1:012x}": "FAILED"})
    for forgotten in (f"{2:012x}", f"{3:012x}"):
        del scheduler.states[forgotten]
    [view] = ops.status([group.id], tmp_path, store)
    assert view.status.state == "FAILED", view.status  # not PENDING: nothing will start
    assert "2 unknown" in (view.status.reason or "")
    scheduler.states[f"{1:012x}"] = "SUCCEEDED"
    store.update(f"{1:012x}", state="SUCCEEDED")
    [view] = ops.status([group.id], tmp_path, store)
    assert view.status.state == "UNKNOWN", view.status  # neither a success nor waiting


def test_list_counts_the_rows_it_shows(world):
    tmp_path, scheduler, store = world
    single = JobRecord(id="a" * 12, backend="slurm", host="h", experiment="one",
                       run_dir=str(tmp_path / "runs" / "one" / "r"), project_dir=str(tmp_path),
                       submitted_at=time.time() - 10)
    store.add([single])
    scheduler.states[single.id] = "SUCCEEDED"
    group = _sweep(tmp_path, store, 60, 0, scheduler)
    shown = ops.list_jobs(tmp_path, limit=50, store=store)
    assert [v.record.id for v in shown] == [group.id, single.id]
    assert [v.record.id for v in ops.list_jobs(tmp_path, limit=1, store=store)] == [group.id]
