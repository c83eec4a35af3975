"""The trainer's stages run in this process (one rank, tiny data): what a stage freezes,
which epoch it keeps, what an evaluation stage loads, and what it refuses."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from trainer_harness import trainer_process_state

from hpcrun.track import checkpoint

TINY = """\
experiment: tiny
seed: 3
data: {rows: 600, features: 6, informative: 3, noise: 0.5}
model: {hidden: [16], dropout: 0.0}
training:
  epochs: 3
  batch_size: 32
  lr: 0.01
  scheduler: {type: none}
  logging: {per_layer_gradients: true}
"""


@pytest.fixture
def trainer(tmp_path, monkeypatch, capsys):
    """``trainer(yaml_text, *args)`` -> (exit code, stdout, stderr), run in this process from
    ``tmp_path``; what a run changes in the process is undone after (trainer_process_state)."""
    from hpcrun.train.__main__ import main

    monkeypatch.chdir(tmp_path)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)

    with trainer_process_state() as log:
        handlers = list(log.handlers)

        def run(text: str, *args: str) -> tuple[int, str, str]:
            config = tmp_path / "config.in.yaml"
            config.write_text(text)
            capsys.readouterr()
            code = main(["--config", str(config), *args])
            for handler in log.handlers[len(handlers):]:
                handler.close()
            log.handlers[:] = handlers
            out = capsys.readouterr()
            return code, out.out, out.err

        yield run


def only_run(tmp_path: Path, experiment: str = "tiny") -> Path:
    runs = sorted((tmp_path / "runs" / experiment).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- freezing


class Routed(nn.Module):
    """Two experts; a whole batch goes to one of them, chosen by its data."""

    def __init__(self, n_features: int):
        super().__init__()
        self.a = nn.Linear(n_features, 1)
        self.b = nn.Linear(n_features, 1)
        self.norm = nn.BatchNorm1d(n_features, affine=False)

    def forward(self, x):
        x = self.norm(x)
        expert = self.a if x[:, 0].mean() > 0 else self.b
        return expert(x)


class TwoHeads(nn.Module):
    """A classifier head and a decoder the loss may or may not use, and an aux term."""

    def __init__(self, n_features: int, reconstruction: bool):
        super().__init__()
        self.body = nn.Linear(n_features, 8)
        self.head = nn.Linear(8, 1)
        self.decoder = nn.Linear(8, n_features)  # built whatever the loss says
        self.extra = nn.Linear(8, 1)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.head(h), "reconstruction": self.decoder(h),
                "aux": {"penalty": self.extra(h).pow(2).mean()}}


@pytest.fixture
def models(monkeypatch):
    module = types.ModuleType("stage_test_models")
    module.routed = lambda n_features, *, reconstruction: Routed(n_features)
    module.two_heads = lambda n_features, *, reconstruction: TwoHeads(n_features, reconstruction)
    monkeypatch.setitem(sys.modules, "stage_test_models", module)
    return module


def test_a_data_dependent_branch_trains_in_one_process(trainer, tmp_path, models):
    code, out, err = trainer(TINY, "--set", "model.name=stage_test_models:routed",
                             "--set", "training.epochs=2", "--set", "training.batch_size=8")
    assert code == 0, err[-2000:]
    assert "not trained in this stage" not in out + err
    layers = {r["layer"]: float(r["norm_mean"]) for r in csv_rows(
        only_run(tmp_path) / "train" / "gradient_layers.csv") if r["epoch"] == "2"}
    assert layers["a.weight"] > 0 and layers["b.weight"] > 0


def test_unreachable_parameters_follow_the_loss_components_not_a_batch():
    from hpcrun.config import LossConfig
    from hpcrun.train.loop import unreachable_parameters
    from hpcrun.train.losses import TrainModule

    torch.manual_seed(0)
    x = torch.randn(16, 5)

    def frozen(components: dict[str, float]) -> list[str]:
        module = TrainModule(TwoHeads(5, True), LossConfig(components=components))
        return unreachable_parameters(module, x)

    assert frozen({"classification": 1.0}) == [
        "model.decoder.weight", "model.decoder.bias", "model.extra.weight", "model.extra.bias"]
    assert frozen({"reconstruction": 1.0, "classification": 0.0}) == [
        "model.head.weight", "model.head.bias", "model.extra.weight", "model.extra.bias"]
    assert frozen({"classification": 1.0, "reconstruction": 0.5, "penalty": 0.1}) == []

    # neither branch is an output the loss ignores: nothing frozen, whichever the batch takes
    routed = TrainModule(Routed(5), LossConfig())
    stats = routed.model.norm.running_mean.clone(), routed.model.norm.num_batches_tracked.clone()
    assert unreachable_parameters(routed, x) == []
    assert unreachable_parameters(routed, -x) == []
    # the look at the outputs leaves batch-norm statistics and the training mode alone
    assert torch.equal(routed.model.norm.running_mean, stats[0])
    assert torch.equal(routed.model.norm.num_batches_tracked, stats[1])
    assert routed.training


# --------------------------------------------------------------------------- learned weights

LEARNED = """\
experiment: tiny
seed: 1
data: {rows: 240, features: 24, informative: 2, noise: 3.0, val_fraction: 0.25}
model: {hidden: [64, 64], dropout: 0.0}
training:
  epochs: 12
  batch_size: 8
  lr: 0.01
  scheduler: {type: none}
  early_stopping: {enabled: false, metric: val_loss}
  loss: {components: {classification: 1.0, reconstruction: 0.5}, learned_weights: true}
