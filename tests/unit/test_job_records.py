"""Job states, how parts' states combine, and the job store's typed records."""

from __future__ import annotations

import json
import sqlite3

import pytest

from hpcrun.job import JobInfo, JobRecord, JobStatus, State, Submission, combine
from hpcrun.store import JobStore

S = State


def test_states_are_strings_that_know_their_end():
    assert S.FAILED == "FAILED" and json.dumps({"s": S.FAILED}) == '{"s": "FAILED"}'
    assert {s for s in S if s.terminal} == {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PREEMPTED}
    assert S.of("RUNNING") is S.RUNNING and S.of("running") is None and S.of(3) is None
    assert JobStatus("BOGUS").state is S.UNKNOWN  # a backend's unknown word is no state


@pytest.mark.parametrize(("parts", "sequential", "cancelled", "expected"), [
    # a pipeline: a stage that ended badly ends the whole, whatever waits behind it
    (["SUCCEEDED", "FAILED", "BLOCKED"], True, False, S.FAILED),
    (["SUCCEEDED", "FAILED", "PENDING"], True, False, S.FAILED),
    (["CANCELLED", "PENDING"], True, False, S.CANCELLED),
    (["PREEMPTED", "PENDING"], True, False, S.PREEMPTED),
    (["SUCCEEDED", "RUNNING", "PENDING"], True, False, S.RUNNING),
    (["SUCCEEDED", "BLOCKED"], True, False, S.UNKNOWN),
    (["UNKNOWN", "BLOCKED"], True, False, S.UNKNOWN),  # the failed stage forgotten: no PENDING
    (["RUNNING", "BLOCKED"], True, False, S.RUNNING),
    (["SUCCEEDED", "SUCCEEDED"], True, False, S.SUCCEEDED),
    (["SUCCEEDED", "UNKNOWN"], True, False, S.UNKNOWN),
    (["UNKNOWN", "RUNNING"], True, False, S.RUNNING),
    # a sweep: running while any point runs, waiting while any waits
    (["FAILED", "RUNNING"], False, False, S.RUNNING),
    (["FAILED", "PENDING", "SUCCEEDED"], False, False, S.PENDING),
    (["FAILED", "SUCCEEDED", "PREEMPTED"], False, False, S.FAILED),
    (["PREEMPTED", "CANCELLED"], False, False, S.PREEMPTED),
    (["SUCCEEDED", "UNKNOWN"], False, False, S.UNKNOWN),
    (["UNKNOWN", "CANCELLED"], False, True, S.CANCELLED),
    (["SUCCEEDED", "SUCCEEDED"], False, True, S.SUCCEEDED),  # cancelled after it had ended
    (["RUNNING", "CANCELLED"], False, True, S.RUNNING),
    ([], False, False, S.UNKNOWN),
])
def test_one_rule_combines_stages_and_points(parts, sequential, cancelled, expected):
    assert combine(parts, sequential=sequential, cancelled=cancelled) is expected


def test_job_info_reads_tolerantly_and_keeps_what_it_does_not_know():
    info = JobInfo.of({"kind": "sweep", "points": ["a", "b"], "parallel": True,
                       "native": "123", "resumed": "2", "from_a_newer_build": [1]})
    assert info.sweep and info.points == ["a", "b"]
    assert info.parallel is None and info.native == {} and info.resumed == 0
    assert info.to_dict()["from_a_newer_build"] == [1]
    assert JobInfo.of({"kind": "array"}).kind == "job"
    assert JobInfo.of("not a mapping") == JobInfo()


def test_records_round_trip_through_the_store(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    record = JobRecord(id="a" * 12, backend="slurm", host="h", experiment="v3",
                       run_dir="/r", project_dir="/p",
                       info=JobInfo(native={"train": "12"}, sweep_point={"lr": 0.1}))
    store.add([record])
    Submission("13", {"eval": "13"}).apply(record, kept={"train": "12"})
    record.info.resumed += 1
    store.update(record.id, native_id=record.native_id, state=S.RUNNING, info=record.info)
    again = store.get(record.id)
    assert again.state is S.RUNNING and again.native_id == "13"
    assert again.info.native == {"train": "12", "eval": "13"} and again.info.resumed == 1
    assert again.info.sweep_point == {"lr": 0.1}
    with sqlite3.connect(store.path) as db:  # a record written by hand stays readable
        db.execute("UPDATE jobs SET info = 'not json', state = 'WEIRD'")
    broken = store.get(record.id)
    assert broken.info == JobInfo() and broken.state is S.UNKNOWN


def test_latest_after_a_sweep_is_the_sweep_not_its_last_point(tmp_path):
    """`hpcrun cancel` (or status, fetch) with the default `latest` right after
    `submit --sweep` acts on what was submitted: the sweep, with every point."""
    store = JobStore(tmp_path / "jobs.sqlite")
    single = JobRecord(id="1" * 12, backend="local", host="h", experiment="v3", run_dir="/r0",
                       project_dir="/p", submitted_at=1.0)
    sweep = JobRecord(id="2" * 12, backend="local", host="h", experiment="v3",
                      run_dir="/r1", project_dir="/p", submitted_at=2.0,
                      info=JobInfo(kind="sweep"))
    points = [JobRecord(id=f"3{i}".ljust(12, "0"), backend="local", host="h", experiment="v3",
                        run_dir=f"/r1-p{i}", project_dir="/p", group=sweep.id,
                        submitted_at=2.0 + i / 10) for i in range(3)]
    store.add([single])
    assert store.resolve("latest", "/p").id == single.id
    store.add([sweep, *points])
    assert store.resolve("latest", "/p").id == sweep.id
    assert store.resolve(points[-1].id, "/p").id == points[-1].id  # a point by its id
