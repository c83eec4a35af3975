"""A real 2-rank torchrun of v3: every run-directory file exists with the exact header, and the
numbers in them agree with scikit-learn recomputed from predictions.csv."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from conftest import run_trainer, write_config
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from hpcrun import rundir

pytestmark = pytest.mark.slow

TRAINING_HEADER = ["Epoch", "Epoch Time", "Train Loss", "Val Loss", "Val AUROC", "Val AUPRC",
                   "Val Accuracy", "Val F1", "Val MCC", "Learning Rate"]
EVALUATION_HEADER = ["split", "auroc", "auprc", "accuracy", "sensitivity", "specificity",
                     "precision", "recall", "f1", "mcc"]


def header(path):
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_file_of_the_run_directory_exists_with_exact_headers(v3_run):
    for name in ("config.yaml", "metadata.json", "status.json", "MANIFEST.sha256"):
        assert (v3_run / name).is_file(), name
    assert (v3_run / "logs" / "train.rank0.log").is_file()
    assert (v3_run / "logs" / "train.rank1.log").is_file()
    assert not (v3_run / "failure.json").exists()

    for stage in ("pretrain", "finetune"):
        d = v3_run / stage
        assert header(d / "training.csv") == TRAINING_HEADER
        assert header(d / "evaluation.csv") == EVALUATION_HEADER
        assert header(d / "gradient_stats.csv") == ["epoch", "steps", "norm_mean", "norm_std",
                                                    "norm_min", "norm_max", "norm_last",
                                                    "clipped_fraction", "nonfinite_steps"]
        assert header(d / "gradient_layers.csv") == ["epoch", "layer", "norm_mean", "norm_max"]
        assert header(d / "probability_stats.csv") == ["epoch", "phase", "pos_mean", "pos_std",
                                                       "neg_mean", "neg_std", "separation"]
        assert header(d / "gpu_memory.csv") == [
            "epoch", "rank", "host", "device", "allocated_mb", "reserved_mb", "peak_mb",
            "device_used_mb", "device_total_mb", "utilization_pct", "host_rss_mb",
            "host_total_mb"]
        assert header(d / "predictions.csv") == ["split", "index", "label", "probability"]
        for ckpt in ("last.pt", "best.pt"):
            assert (d / "checkpoints" / ckpt).is_file()
    assert header(v3_run / "pretrain" / "loss_components.csv") == [
        "epoch", "phase", "reconstruction", "total"]
    assert header(v3_run / "finetune" / "loss_components.csv") == [
        "epoch", "phase", "classification", "total"]
    assert header(v3_run / "eval" / "evaluation.csv") == EVALUATION_HEADER
    assert {r["split"] for r in rows(v3_run / "eval" / "evaluation.csv")} == {"val", "test"}

    status = json.loads((v3_run / "status.json").read_text())
    assert status["state"] == "SUCCEEDED"
    assert status["stages"] == {"pretrain": "SUCCEEDED", "finetune": "SUCCEEDED",
                                "eval": "SUCCEEDED"}
    meta = json.loads((v3_run / "metadata.json").read_text())
    assert meta["world_size"] == 2
    for key in ("run_id", "job_ids", "backend", "hosts", "git", "bundle_hash", "versions",
                "seed", "created_at", "ended_at"):
        assert key in meta, key
    assert meta["versions"]["torch"]


def test_per_epoch_files_have_one_row_per_epoch_and_rank(v3_run):
    d = v3_run / "finetune"
    epochs = [int(r["Epoch"]) for r in rows(d / "training.csv")]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 3
    memory = rows(d / "gpu_memory.csv")
    assert sorted((int(r["epoch"]), int(r["rank"])) for r in memory) == [
        (e, rank) for e in epochs for rank in (0, 1)]
    assert all(r["allocated_mb"] == "" and float(r["host_rss_mb"]) > 0 for r in memory)
    phases = {(int(r["epoch"]), r["phase"]) for r in rows(d / "probability_stats.csv")}
    assert {(e, p) for e in epochs for p in ("train", "val")} <= phases
    grads = rows(d / "gradient_stats.csv")
    assert [int(r["epoch"]) for r in grads] == epochs
    assert all(float(r["norm_min"]) <= float(r["norm_mean"]) <= float(r["norm_max"])
               for r in grads)


def test_evaluation_equals_sklearn_recomputed_from_predictions(v3_run):
    for stage in ("finetune", "eval"):
        d = v3_run / stage
        predictions = rows(d / "predictions.csv")
        for row in rows(d / "evaluation.csv"):
            split = [p for p in predictions if p["split"] == row["split"]]
            y = np.array([int(p["label"]) for p in split])
            prob = np.array([float(p["probability"]) for p in split])
            indices = sorted(int(p["index"]) for p in split)
            assert indices == list(range(len(indices))), "each sample exactly once"
            pred = (prob >= 0.5).astype(int)
            expected = {
                "auroc": roc_auc_score(y, prob), "auprc": average_precision_score(y, prob),
                "accuracy": accuracy_score(y, pred),
                "sensitivity": recall_score(y, pred, pos_label=1),
                "specificity": recall_score(y, pred, pos_label=0),
                "precision": precision_score(y, pred), "recall": recall_score(y, pred),
                "f1": f1_score(y, pred), "mcc": matthews_corrcoef(y, pred),
            }
            for metric, value in expected.items():
                assert abs(float(row[metric]) - value) <= 1e-6, (stage, row["split"], metric)


def test_eval_split_separation_equals_mean_probability_difference(v3_run):
    d = v3_run / "eval"
    predictions = rows(d / "predictions.csv")
    stats = {r["phase"]: r for r in rows(d / "probability_stats.csv")}
    for split in ("val", "test"):
        part = [p for p in predictions if p["split"] == split]
        pos = [float(p["probability"]) for p in part if p["label"] == "1"]
        neg = [float(p["probability"]) for p in part if p["label"] == "0"]
        expected = sum(pos) / len(pos) - sum(neg) / len(neg)
        assert math.isclose(float(stats[f"eval_{split}"]["separation"]), expected,
                            abs_tol=1e-9)


def test_validation_metrics_cover_every_sample_once(v3_run):
    """The last epoch's Val AUROC equals the AUROC of the final val predictions when the best
    epoch is the last one; in general it must be a valid AUROC over the whole split."""
    d = v3_run / "finetune"
    training = rows(d / "training.csv")
    assert all(0.0 <= float(r["Val AUROC"]) <= 1.0 for r in training)
    best_epoch = max(training, key=lambda r: float(r["Val AUROC"]))
    predictions = [p for p in rows(d / "predictions.csv") if p["split"] == "val"]
    y = np.array([int(p["label"]) for p in predictions])
    prob = np.array([float(p["probability"]) for p in predictions])
    assert abs(roc_auc_score(y, prob) - float(best_epoch["Val AUROC"])) <= 1e-6


def test_manifest_lists_every_artifact_and_verifies(v3_run):
    assert rundir.verify_manifest(v3_run) == []
    listed = {line.split("  ", 1)[1] for line in
              (v3_run / "MANIFEST.sha256").read_text().splitlines()}
    assert "finetune/training.csv" in listed and "eval/predictions.csv" in listed


def test_stdout_names_the_run_directory_and_the_final_evaluation(v3_run):
    out = (v3_run.parent / "stdout.txt").read_text()
    assert f"Run directory: runs/v3/{v3_run.name}" in out
    assert "Final evaluation (stage eval)" in out
    assert out.count("Run directory:") == 1  # printed by rank 0 only


def test_early_stopping_on_two_ranks_logs_without_a_logging_error(tmp_path):
    cfg = write_config(tmp_path / "stop.yaml", """\
experiment: stop
data: {rows: 800, features: 8, informative: 3}
model: {hidden: [16]}
training:
  epochs: 6
  batch_size: 64
  early_stopping: {enabled: true, metric: val_loss, patience: 1, min_delta: 100}
""")
    proc = run_trainer(tmp_path, "--config", str(cfg), nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Logging error" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    run = next((tmp_path / "runs" / "stop").iterdir())
    assert [r["Epoch"] for r in rows(run / "train" / "training.csv")] == ["1", "2"]
    rank0 = (run / "logs" / "train.rank0.log").read_text()
    assert "early stopping after epoch 2 (best val_loss=" in rank0
    assert "at epoch 1)" in rank0
