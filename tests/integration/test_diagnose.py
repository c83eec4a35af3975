"""Red flags on planted run directories: each raises exactly its flag; the healthy v3 run
(a real 2-rank torchrun) raises none."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from hpcrun import rundir
from hpcrun.config import load_config
from hpcrun.diagnose import diagnose


def plant(root: Path, *, epochs: int = 8, loss=None, grads=None, status="SUCCEEDED",
          updated_at: float | None = None, failure: dict | None = None) -> Path:
    """A run directory with one classification stage 'train'."""
    run = rundir.RunDir(root)
    stage = run.stage("train")
    stage.mkdir(parents=True)
    rundir.write_atomic(run.config, load_config("v3").to_yaml().encode())
    rundir.write_json(run.status, {"state": status, "stage": "train", "epoch": epochs,
                                   "stages": {"train": status},
                                   "updated_at": updated_at or time.time()})
    training = rundir.CsvLog(stage / rundir.TRAINING, rundir.training_columns(["auroc"]))
    comps = rundir.CsvLog(stage / rundir.LOSS_COMPONENTS,
                          rundir.loss_component_columns(["classification"], False))
    gstats = rundir.CsvLog(stage / rundir.GRADIENT_STATS, rundir.GRADIENT_COLUMNS)
    probs = rundir.CsvLog(stage / rundir.PROBABILITY_STATS, rundir.PROBABILITY_COLUMNS)
    for e in range(1, epochs + 1):
        train_loss = loss(e) if loss else 0.6 / e
        training.write({"Epoch": e, "Epoch Time": 1.0, "Train Loss": train_loss,
                        "Val Loss": 0.65 / e, "Val AUROC": 0.7 + 0.02 * e,
                        "Learning Rate": 1e-3})
        comps.write({"epoch": e, "phase": "train", "classification": train_loss,
                     "total": train_loss})
        norm = grads(e) if grads else 0.5
        gstats.write({"epoch": e, "steps": 10, "norm_mean": norm, "norm_std": 0.1,
                      "norm_min": norm / 2, "norm_max": norm * 1.5, "norm_last": norm,
                      "clipped_fraction": 0.0, "nonfinite_steps": 0})
        probs.write({"epoch": e, "phase": "val", "pos_mean": 0.5 + 0.04 * e, "pos_std": 0.1,
                     "neg_mean": 0.3, "neg_std": 0.1, "separation": 0.2 + 0.04 * e})
    for log in (training, comps, gstats, probs):
        log.close()
    if failure:
        rundir.write_json(run.failure, failure)
    return root


def codes(flags) -> list[str]:
    return sorted(f.code for f in flags)


def test_healthy_planted_run_has_no_flags(tmp_path):
    assert codes(diagnose(plant(tmp_path / "ok"))) == []


def test_nan_loss(tmp_path):
    run = plant(tmp_path / "nan", loss=lambda e: math.nan if e >= 5 else 0.6 / e)
    flags = diagnose(run)
    assert codes(flags) == ["nan_loss"] and flags[0].epoch == 5


def test_exploding_gradients(tmp_path):
    run = plant(tmp_path / "boom", grads=lambda e: 50.0 if e == 6 else 0.5)
    flags = diagnose(run)
    assert codes(flags) == ["exploding_gradients"] and flags[0].epoch == 6


def test_stall(tmp_path):
    run = plant(tmp_path / "stall", status="RUNNING", updated_at=time.time() - 600)
    flags = diagnose(run)
    assert codes(flags) == ["stalled"] and "no heartbeat" in flags[0].message


def test_oom_in_the_log(tmp_path):
    run = plant(tmp_path / "oom", status="FAILED", failure={
        "rank": 1, "host": "gpu07", "stage": "train", "epoch": 3,
        "exception": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "traceback": ["..."]})
    flags = diagnose(run, log_text="torch.OutOfMemoryError: CUDA out of memory.")
    assert codes(flags) == ["failed"]
    assert "rank 1 on gpu07" in flags[0].message and "lower the batch size" in flags[0].message


@pytest.mark.slow
def test_the_real_v3_run_raises_no_flag(v3_run):
    assert diagnose(v3_run) == []
