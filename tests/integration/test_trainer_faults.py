"""The trainer under faults, with real processes: kill -9 and resume, preemption signals, a dead
rank, repeated runs, and 1-rank vs 2-rank equivalence.

The fault tests print what a reliability table needs (run ``pytest -s`` to see it): the time
from the fault to the trainer noticing or ending, and the completed epochs that a resume has
to train again (``epochs lost``)."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import (
    epoch_of,
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


#: a small data set and a wide model: short epochs, checkpoints of tens of MB that take a
#: measurable time to write (``width`` 2048: 51 MB; 1024: 4.4 MB before the first step, 13 MB
#: once the optimizer holds state)
WIDE = """\
extends: v3
experiment: {name}
data: {{rows: 600}}
model: {{hidden: [{width}, {width}]}}
training:
  epochs: {epochs}
  early_stopping: {{enabled: false}}
  checkpoint_every: {every}
pipeline:
  - {{name: train, mode: train_only}}
"""


def wide_config(tmp: Path, name: str, epochs: int, width: int = 2048, every: int = 0) -> Path:
    return write_config(tmp / f"{name}.yaml", WIDE.format(name=name, epochs=epochs, width=width,
                                                          every=every))


def long_config(tmp: Path, name: str, rows: int = 40000, epochs: int = 6, dropout: float = 0.1,
                deterministic: bool = False) -> Path:
    return write_config(tmp / f"{name}.yaml", LONG.format(
        name=name, rows=rows, epochs=epochs, dropout=dropout,
        deterministic=str(deterministic).lower()))


def training_rows(run: Path, stage: str = "train") -> list[dict[str, str]]:
    with open(run / stage / "training.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint holds, read the way the trainer reads it (weights only)."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def partial_files(folder: Path) -> list[str]:
    """Temp files of interrupted writes (``.last.pt.<random>.tmp``, ``.best.pt.link``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def report(fault: str, **figures: float | int) -> None:
    print(f"\n[fault] {fault}: " + ", ".join(
        f"{name.replace('_', ' ')} {value:.2f} s" if isinstance(value, float)
        else f"{name.replace('_', ' ')} {value}" for name, value in figures.items()))


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_kill9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = long_config(tmp_path, "det", epochs=10, deterministic=True)
    reference = tmp_path / "reference"
    reference.mkdir()
    done = run_trainer(reference, "--config", str(cfg))
    assert done.returncode == 0, done.stderr[-2000:]
    expected = training_rows(only_run_dir(reference, "det"))

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    proc = start_trainer(crashed, "--config", str(cfg))
    assert wait_for(lambda: epoch_of(crashed, "det") >= 2, 120)
    time.sleep(0.15)  # into the next epoch
    kill_tree(proc)
    run = only_run_dir(crashed, "det")
    assert read_status(run)["state"] == "RUNNING"  # killed: nobody could say otherwise

    resumed = run_trainer(crashed, "--config", str(cfg), "--run-dir", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout
    got = training_rows(run)
    assert [r["Epoch"] for r in got] == [str(e) for e in range(1, 11)]
    for mine, theirs in zip(got, expected, strict=True):
        mine.pop("Epoch Time"), theirs.pop("Epoch Time")
        assert mine == theirs
    meta = json.loads((run / "metadata.json").read_text())
    assert len(meta["runs"]) == 2 and meta["runs"][1]["resumed"] is True


def test_sigusr1_saves_checkpoint_marks_preempted_and_resume_finishes(tmp_path):
    cfg = long_config(tmp_path, "pre", rows=20000, epochs=12)
    proc = start_trainer(tmp_path, "--config", str(cfg))
    assert wait_for(lambda: epoch_of(tmp_path, "pre") >= 1, 120)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == 75
    run = only_run_dir(tmp_path, "pre")
    status = read_status(run)
    assert status["state"] == "PREEMPTED"
    assert (run / "train" / "checkpoints" / "last.pt").is_file()
    epochs_before = [r["Epoch"] for r in training_rows(run)]
    assert epochs_before and len(epochs_before) < 12

    resumed = run_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["Epoch"] for r in training_rows(run)] == [str(e) for e in range(1, 13)]
    assert read_status(run)["state"] == "SUCCEEDED"


def test_sigusr1_to_one_rank_stops_both_ranks_together(tmp_path):
    cfg = long_config(tmp_path, "pre2", epochs=20)
    proc = start_trainer(tmp_path, "--config", str(cfg), nproc=2)
    assert wait_for(lambda: epoch_of(tmp_path, "pre2") >= 1, 120)
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


def signal_during_checkpoint_write(proc, checkpoints: Path, signum: int) -> Path:
    """Send ``signum`` while the trainer replaces an existing last.pt: the moment a temp file
    of last.pt that was not there before holds data. Returns that temp file (still there
    after a kill -9 that cut its write; renamed to last.pt when the write won the race)."""
    stale = set(partial_files(checkpoints)) if checkpoints.exists() else set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (checkpoints / "last.pt").exists():
            for entry in os.scandir(checkpoints):
                if not entry.name.startswith(".last.pt.") or entry.name in stale:
                    continue
                try:
                    written = entry.stat().st_size
                except FileNotFoundError:  # renamed into place meanwhile
                    continue
                if written >= 1 << 20:
                    os.killpg(proc.pid, signum)
                    return checkpoints / entry.name
        time.sleep(0.001)
    raise AssertionError(f"no checkpoint write seen (exit code {proc.poll()})")


def test_signals_during_checkpoint_writes_keep_last_pt_loadable_and_resume_exact(tmp_path):
    """kill -9 in the middle of writing last.pt loses that checkpoint, never the one before;
    SIGUSR1/SIGTERM in the middle of it let it finish and stop there. Five such faults in a
    row, then a clean resume: every epoch in training.csv exactly once."""
    epochs = 12
    cfg = wide_config(tmp_path, "ckw", epochs=epochs)
    run = tmp_path / "run"
    checkpoints = run / "train" / "checkpoints"
    for signum in (signal.SIGKILL, signal.SIGUSR1, signal.SIGKILL, signal.SIGTERM,
                   signal.SIGKILL):
        for _ in range(3):  # a kill -9 that came just after the write's rename is tried again
            proc = start_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run))
            try:
                temp = signal_during_checkpoint_write(proc, checkpoints, signum)
                sent = time.monotonic()
                code = proc.wait(timeout=60)
                ended = time.monotonic() - sent
            finally:
                kill_tree(proc)
            if signum != signal.SIGKILL or temp.exists():
                break
        done = len(training_rows(run))
        kept = checkpoint_epoch(checkpoints / "last.pt")  # loads: the one before the cut
        if signum == signal.SIGKILL:
            assert code == -signal.SIGKILL
            assert temp.exists(), "no kill -9 landed inside a checkpoint write in 3 tries"
            assert kept == done - 1, (kept, done)  # the cut write was dropped, not half-kept
            assert read_status(run)["state"] == "RUNNING"
        else:
            assert code == 75
            assert kept == done  # the write in progress completed; the stop came after it
            assert read_status(run)["state"] == "PREEMPTED"
        report(f"{signal.Signals(signum).name} while writing last.pt", exit_after=ended,
               epochs_lost=done - kept)

    finished = run_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert [r["Epoch"] for r in training_rows(run)] == [str(e) for e in range(1, epochs + 1)]
    assert checkpoint_epoch(checkpoints / "last.pt") == epochs
    assert read_status(run)["state"] == "SUCCEEDED"
    assert partial_files(checkpoints) == []  # the killed writes' temp files were removed


