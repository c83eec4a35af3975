"""The trainer when its run directory cannot be written: a file-size limit (ulimit -f), a full
disk (a small tmpfs), a read-only checkpoints directory and a read-only run directory.

Each must end the run with exit code 1 and one error line naming the file and the cause, say
FAILED wherever that can still be written and SUCCEEDED nowhere, and leave the last complete
checkpoint loadable, so that the same command resumes once the storage is fixed. The figures
(``pytest -s``): the time from the last write that worked to the process exit, and the
completed epochs a resume trains again.

The filesystem tests mount (tmpfs, read-only bind mounts) and so need root; without it they
skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import read_status, run_trainer, start_trainer, trainer_argv, trainer_env, wait_for
from test_trainer_faults import (
    checkpoint_epoch,
    kill_tree,
    partial_files,
    report,
    training_rows,
    wide_config,
)

pytestmark = pytest.mark.slow


def mount(*args: str | Path) -> None:
    proc = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        why = f"cannot mount ({proc.stderr.strip()}): needs root"
        if os.environ.get("CI"):  # CI runs as root: a fault that cannot be set up is a failure
            pytest.fail(why)
        pytest.skip(why)


@contextlib.contextmanager
def mounted(target: Path, *args: str | Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount(*args, target)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` read-only for every process, root included: a read-only bind mount on it."""
    with mounted(folder, "--bind", folder):
        mount("-o", "remount,bind,ro", folder)
        yield folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("hpcrun.train: error:")]


def assert_failed_cleanly(output: str, run: Path, failed: Path, cause: str) -> None:
    """One error line naming ``failed`` and ``cause`` (and, from another rank, one line that
    repeats it); FAILED in status.json and the cause in failure.json; no temp file left beside
    the checkpoints."""
    lines = error_lines(output)
    assert lines[:1] == [line for line in lines if line.startswith(
        f"hpcrun.train: error: cannot write {failed}: {cause} (hint: ")], output[-3000:]
    assert all(f"cannot write {failed}: {cause}" in line for line in lines), lines
    status = read_status(run)
    assert status["state"] == "FAILED" and f"{failed}: {cause}" in status["message"]
    failure = json.loads((run / "failure.json").read_text())
    assert failure["rank"] == 0
    assert failure["exception"] == f"WriteFailed: cannot write {failed}: {cause}"
    assert json.loads((run / "metadata.json").read_text())["state"] == "FAILED"
    assert partial_files(run / "train" / "checkpoints") == []


def assert_resumes_to_the_end(cwd: Path, cfg: Path, run: Path, epochs: int,
                              nproc: int | None = None) -> None:
    done = run_trainer(cwd, "--config", str(cfg), "--run-dir", str(run), nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after epoch" in done.stdout
    assert [r["Epoch"] for r in training_rows(run)] == [str(e) for e in range(1, epochs + 1)]
    assert checkpoint_epoch(run / "train" / "checkpoints" / "last.pt") == epochs
    assert read_status(run)["state"] == "SUCCEEDED"


def since_last_write(run: Path, ended: float) -> float:
    """Seconds from the last CSV rows made durable (just before the failing checkpoint write)
    to the process exit."""
    return ended - (run / "train" / "training.csv").stat().st_mtime


def test_file_size_limit_fails_the_checkpoint_write_then_resume_finishes(tmp_path):
    """``ulimit -f``: the first checkpoint (4.4 MB, no optimizer state yet) fits under 8 MiB,
    the second (13 MB) does not. The process is not killed by SIGXFSZ: the write fails with
    EFBIG and the trainer reports it."""
    cfg = wide_config(tmp_path, "fsize", epochs=3, width=1024)
    run = tmp_path / "run"
    command = shlex.join(trainer_argv("--config", str(cfg), "--run-dir", str(run)))
    proc = subprocess.run(["bash", "-c", f"ulimit -f {8 * 1024}; exec {command}"],
                          cwd=tmp_path, env=trainer_env(), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    ended = time.time()
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = run / "train" / "checkpoints" / "last.pt"
    assert_failed_cleanly(proc.stderr, run, last, "File too large")
    assert checkpoint_epoch(last) == 0
    done = len(training_rows(run))
    report("file-size limit hit writing last.pt", exit_after=since_last_write(run, ended),
           epochs_lost=done - checkpoint_epoch(last))

    assert_resumes_to_the_end(tmp_path, cfg, run, epochs=3)


def test_full_disk_fails_a_two_rank_run_with_the_cause_then_resume_finishes(tmp_path):
    """A 48 MB tmpfs and a 13 MB checkpoint kept every epoch (checkpoint_every: 1): epochs 1-3
    fit, writing epoch 4's last.pt meets ENOSPC. Rank 1 then loses its connection to rank 0;
    the record stays rank 0's cause."""
    cfg = wide_config(tmp_path, "full", epochs=8, width=1024, every=1)
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=48m", "tmpfs") as disk:
        run = disk / "run"
        proc = run_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run), nproc=2)
        ended = time.time()
        assert proc.returncode == 1, proc.stderr[-2000:]
        last = run / "train" / "checkpoints" / "last.pt"
        assert_failed_cleanly(proc.stderr, run, last, "No space left on device")
        assert checkpoint_epoch(last) == 3
        done = len(training_rows(run))
        assert done == 4
        report("disk full writing last.pt (2 ranks)", exit_after=since_last_write(run, ended),
               epochs_lost=done - checkpoint_epoch(last))

        mount("-o", "remount,size=256m", disk)  # space freed: the same command resumes
        assert_resumes_to_the_end(tmp_path, cfg, run, epochs=8, nproc=2)


def test_read_only_checkpoints_then_read_only_run_directory(tmp_path):
    cfg = wide_config(tmp_path, "ro", epochs=30, width=1024)  # still running when signalled
    run = tmp_path / "run"
    checkpoints = run / "train" / "checkpoints"
    proc = start_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run))
    try:
        assert wait_for(lambda: read_status(run).get("epoch", 0) >= 2, 120)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=60) == 75
    finally:
        kill_tree(proc)
    kept, digest = checkpoint_epoch(checkpoints / "last.pt"), sha256(checkpoints / "last.pt")

    with read_only(checkpoints):
        failed = run_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run))
        ended = time.time()
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert_failed_cleanly(failed.stderr, run, checkpoints / "last.pt", "Read-only file system")
    assert sha256(checkpoints / "last.pt") == digest
    done = len(training_rows(run))
    assert done == kept + 1
    report("read-only checkpoints/", exit_after=since_last_write(run, ended),
           epochs_lost=done - kept)

    # Nothing in the run directory can be written, failure.json and status.json included:
    # the exit code and the error line are all that can say it failed.
    before = {name: (run / name).read_bytes() for name in ("status.json", "failure.json")}
    with read_only(run):
        started = time.monotonic()
        failed = run_trainer(tmp_path, "--config", str(cfg), "--run-dir", str(run))
        ended_after = time.monotonic() - started
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert any(f"cannot write {run}" in line and "Read-only file system" in line
               for line in error_lines(failed.stderr)), failed.stderr[-3000:]
    assert {name: (run / name).read_bytes() for name in before} == before
    assert all("SUCCEEDED" not in text.decode() for text in before.values())
    assert sha256(checkpoints / "last.pt") == digest
    report("read-only run directory", exit_after_start=ended_after, epochs_lost=0)

    assert_resumes_to_the_end(tmp_path, cfg, run, epochs=30)