"""


def raw_val_losses(stage_dir: Path) -> dict[int, float]:
    """Per epoch, the validation loss under the configured weights (from the components)."""
    return {int(r["epoch"]): float(r["classification"]) + 0.5 * float(r["reconstruction"])
            for r in csv_rows(stage_dir / "loss_components.csv") if r["phase"] == "val"}


def test_learned_weights_select_best_epoch_on_the_raw_validation_loss(trainer, tmp_path):
    code, _, err = trainer(LEARNED, "--set", "pipeline=[{name: train, mode: train_only}]")
    assert code == 0, err[-2000:]
    stage = only_run(tmp_path) / "train"
    raw = raw_val_losses(stage)
    totals = {int(r["epoch"]): float(r["total"])
              for r in csv_rows(stage / "loss_components.csv") if r["phase"] == "val"}
    # the weighted total keeps falling with the log-variances while the raw loss does not:
    # the two choose different epochs
    assert min(totals, key=totals.get) != min(raw, key=raw.get)
    best = checkpoint.load(stage / "checkpoints" / "best.pt")
    assert best["epoch"] == min(raw, key=raw.get)
    assert best["best_metric"] == pytest.approx(min(raw.values()), rel=1e-5)


def test_eval_only_stage_loads_the_learned_loss_weights(trainer, tmp_path):
    code, _, err = trainer(LEARNED, "--set", "training.epochs=3", "--set",
                           "pipeline=[{name: train, mode: train_only}, "
                           "{name: eval, mode: eval_only, init_from: train, "
                           "init_checkpoint: last}]")
    assert code == 0, err[-2000:]
    run = only_run(tmp_path)
    last = [r for r in csv_rows(run / "train" / "loss_components.csv") if r["phase"] == "val"][-1]
    evaluated = csv_rows(run / "eval" / "loss_components.csv")[0]
    assert evaluated["phase"] == "eval_test"
    for column in ("weight_classification", "weight_reconstruction", "sigma_classification"):
        assert float(evaluated[column]) == pytest.approx(float(last[column]), rel=1e-6)
    assert float(evaluated["weight_classification"]) != pytest.approx(1.0)


# --------------------------------------------------------------------------- bad input


def test_an_empty_synthetic_split_is_bad_input_naming_the_split(trainer, tmp_path):
    code, out, err = trainer(TINY, "--set", "data.rows=20", "--set", "data.val_fraction=0.02")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, out[-1500:] + err[-1500:]
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert "val" in lines[0] and "data.val_fraction" in lines[0] and "data.rows" in lines[0]


def test_failure_json_names_the_stage_that_failed_before_its_first_epoch(
        trainer, tmp_path, monkeypatch):
    from hpcrun.train import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("data loader broke")

    monkeypatch.setattr(pipeline, "load_data", broken)
    code, _, err = trainer(TINY, "--stage", "train")
    assert code == 1, err[-2000:]
    failure = json.loads((only_run(tmp_path) / "failure.json").read_text())
    assert failure["stage"] == "train"
    assert "data loader broke" in failure["exception"]


# --------------------------------------------------------------------------- config of a run


def test_a_stage_started_with_another_config_than_the_run_is_refused(trainer, tmp_path):
    code, _, err = trainer(TINY, "--set", "training.epochs=1")
    assert code == 0, err[-2000:]
    run = only_run(tmp_path)
    config = (run / "config.yaml").read_text()
    status = (run / "status.json").read_text()
    code, out, err = trainer(TINY, "--run-dir", str(run), "--set", "training.epochs=1",
                             "--set", "training.lr=0.5")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, out + err
    assert len(lines) == 1 and "training.lr" in lines[0] and "config.yaml" in lines[0], err
    assert (run / "config.yaml").read_text() == config
    assert (run / "status.json").read_text() == status
    assert not (run / "failure.json").exists()
    # the same config goes on
    code, _, err = trainer(TINY, "--run-dir", str(run), "--set", "training.epochs=1")
    assert code == 0, err[-2000:]


def test_resume_without_run_dir_refuses_a_set_that_changes_the_run(trainer, tmp_path):
    code, _, err = trainer(TINY, "--set", "training.epochs=1")
    assert code == 0, err[-2000:]
    run = only_run(tmp_path)
    code, out, err = trainer(TINY, "--resume", "--set", "training.epochs=5")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, out + err
    assert len(lines) == 1 and "training.epochs" in lines[0], err
    assert "epochs: 1" in (run / "config.yaml").read_text()
    # a --set that agrees with the run's config is no change
    code, _, err = trainer(TINY, "--resume", "--set", "training.epochs=1")
    assert code == 0, err[-2000:]


def test_resume_help_says_what_happens_to_set(capsys):
    from hpcrun.train.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--set" in text and "config.yaml" in text and "refused" in text


# --------------------------------------------------------------------------- logging


def test_early_stopping_message_formats_an_unknown_best():
    from hpcrun.train.loop import early_stopping_message

    assert early_stopping_message("train", 4, "val_loss", None, None) == (
        "[train] early stopping after epoch 4 (best val_loss=n/a at epoch n/a)")
    assert early_stopping_message("train", 4, "val_auroc", 0.912346, 2) == (
        "[train] early stopping after epoch 4 (best val_auroc=0.91235 at epoch 2)")
