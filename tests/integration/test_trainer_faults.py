"""The trainer under faults, with real processes: kill -9 and resume, preemption signals, a dead
rank, repeated runs, and 1-rank vs 2-rank equivalence."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    only_run_dir,
    read_status,
    run_trainer,
    start_trainer,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

LONG = """\
extends: v3
experiment: {name}
data: {{rows: {rows}}}
model: {{dropout: {dropout}}}
training:
  epochs: {epochs}
  deterministic: {deterministic}
  early_stopping: {{enabled: false}}
  checkpoint_every: 0
pipeline:
  - {{name: train, mode: full_pipeline}}
"""


def long_config(tmp: Path, name: str, rows: int = 40000, epochs: int = 6, dropout: float = 0.1,
                deterministic: bool = False) -> Path:
    return write_config(tmp / f"{name}.yaml", LONG.format(
        name=name, rows=rows, epochs=epochs, dropout=dropout,
        deterministic=str(deterministic).lower()))


def training_rows(run: Path, stage: str = "train") -> list[dict[str, str]]:
    with open(run / stage / "training.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def kill_tree(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_kill9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = long_config(tmp_path, "det", deterministic=True)
    reference = tmp_path / "reference"
    reference.mkdir()
    done = run_trainer(reference, "--config", str(cfg))
    assert done.returncode == 0, done.stderr[-2000:]
    expected = training_rows(only_run_dir(reference, "det"))

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    proc = start_trainer(crashed, "--config", str(cfg))
    assert wait_for(lambda: (crashed / "runs" / "det").exists()
                    and read_status(only_run_dir(crashed, "det")).get("epoch", 0) >= 2, 120)
    time.sleep(0.15)  # into the next epoch
    kill_tree(proc)
    run = only_run_dir(crashed, "det")
    assert read_status(run)["state"] == "RUNNING"  # killed: nobody could say otherwise

    resumed = run_trainer(crashed, "--config", str(cfg), "--run-dir", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout
    got = training_rows(run)
    assert [r["Epoch"] for r in got] == [str(e) for e in range(1, 7)]
    for mine, theirs in zip(got, expected, strict=True):
        mine.pop("Epoch Time"), theirs.pop("Epoch Time")
        assert mine == theirs
    meta = json.loads((run / "metadata.json").read_text())
    assert len(meta["runs"]) == 2 and meta["runs"][1]["resumed"] is True


def test_sigusr1_saves_checkpoint_marks_preempted_and_resume_finishes(tmp_path):
    cfg = long_config(tmp_path, "pre", epochs=5)
    proc = start_trainer(tmp_path, "--config", str(cfg))
    assert wait_for(lambda: (tmp_path / "runs" / "pre").exists()
                    and read_status(only_run_dir(tmp_path, "pre")).get("epoch", 0) >= 1, 120)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == 75
    run = only_run_dir(tmp_path, "pre")
    status = read_status(run)
    assert status["state"] == "PREEMPTED"
    assert (run / "train" / "checkpoints" / "last.pt").is_file()
    epochs_before = [r["Epoch"] for r in training_rows(run)]
    assert epochs_before and len(epochs_before) < 5

    resumed = run_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["Epoch"] for r in training_rows(run)] == [str(e) for e in range(1, 6)]
    assert read_status(run)["state"] == "SUCCEEDED"


def test_sigusr1_to_one_rank_stops_both_ranks_together(tmp_path):
    cfg = long_config(tmp_path, "pre2", epochs=20)
    proc = start_trainer(tmp_path, "--config", str(cfg), nproc=2)
    assert wait_for(lambda: (tmp_path / "runs" / "pre2").exists()
                    and read_status(only_run_dir(tmp_path, "pre2")).get("epoch", 0) >= 1, 120)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "hpcrun.train" in " ".join(p.cmdline())]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGUSR1)  # only one rank hears it
    proc.wait(timeout=60)
    run = only_run_dir(tmp_path, "pre2")
    assert read_status(run)["state"] == "PREEMPTED"
    log = next(tmp_path.glob("trainer-*.log")).read_text()
    assert log.count("exitcode  : 75") == 2, log[-3000:]
    assert not (run / "failure.json").exists()


def test_killing_one_rank_ends_the_other_with_failure_json(tmp_path):
    cfg = long_config(tmp_path, "dead", epochs=40)
    proc = start_trainer(tmp_path, "--config", str(cfg), nproc=2)
    assert wait_for(lambda: (tmp_path / "runs" / "dead").exists()
                    and read_status(only_run_dir(tmp_path, "dead")).get("epoch", 0) >= 1, 120)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "hpcrun.train" in " ".join(p.cmdline())]
    assert len(workers) == 2
    victim, survivor = workers[1], workers[0]
    killed_at = time.monotonic()
    victim.kill()
    psutil.wait_procs([survivor], timeout=60)
    assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - killed_at < 60
    assert proc.wait(timeout=60) != 0
    run = only_run_dir(tmp_path, "dead")
    assert wait_for(lambda: (run / "failure.json").exists(), 5)
    failure = json.loads((run / "failure.json").read_text())
    for key in ("rank", "host", "stage", "epoch", "exception", "traceback"):
        assert key in failure
    assert read_status(run)["state"] == "FAILED"


def test_one_and_two_ranks_with_the_same_global_batch_give_the_same_loss_curve(tmp_path):
    """Same global batch, no dropout: DDP's averaged gradient equals the single process's.
    Documented tolerance: relative 1e-4 on Train/Val Loss (float32 summation order)."""
    cfg = long_config(tmp_path, "eq", rows=8000, epochs=4, dropout=0.0)
    results = {}
    for nproc in (1, 2):
        cwd = tmp_path / f"n{nproc}"
        cwd.mkdir()
        proc = run_trainer(cwd, "--config", str(cfg), nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[nproc] = training_rows(only_run_dir(cwd, "eq"))
    for one, two in zip(results[1], results[2], strict=True):
        for column in ("Train Loss", "Val Loss"):
            a, b = float(one[column]), float(two[column])
            assert abs(a - b) <= 1e-4 * abs(a), (one["Epoch"], column, a, b)


def test_twenty_consecutive_two_rank_v3_runs_all_exit_zero(tmp_path):
    failures = []
    for attempt in range(20):
        cwd = tmp_path / f"run{attempt}"
        cwd.mkdir()
        proc = run_trainer(cwd, "--config", "v3", nproc=2)
        if proc.returncode != 0:
            failures.append((attempt, proc.returncode, proc.stderr[-1500:]))
    assert failures == []
