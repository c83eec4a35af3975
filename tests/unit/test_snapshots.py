"""A frozen bundle is used again only as it was made: files a job wrote into it (a tracker's
./wandb/), or changed there, make the next identical submit take a fresh one; the old one is
moved aside, never deleted under a running job. Remote snapshots hold the bundle's files only."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpcrun import agent, rundir, snapshots
from hpcrun.bundle import describe, manifest_text, snapshot
from hpcrun.config import BundleConfig


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("print('hi')\n")
    (root / "pkg" / "model.py").write_text("X = 1\n")
    return root


def test_a_local_snapshot_a_job_wrote_into_is_taken_again(tmp_path):
    bundle = describe(_project(tmp_path), BundleConfig())
    first = snapshot(bundle, tmp_path / "cache")
    assert (first / "train.py").stat().st_mode & 0o222 == 0  # read-only files
    assert snapshot(bundle, tmp_path / "cache") == first  # unchanged: used as it is
    (first / "pkg" / "__pycache__").mkdir()  # python's bytecode of what a job imported
    (first / "pkg" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    assert snapshot(bundle, tmp_path / "cache") == first
    assert not [p for p in (tmp_path / "cache").iterdir() if ".stale-" in p.name]
    (first / "wandb").mkdir()
    (first / "wandb" / "run.log").write_text("a job's output\n")
    again = snapshot(bundle, tmp_path / "cache")
    assert again == first and not (again / "wandb").exists()
    aside = [p for p in (tmp_path / "cache").iterdir() if ".stale-" in p.name]
    assert len(aside) == 1 and (aside[0] / "wandb" / "run.log").is_file()  # not deleted
    (again / "pkg" / "model.py").chmod(0o644)
    (again / "pkg" / "model.py").write_text("X = 2\n")  # code changed in place
    third = snapshot(bundle, tmp_path / "cache")
    assert (third / "pkg" / "model.py").read_text() == "X = 1\n"


def test_a_remote_snapshot_holds_the_bundle_only_and_is_checked_before_reuse(tmp_path):
    project = _project(tmp_path)
    bundle = describe(project, BundleConfig())
    code = tmp_path / "code"
    code.mkdir()
    for rel in bundle.files:
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_bytes((project / rel).read_bytes())
    (code / "old_file.py").write_text("left by an earlier sync\n")
    target = tmp_path / "bundles" / bundle.hash[:24]
    target.parent.mkdir()
    request = {"code": str(code), "target": str(target), "links": {"data": "/w/data/data"},
               "files": {"BUNDLE.sha256": manifest_text(bundle), "bundle.json": "{}\n"}}
    answer = agent.snapshot(json.loads(json.dumps(request)))
    assert answer == {"created": True, "verified": len(bundle.files), "mismatched": []}
    assert not (target / "old_file.py").exists()
    assert os.readlink(target / "data") == "/w/data/data"
    assert agent.snapshot(request)["created"] is False  # checked, and as it was
    (target / "outputs").mkdir()
    (target / "outputs" / "model.pt").write_text("x")
    assert agent.snapshot(request)["created"] is True
    assert not (target / "outputs").exists()
    assert any(".stale-" in p.name for p in target.parent.iterdir())


def test_a_jobs_working_folder_mirrors_the_snapshot_and_keeps_what_the_job_wrote(tmp_path):
    project = _project(tmp_path)
    bundle = describe(project, BundleConfig())
    bundle.links = {"data": "/w/data/data"}
    snap = snapshot(bundle, tmp_path / "cache")
    (snap / "pkg" / "__pycache__").mkdir()
    run = tmp_path / "run"
    work = snapshots.work_tree(snap, run)
    assert work == run / rundir.WORK
    assert os.readlink(work / "pkg" / "model.py") == str(snap / "pkg" / "model.py")
    assert (work / "pkg").is_dir() and not (work / "pkg").is_symlink()
    assert os.readlink(work / "data") == "/w/data/data"  # a data link stays a link
    assert not (work / "BUNDLE.sha256").exists() and not (work / "pkg" / "__pycache__").exists()
    (work / "wandb").mkdir()
    (work / "train.py").unlink()
    (work / "train.py").write_text("the job's own file\n")
    (work / "pkg" / "model.py").unlink()
    (work / "pkg" / "model.py").symlink_to("/elsewhere")
    assert snapshots.main([str(snap), str(run)]) == 0  # again (a requeue, the next stage)
    assert (work / "train.py").read_text() == "the job's own file\n" and (work / "wandb").is_dir()
    assert os.readlink(work / "pkg" / "model.py") == str(snap / "pkg" / "model.py")
    assert not snapshots.problems(snap, manifest_text(bundle), bundle.links)
    assert snapshots.main([str(snap)]) == 2
