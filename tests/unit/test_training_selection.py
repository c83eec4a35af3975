"""Early stopping, best.pt, learning-rate schedules and periodic checkpoints of hpcrun's
trainer, checked against training.csv and the checkpoints' own weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score
from trainer_harness import (
    column,
    epochs,
    isolated_trainer,
    load,
    rows,
    same_weights,
    split_loss,
    stage_module,
)


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    yield from isolated_trainer(tmp_path, monkeypatch)


def replay_early_stopping(values: list[float], mode: str, min_delta: float,
                          patience: int) -> tuple[int, int]:
    """(best epoch, epoch training stops after) by the documented rule: a value improves
    when it beats the best so far by more than min_delta; stop once `patience` epochs in a
    row have not improved."""
    best, best_epoch, stale = None, None, 0
    for epoch, value in enumerate(values, start=1):
        better = best is None or (value < best - min_delta if mode == "min"
                                  else value > best + min_delta)
        if better:
            best, best_epoch, stale = value, epoch, 0
        else:
            stale += 1
            if stale >= patience:
                return best_epoch, epoch
    return best_epoch, len(values)


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_counts_epochs_without_improvement_beyond_min_delta(trainer):
    # lr so small that the validation loss only moves in its seventh digit: no epoch after
    # the first beats it by min_delta, so training stops after 1 + patience epochs
    exp = trainer.experiment(training={
        "epochs": 10, "lr": 1e-6,
        "early_stopping": {"enabled": True, "patience": 2, "min_delta": 1e-3}})
    run = trainer.run(exp)
    training = run / "train" / "training.csv"
    assert epochs(training) == [1, 2, 3]
    losses = column(training, "Val Loss")
    assert losses[2] < losses[0]  # it did improve, just by less than min_delta
    assert load(run / "train/checkpoints/last.pt")["epoch"] == 3
    assert load(run / "train/checkpoints/best.pt")["epoch"] == 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "SUCCEEDED"


@pytest.mark.parametrize("metric,patience", [("val_loss", 2), ("val_auroc", 1)])
def test_early_stopping_epoch_count_follows_the_metric_column(trainer, metric, patience):
    # a large learning rate on 210 rows: the validation numbers wander, and the run must
    # stop exactly where the rule, replayed on its own training.csv, says
    exp = trainer.experiment(
        model={"hidden": [32, 32]},
        training={"epochs": 25, "lr": 0.2, "optimizer": "sgd", "grad_clip": None,
                  "early_stopping": {"enabled": True, "metric": metric,
                                     "patience": patience}})
    run = trainer.run(exp)
    training = run / "train" / "training.csv"
    label = "Val Loss" if metric == "val_loss" else "Val AUROC"
    mode = "min" if metric == "val_loss" else "max"
    values = column(training, label)
    best_epoch, stop_epoch = replay_early_stopping(values, mode, 0.0, patience)
    assert epochs(training) == list(range(1, stop_epoch + 1))
    assert stop_epoch < 25, "the scenario must stop early to test anything"
    best = load(run / "train/checkpoints/best.pt")
    assert best["epoch"] == best_epoch
    assert best["best_metric"] == pytest.approx(values[best_epoch - 1], rel=1e-12)


def test_a_run_killed_after_stopping_early_does_not_train_on_when_resumed(trainer):
    exp = trainer.experiment(training={
        "epochs": 10, "lr": 1e-6,
        "early_stopping": {"enabled": True, "patience": 2, "min_delta": 1e-3}})
    run = trainer.run(exp)
    # as if the process died after the early-stopping checkpoint, before the stage finished
    status = json.loads((run / "status.json").read_text())
    status["state"], status["stages"]["train"] = "RUNNING", "RUNNING"
    (run / "status.json").write_text(json.dumps(status))
    (run / "train" / "evaluation.csv").unlink()
    trainer.run(exp, "--resume", run_dir=run)
    assert epochs(run / "train" / "training.csv") == [1, 2, 3]
    assert load(run / "train/checkpoints/last.pt")["epoch"] == 3
    assert (run / "train" / "evaluation.csv").exists()


# --------------------------------------------------------------------------- best.pt


def test_best_checkpoint_follows_the_stage_metric_and_mode(trainer):
    # mode max on the validation loss: the best epoch is the worst-loss one (the first, as
    # the loss falls), which tells best.pt apart from last.pt and from the default rule
    exp = trainer.experiment(training={
        "epochs": 4, "checkpoint_every": 1,
        "early_stopping": {"metric": "val_loss", "mode": "max"}})
    run = trainer.run(exp)
    cfg = trainer.config(exp)
    training = run / "train" / "training.csv"
    losses = column(training, "Val Loss")
    best_epoch, _ = replay_early_stopping(losses, "max", 0.0, 99)
    assert best_epoch == 1 and losses[-1] < losses[0]
    ckpt = run / "train" / "checkpoints"
    best = load(ckpt / "best.pt")
    assert best["epoch"] == best_epoch
    # its weights are that epoch's: they give that epoch's validation loss
    assert split_loss(cfg, best) == pytest.approx(losses[best_epoch - 1], rel=1e-5)
    assert split_loss(cfg, load(ckpt / "last.pt")) == pytest.approx(losses[-1], rel=1e-5)
    assert not same_weights(best["model"], load(ckpt / "last.pt")["model"])
    # and the stage's final evaluation is best.pt's
    evaluation = {row["split"]: row for row in rows(run / "train" / "evaluation.csv")}
    auroc = column(training, "Val AUROC")[best_epoch - 1]
    assert float(evaluation["val"]["auroc"]) == pytest.approx(auroc, rel=1e-12)
    eval_rows = [r for r in rows(run / "train" / "loss_components.csv")
                 if r["phase"] == "eval_val"]
    assert [int(r["epoch"]) for r in eval_rows] == [best_epoch]
    assert float(eval_rows[0]["total"]) == pytest.approx(losses[best_epoch - 1], rel=1e-9)


def test_best_checkpoint_by_validation_auroc_holds_that_epochs_weights(trainer):
    exp = trainer.experiment(
        model={"hidden": [32, 32]},
        training={"epochs": 5, "lr": 0.2, "optimizer": "sgd", "grad_clip": None,
                  "early_stopping": {"metric": "val_auroc"}})
    run = trainer.run(exp)
    cfg = trainer.config(exp)
    training = run / "train" / "training.csv"
    aurocs, losses = column(training, "Val AUROC"), column(training, "Val Loss")
    best_epoch, _ = replay_early_stopping(aurocs, "max", 0.0, 99)
    lowest_loss = losses.index(min(losses)) + 1
    assert best_epoch not in (lowest_loss, len(aurocs)), \
        "the scenario must tell the AUROC rule from the loss rule and from last.pt"
    best = load(run / "train/checkpoints/best.pt")
    assert best["epoch"] == best_epoch
    module, data = stage_module(cfg, best)
    val = data.splits["val"]
    with torch.no_grad():
        _, _, logits = module(val.x, val.y)
    recomputed = roc_auc_score(val.y.numpy(), torch.sigmoid(logits.double()).numpy())
    assert recomputed == pytest.approx(aurocs[best_epoch - 1], rel=1e-9)


# --------------------------------------------------------------------------- schedules


def _lrs(trainer, **scheduler) -> tuple[list[float], dict]:
    epochs_n = scheduler.pop("epochs")
    exp = trainer.experiment(training={"epochs": epochs_n, "lr": 0.01,
                                       "scheduler": scheduler})
    run = trainer.run(exp)
    return column(run / "train" / "training.csv", "Learning Rate"), scheduler


def test_cosine_schedule_with_linear_warmup_and_floor(trainer):
    lr, floor, warmup, total = 0.01, 0.001, 2, 7
    got, _ = _lrs(trainer, type="cosine", warmup_epochs=warmup, min_lr=floor, epochs=total)
    expected = []
    for epoch in range(1, total + 1):
        if epoch <= warmup:  # linear from 0: lr * epoch / (warmup + 1)
            expected.append(lr * epoch / (warmup + 1))
        else:  # half a cosine from lr down towards min_lr over the remaining epochs
            progress = (epoch - 1 - warmup) / (total - warmup)
            expected.append(floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    assert got == pytest.approx(expected, rel=1e-9)
    assert got[warmup] == pytest.approx(lr)  # the first epoch after warmup runs at full lr
    assert all(value >= floor for value in got[warmup:])


def test_step_schedule_after_warmup(trainer):
    lr = 0.01
    got, _ = _lrs(trainer, type="step", warmup_epochs=1, step_size=2, gamma=0.5,
                  min_lr=0.0015, epochs=8)
    # warmup, then halved every 2 epochs, never under min_lr
    assert got == pytest.approx([lr / 2, lr, lr, lr / 2, lr / 2, lr / 4, lr / 4, 0.0015],
                                rel=1e-9)


def test_no_schedule_keeps_the_learning_rate(trainer):
    got, _ = _lrs(trainer, type="none", epochs=3)
    assert got == [0.01, 0.01, 0.01]


def test_plateau_schedule_reduces_after_patience_flat_epochs(trainer):
    # lr so small that the validation loss is flat: every epoch after the first fails to
    # improve, so the rate drops by gamma each time patience is exceeded, down to min_lr
    exp = trainer.experiment(training={
        "epochs": 7, "lr": 1e-7,
        "scheduler": {"type": "plateau", "patience": 1, "gamma": 0.5, "min_lr": 3e-8}})
    run = trainer.run(exp)
    got = column(run / "train" / "training.csv", "Learning Rate")
    lr = 1e-7
    assert got == pytest.approx([lr, lr, lr, lr / 2, lr / 2, 3e-8, 3e-8], rel=1e-9)


# --------------------------------------------------------------------------- checkpoint_every


def test_periodic_checkpoints_hold_their_epochs_weights(trainer):
    exp = trainer.experiment(training={"epochs": 5, "checkpoint_every": 2})
    run = trainer.run(exp)
    cfg = trainer.config(exp)
    ckpt = run / "train" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("epoch_*.pt")) == ["epoch_0002.pt",
                                                                "epoch_0004.pt"]
    losses = column(run / "train" / "training.csv", "Val Loss")
    states = {n: load(ckpt / f"epoch_{n:04d}.pt") for n in (2, 4)}
    for n, state in states.items():
        assert state["epoch"] == n
        assert split_loss(cfg, state) == pytest.approx(losses[n - 1], rel=1e-5)
    assert not same_weights(states[2]["model"], states[4]["model"])
