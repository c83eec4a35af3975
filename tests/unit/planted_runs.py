"""Planted run directories for the red-flag tests: a healthy run of one classification stage
'train' (two ranks on host n1), in which each keyword replaces one column by a function of
the epoch, so that a test shows a flag raised by exactly what it changed."""

from __future__ import annotations

import time
from pathlib import Path

from hpcrun import rundir
from hpcrun.config import load_config

#: how many epochs a planted run has unless told
EPOCHS = 8


def healthy_memory(epoch: int, rank: int) -> dict:
    return {"allocated_mb": 100.0, "reserved_mb": 150.0, "peak_mb": 200.0,
            "device_used_mb": 1000.0, "device_total_mb": 80000.0, "utilization_pct": 50.0,
            "host_rss_mb": 500.0 + 10 * rank, "host_total_mb": 64000.0}


def plant(root: Path, *, epochs: int = EPOCHS, train=None, val=None, grads=None,
          nonfinite=None, separation=None, memory=healthy_memory, status: str = "SUCCEEDED",
          updated_at: float | None = None, failure: dict | None = None,
          overrides: tuple[str, ...] = ()) -> Path:
    """The run at ``root``: ``train``/``val`` (losses), ``grads`` (the mean gradient norm),
    ``nonfinite`` (non-finite steps), ``separation`` and ``memory`` (a gpu_memory.csv row
    per rank) are functions of the epoch; ``overrides`` go into its config.yaml (v3)."""
    run = rundir.RunDir(root)
    stage = run.stage("train")
    stage.mkdir(parents=True)
    rundir.write_atomic(run.config, load_config("v3", overrides).to_yaml().encode())
    rundir.write_json(run.status, {"state": status, "stage": "train", "epoch": epochs,
                                   "stages": {"train": status},
                                   "updated_at": updated_at or time.time()})
    training = rundir.CsvLog(stage / rundir.TRAINING, rundir.training_columns(["auroc"]))
    comps = rundir.CsvLog(stage / rundir.LOSS_COMPONENTS,
                          rundir.loss_component_columns(["classification"], False))
    gstats = rundir.CsvLog(stage / rundir.GRADIENT_STATS, rundir.GRADIENT_COLUMNS)
    probs = rundir.CsvLog(stage / rundir.PROBABILITY_STATS, rundir.PROBABILITY_COLUMNS)
    mem = rundir.CsvLog(stage / rundir.GPU_MEMORY, rundir.MEMORY_COLUMNS)
    for e in range(1, epochs + 1):
        train_loss = train(e) if train else 0.6 / e
        training.write({"Epoch": e, "Epoch Time": 1.0, "Train Loss": train_loss,
                        "Val Loss": val(e) if val else 0.65 / e, "Val AUROC": 0.7 + 0.02 * e,
                        "Learning Rate": 1e-3})
        comps.write({"epoch": e, "phase": "train", "classification": train_loss,
                     "total": train_loss})
        norm = grads(e) if grads else 0.5
        gstats.write({"epoch": e, "steps": 10, "norm_mean": norm, "norm_std": 0.1,
                      "norm_min": norm / 2, "norm_max": norm * 1.5, "norm_last": norm,
                      "clipped_fraction": 0.0,
                      "nonfinite_steps": nonfinite(e) if nonfinite else 0})
        sep = separation(e) if separation else 0.2 + 0.04 * e
        probs.write({"epoch": e, "phase": "val", "pos_mean": 0.3 + sep, "pos_std": 0.1,
                     "neg_mean": 0.3, "neg_std": 0.1, "separation": sep})
        for rank in (0, 1):
            mem.write({"epoch": e, "rank": rank, "host": "n1", "device": f"cuda:{rank}",
                       **memory(e, rank)})
    for log in (training, comps, gstats, probs, mem):
        log.close()
    if failure:
        rundir.write_json(run.failure, failure)
    return root
