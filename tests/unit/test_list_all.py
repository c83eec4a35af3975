"""``hpcrun list`` shows this project's jobs; ``--all`` (``-a``) every project's. The CLI run
in this process against a job store of its own."""

from __future__ import annotations

import json
import time

import pytest
from conftest import invoke

from hpcrun.job import JobRecord, State
from hpcrun.store import JobStore


@pytest.fixture
def two_projects(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("NO_COLOR", "1")
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    now = time.time()
    records = [JobRecord(id=f"{n:012x}", backend="local", host="h", experiment=name,
                         run_dir=str(root / "runs" / name / "r"), project_dir=str(root),
                         state=State.SUCCEEDED, submitted_at=now - n)
               for n, (name, root) in enumerate([("mine", here), ("theirs", there),
                                                 ("mine2", here)], start=1)]
    JobStore().add(records)
    monkeypatch.chdir(here)
    return [r.id for r in records]


def _listed(*args: str) -> list[str]:
    answer = invoke("--json", "list", *args)
    assert answer.code == 0, answer.err
    return [view["id"] for view in json.loads(answer.out)]


def test_list_shows_only_this_projects_jobs(two_projects):
    mine, _, mine2 = two_projects
    assert _listed() == [mine, mine2]


@pytest.mark.parametrize("flag", ["--all", "-a"])
def test_list_all_shows_every_projects_jobs(two_projects, flag):
    mine, theirs, mine2 = two_projects
    assert _listed(flag) == [mine, theirs, mine2]


def test_the_table_names_the_other_projects_job_only_with_all(two_projects):
    theirs = two_projects[1]
    assert theirs not in invoke("list").out
    table = invoke("list", "--all").out
    assert theirs in table and "theirs" in table
