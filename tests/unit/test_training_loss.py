"""The loss hpcrun's trainer optimises: ``pos_weight`` and label smoothing against their
formulas, learned loss weights that learn, and ``grad_accum_steps`` that adds micro-batches up
to the step one large batch would take."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_harness import (
    column,
    isolated_trainer,
    load,
    rows,
    same_weights,
    stage_module,
)

from hpcrun.config import LossConfig
from hpcrun.train.losses import classification_loss


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    yield from isolated_trainer(tmp_path, monkeypatch)


LOGITS = torch.tensor([2.0, -1.0, 0.5, -3.0, 0.0, 1.5], dtype=torch.float64)
LABELS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)


def bce_formula(logits, labels, pos_weight=1.0, smoothing=0.0) -> float:
    """-mean(pw t log p + (1 - t) log(1 - p)), targets t = y (1 - s) + s / 2."""
    total = 0.0
    for z, y in zip(logits.tolist(), labels.tolist(), strict=True):
        t = y * (1 - smoothing) + smoothing / 2
        p = 1 / (1 + math.exp(-z))
        total -= pos_weight * t * math.log(p) + (1 - t) * math.log(1 - p)
    return total / len(logits)


# --------------------------------------------------------------------------- pos_weight etc.


@pytest.mark.parametrize("pos_weight,smoothing", [(None, 0.0), (3.0, 0.0), (None, 0.2),
                                                  (3.0, 0.2)])
def test_bce_with_pos_weight_and_label_smoothing_equals_the_formula(pos_weight, smoothing):
    cfg = LossConfig(pos_weight=pos_weight, label_smoothing=smoothing)
    got = classification_loss(LOGITS, LABELS, cfg).item()
    assert got == pytest.approx(bce_formula(LOGITS, LABELS, pos_weight or 1.0, smoothing),
                                rel=1e-12)


def test_focal_loss_weighs_positives_by_pos_weight():
    gamma, alpha, pw = 2.0, 0.25, 4.0
    cfg = LossConfig(type="focal", focal_gamma=gamma, focal_alpha=alpha, pos_weight=pw)
    expected = 0.0
    for z, y in zip(LOGITS.tolist(), LABELS.tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        p_t = p if y else 1 - p
        alpha_t = alpha if y else 1 - alpha
        expected += (pw if y else 1.0) * -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
    got = classification_loss(LOGITS, LABELS, cfg).item()
    assert got == pytest.approx(expected / len(LOGITS), rel=1e-12)


def test_trainer_validation_loss_uses_pos_weight_and_label_smoothing(trainer):
    exp = trainer.experiment(training={
        "epochs": 2, "loss": {"pos_weight": 3.0, "label_smoothing": 0.1}})
    run = trainer.run(exp)
    module, data = stage_module(trainer.config(exp), load(run / "train/checkpoints/last.pt"))
    val = data.splits["val"]
    with torch.no_grad():
        _, _, logits = module(val.x, val.y)
    logged = column(run / "train" / "training.csv", "Val Loss")[-1]
    expected = bce_formula(logits.double(), val.y.double(), 3.0, 0.1)
    assert logged == pytest.approx(expected, rel=1e-5)
    assert logged != pytest.approx(bce_formula(logits.double(), val.y.double()), rel=1e-3)


# --------------------------------------------------------------------------- learned weights


def test_learned_loss_weights_move_towards_the_inverse_of_their_loss(trainer):
    # s_c, the log-variance of component c, minimises w e^-s L + s at e^-s w = 1 / L: a
    # component whose loss is under 1/w gains weight, one over it loses weight
    exp = trainer.experiment(training={
        "epochs": 5, "lr": 0.05,
        "loss": {"components": {"classification": 1.0, "reconstruction": 20.0},
                 "learned_weights": True}})
    run = trainer.run(exp)
    found = rows(run / "train" / "loss_components.csv")
    train = [r for r in found if r["phase"] == "train"]
    assert [int(r["epoch"]) for r in train] == [1, 2, 3, 4, 5]
    cls = [float(r["weight_classification"]) for r in train]
    rec = [float(r["weight_reconstruction"]) for r in train]
    assert all(float(r["classification"]) < 1.0 for r in train)  # loss under 1/w = 1
    assert all(float(r["reconstruction"]) > 0.05 for r in train)  # loss over 1/w = 0.05
    assert 1.0 < cls[0] < cls[1] < cls[-1]
    assert 20.0 > rec[0] > rec[1] > rec[-1]
    # the logged pair is consistent: weight_c = w_c e^-s, sigma_c = e^(s/2)
    for r in found:
        for name, w in (("classification", 1.0), ("reconstruction", 20.0)):
            sigma = float(r[f"sigma_{name}"])
            assert float(r[f"weight_{name}"]) * sigma ** 2 == pytest.approx(w, rel=1e-5)
    # a validation total is the weighted sum plus the log-variances, at those weights
    for r in (r for r in found if r["phase"] == "val"):
        total = sum(float(r[f"weight_{c}"]) * float(r[c])
                    + 2 * math.log(float(r[f"sigma_{c}"]))
                    for c in ("classification", "reconstruction"))
        assert float(r["total"]) == pytest.approx(total, rel=1e-5)
    # and the checkpoint holds the last epoch's log-variances
    log_vars = load(run / "train/checkpoints/last.pt")["module"]["log_vars"]
    last = train[-1]
    assert log_vars.tolist() == pytest.approx(
        [2 * math.log(float(last[f"sigma_{c}"])) for c in ("classification",
                                                           "reconstruction")], rel=1e-5)


# --------------------------------------------------------------------------- accumulation


def test_accumulated_micro_batches_take_the_step_of_the_whole_batch(trainer):
    # plain SGD without clipping: the update is proportional to the gradient, so a
    # micro-batch weighted wrongly, or a step per micro-batch, shows in the weights
    base = {"epochs": 2, "optimizer": "sgd", "lr": 0.1, "grad_clip": None}
    runs = {}
    for name, batch, accum in (("whole", 32, 1), ("accumulated", 32, 4), ("small", 8, 1)):
        exp = trainer.experiment(name, training={**base, "batch_size": batch,
                                                 "grad_accum_steps": accum})
        runs[name] = trainer.run(exp)
    model = {name: load(run / "train/checkpoints/last.pt")["model"]
             for name, run in runs.items()}
    assert same_weights(model["accumulated"], model["whole"], atol=1e-6)
    assert not same_weights(model["small"], model["whole"], atol=1e-3)
    steps = {name: [int(r["steps"]) for r in rows(run / "train" / "gradient_stats.csv")]
             for name, run in runs.items()}
    # 210 training rows: 7 optimizer steps of 32 (the last of 18) per epoch
    assert steps["whole"] == steps["accumulated"] == [7, 7]
    assert steps["small"] == [27, 27]
    for col in ("Train Loss", "Val Loss"):
        assert column(runs["accumulated"] / "train/training.csv", col) == pytest.approx(
            column(runs["whole"] / "train/training.csv", col), rel=1e-5)


def test_grad_clip_zero_or_null_means_no_clipping(trainer):
    base = {"epochs": 1, "optimizer": "sgd", "lr": 0.1}
    runs = {str(clip): trainer.run(trainer.experiment(
        f"clip{i}", training={**base, "grad_clip": clip}))
        for i, clip in enumerate((None, 0, 1e-3))}
    model = {name: load(run / "train/checkpoints/last.pt")["model"]
             for name, run in runs.items()}
    assert same_weights(model["0"], model["None"])
    assert not same_weights(model["0.001"], model["None"], atol=1e-3)
    fractions = {name: float(rows(run / "train/gradient_stats.csv")[0]["clipped_fraction"])
                 for name, run in runs.items()}
    assert fractions == {"None": 0.0, "0": 0.0, "0.001": 1.0}

def test_eval_only_stage_reports_the_checkpoints_learned_weights(trainer):
    exp = trainer.experiment(
        training={"epochs": 3, "lr": 0.05,
                  "loss": {"components": {"classification": 1.0, "reconstruction": 1.0},
                           "learned_weights": True}},
        pipeline=[{"name": "fit", "mode": "train_only"},
                  {"name": "check", "mode": "eval_only", "init_from": "fit",
                   "eval_splits": ["val"]}])
    run = trainer.run(exp)
    (fit,) = [r for r in rows(run / "fit/loss_components.csv") if r["phase"] == "eval_val"]
    (check,) = [r for r in rows(run / "check/loss_components.csv")
                if r["phase"] == "eval_val"]
    assert float(fit["weight_classification"]) != pytest.approx(1.0, abs=0.05)
    # the same checkpoint on the same split: the same losses, weights and total
    for key in ("classification", "reconstruction", "weight_classification",
                "weight_reconstruction", "sigma_classification", "sigma_reconstruction",
                "total"):
        assert float(check[key]) == pytest.approx(float(fit[key]), rel=1e-6), key
