"""hpcrun.track in a real loop (tests/fixtures/track_loop.py), run as a process alone and
under torchrun with 2 gloo ranks: the same files and schemas as hpcrun's trainer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, trainer_env

from hpcrun import rundir
from hpcrun.diagnose import diagnose

LOOP = REPO / "tests" / "fixtures" / "track_loop.py"

pytestmark = pytest.mark.slow


def loop(cwd: Path, *args: str, nproc: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
    environ = trainer_env(**env)
    for name in ("HPCRUN_RUN_DIR", "HPCRUN_RUN_ROOT", "HPCRUN_STAGE", "HPCRUN_RANK_WRAPPED"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.run([*head, str(LOOP), *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def only_run(cwd: Path, name: str = "loop") -> Path:
    runs = sorted((cwd / "runs" / name).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_a_loop_writes_the_trainers_files_and_schemas(tmp_path):
    proc = loop(tmp_path, "--epochs", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path)
    stage = run / "train"
    headers = {
        rundir.TRAINING: rundir.training_columns(["score", "rank"]),
        rundir.LOSS_COMPONENTS: rundir.loss_component_columns(["main", "half"], False),
        rundir.GRADIENT_STATS: rundir.GRADIENT_COLUMNS,
        rundir.GRADIENT_LAYERS: rundir.GRADIENT_LAYER_COLUMNS,
        rundir.PROBABILITY_STATS: rundir.PROBABILITY_COLUMNS,
        rundir.GPU_MEMORY: rundir.MEMORY_COLUMNS,
        rundir.EVALUATION: rundir.EVALUATION_COLUMNS,
        rundir.PREDICTIONS: rundir.PREDICTION_COLUMNS,
    }
    for name, columns in headers.items():
        assert rundir.read_header(stage / name) == columns, name
    training = rundir.read_rows(stage / rundir.TRAINING)
    assert [r["Epoch"] for r in training] == ["1", "2", "3"]
    assert float(training[-1]["Train Loss"]) < float(training[0]["Train Loss"])
    components = rundir.read_rows(stage / rundir.LOSS_COMPONENTS)
    train_rows = [r for r in components if r["phase"] == "train"]
    # the components are the mean over the epoch's steps, like the training loss
    for row, epoch in zip(train_rows, training, strict=True):
        assert math.isclose(float(row["total"]), float(epoch["Train Loss"]), rel_tol=1e-9)
        assert math.isclose(float(row["half"]), float(row["main"]) / 2, rel_tol=1e-6)
    gradients = rundir.read_rows(stage / rundir.GRADIENT_STATS)
    assert [int(r["steps"]) for r in gradients] == [8, 8, 8]
    assert all(float(r["norm_max"]) >= float(r["norm_min"]) > 0 for r in gradients)
    layers = {r["layer"] for r in rundir.read_rows(stage / rundir.GRADIENT_LAYERS)}
    assert layers == {"0.weight", "0.bias", "2.weight", "2.bias"}
    separation = [r for r in rundir.read_rows(stage / rundir.PROBABILITY_STATS)]
    assert [r["phase"] for r in separation] == ["val", "val", "val", "eval_test"]
    assert len(rundir.read_rows(stage / rundir.PREDICTIONS)) == 256
    status = json.loads((run / rundir.STATUS).read_text())
    assert status["state"] == "SUCCEEDED" and status["epoch"] == 3 and status["epochs"] == 3
    meta = json.loads((run / rundir.METADATA).read_text())
    assert meta["world_size"] == 1 and meta["script_config"]["epochs"] == 3
    assert rundir.verify_manifest(run) == []
    assert (stage / "checkpoints" / "last.pt").is_file()
    assert [f.code for f in diagnose(run)] == []
    # config.yaml is one hpcrun reads back: the loop's flags are its params
    from hpcrun.config import load_config_text

    cfg = load_config_text((run / rundir.CONFIG).read_text())
    assert cfg.experiment == "loop" and cfg.params["kind"] == "binary"


@pytest.mark.parametrize("kind, columns, predictions", [
    ("multiclass", rundir.EVALUATION_COLUMNS, rundir.MULTICLASS_PREDICTION_COLUMNS),
    ("regression", rundir.REGRESSION_COLUMNS, rundir.REGRESSION_PREDICTION_COLUMNS),
])
def test_multiclass_and_regression_evaluations(tmp_path, kind, columns, predictions):
    proc = loop(tmp_path, "--epochs", "2", "--kind", kind)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = only_run(tmp_path) / "train"
    assert rundir.read_header(stage / rundir.EVALUATION) == columns
    assert rundir.read_header(stage / rundir.PREDICTIONS) == predictions
    row = rundir.read_rows(stage / rundir.EVALUATION)[0]
    if kind == "multiclass":
        import numpy as np
        from sklearn.metrics import accuracy_score

        preds = rundir.read_rows(stage / rundir.PREDICTIONS)
        labels = np.array([int(p["label"]) for p in preds])
        chosen = np.array([int(p["prediction"]) for p in preds])
        assert math.isclose(float(row["accuracy"]), accuracy_score(labels, chosen))
        assert 0.5 < float(row["auroc"]) <= 1
        stats = rundir.read_rows(stage / rundir.PROBABILITY_STATS)
        assert all(-1 <= float(r["separation"]) <= 1 for r in stats)
    else:
        assert float(row["rmse"]) > 0 and float(row["r2"]) <= 1


def test_resume_continues_after_the_checkpoint_without_repeating_an_epoch(tmp_path):
    run_dir = tmp_path / "runs" / "job" / "r1" / "train"
    first = loop(tmp_path, "--epochs", "4", "--stop-at", "3", HPCRUN_RUN_DIR=str(run_dir))
    assert first.returncode == 75, first.stderr[-3000:]
    root = run_dir.parent
    status = json.loads((root / rundir.STATUS).read_text())
    assert status["state"] == "PREEMPTED" and status["stages"]["train"] == "PREEMPTED"
    assert rundir.verify_manifest(root) == []
    second = loop(tmp_path, "--epochs", "4", HPCRUN_RUN_DIR=str(run_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "start 3" in second.stdout and "resuming after epoch 2" in second.stdout
    for name in (rundir.TRAINING, rundir.GRADIENT_STATS):
        epochs = [r[next(iter(r))] for r in rundir.read_rows(run_dir / name)]
        assert epochs == ["1", "2", "3", "4"], (name, epochs)
    meta = json.loads((root / rundir.METADATA).read_text())
    assert [r["state"] for r in meta["runs"]] == ["PREEMPTED", "SUCCEEDED"]


def test_rows_written_after_the_last_checkpoint_are_dropped_on_resume(tmp_path):
    run_dir = tmp_path / "runs" / "job" / "r1" / "train"
    first = loop(tmp_path, "--epochs", "4", "--die-after", "3", HPCRUN_RUN_DIR=str(run_dir))
    assert first.returncode == 9
    epochs = [r["Epoch"] for r in rundir.read_rows(run_dir / rundir.TRAINING)]
    assert epochs == ["1", "2", "3"]  # epoch 3's row, but no checkpoint of it
    second = loop(tmp_path, "--epochs", "4", HPCRUN_RUN_DIR=str(run_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "start 3" in second.stdout
    for name, each in ((rundir.TRAINING, 1), (rundir.GRADIENT_STATS, 1),
                       (rundir.LOSS_COMPONENTS, 2)):  # train and val rows
        epochs = [r[next(iter(r))] for r in rundir.read_rows(run_dir / name)]
        assert epochs == [str(e) for e in range(1, 5) for _ in range(each)], (name, epochs)


def test_an_uncaught_exception_leaves_failure_json(tmp_path):
    proc = loop(tmp_path, "--epochs", "3", "--raise-at", "2")
    assert proc.returncode == 1
    assert "RuntimeError: planted failure in epoch 2" in proc.stderr  # the hook before ours ran
    run = only_run(tmp_path)
    failure = json.loads((run / rundir.FAILURE).read_text())
    assert failure["exception"] == "RuntimeError: planted failure in epoch 2"
    assert failure["epoch"] == 1 and failure["stage"] == "train"
    assert any("track_loop.py" in line for line in failure["traceback"])
    status = json.loads((run / rundir.STATUS).read_text())
    assert status["state"] == "FAILED" and status["stages"]["train"] == "FAILED"
    flags = [f.code for f in diagnose(run)]
    assert flags == ["failed"]


def test_two_ranks_write_global_rows_from_rank_0(tmp_path):
    proc = loop(tmp_path, "--epochs", "2", nproc=2, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path)
    stage = run / "train"
    training = rundir.read_rows(stage / rundir.TRAINING)
    assert len(training) == 2
    # each rank gives its own rank as a metric: the row holds their mean
    assert [float(r["Val rank"]) for r in training] == [0.5, 0.5]
    gradients = rundir.read_rows(stage / rundir.GRADIENT_STATS)
    assert [int(r["steps"]) for r in gradients] == [4, 4]  # rank 0's steps (DDP: equal grads)
    memory = rundir.read_rows(stage / rundir.GPU_MEMORY)
    assert sorted({r["rank"] for r in memory}) == ["0", "1"]
    predictions = rundir.read_rows(stage / rundir.PREDICTIONS)
    assert len(predictions) == 256  # gathered from both ranks
    meta = json.loads((run / rundir.METADATA).read_text())
    assert meta["world_size"] == 2
    assert {p.name for p in (run / "logs").glob("rank*.pid")} == {"rank0.pid", "rank1.pid"}
    assert rundir.verify_manifest(run) == []
    assert os.environ.get("RANK") is None