@pytest.mark.parametrize("victim", [1, 0])
def test_killing_one_rank_ends_the_job_naming_that_rank(tmp_path, victim):
    cfg = long_config(tmp_path, "dead", epochs=40)
    run = tmp_path / "run"
    proc = start_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run), nproc=2)
    try:
        assert wait_for(lambda: read_status(run).get("epoch", 0) >= 1, 120)
        pids = {rank: int((run / "logs" / f"rank{rank}.pid").read_text().split()[1])
                for rank in (0, 1)}
        killed_at = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        assert wait_for(lambda: (run / "failure.json").exists(), 60)
        recorded = time.monotonic() - killed_at
        code = proc.wait(timeout=60)
        ended = time.monotonic() - killed_at
        survivor_ended = wait_for(lambda: not running(pids[1 - victim]), 5)
    finally:
        kill_tree(proc)
    assert code == 1  # torchrun: a rank failed (not a crash of the launcher, not a requeue)
    assert ended < 60
    assert survivor_ended
    failure = json.loads((run / "failure.json").read_text())
    for key in ("rank", "host", "stage", "epoch", "exception", "traceback"):
        assert key in failure
    # the rank that died is named, not the one that lost its connection to it
    assert failure["rank"] == victim and failure["pid"] == pids[victim]
    assert failure["ended_ranks"] == [victim]
    assert failure["reported_by"]["rank"] == 1 - victim
    assert failure["exception"].startswith(f"rank {victim} on ")
    status = read_status(run)
    assert status["state"] == "FAILED" and f"rank {victim} on " in status["message"]
    log = next(tmp_path.glob("trainer-*.log")).read_text()
    assert f"hpcrun.train: error: rank {victim} on " in log
    done = len(training_rows(run))
    report(f"rank {victim} of 2 killed (SIGKILL)", recorded_after=recorded,
           job_end_after=ended,
           epochs_lost=done - checkpoint_epoch(run / "train" / "checkpoints" / "last.pt"))


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
