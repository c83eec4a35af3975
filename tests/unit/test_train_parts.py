"""Trainer pieces in-process: gradient statistics, losses, data loading, checkpoints."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from hpcrun.config import DataConfig, LossConfig
from hpcrun.errors import DataError
from hpcrun.track import checkpoint
from hpcrun.track.diagnostics import GradientTracker
from hpcrun.track.metrics import separation_from_sums, separation_stats
from hpcrun.train.data import load_data
from hpcrun.train.losses import TrainModule, classification_loss
from hpcrun.train.models import MLP


def grads_for(model, seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(64, 12), (torch.rand(64) > 0.5).float()
    model.zero_grad()
    TrainModule(model, LossConfig())(x, y)[0].backward()


@pytest.mark.parametrize("max_norm", [0.05, 100.0])
def test_logged_total_norm_equals_clip_grad_norm(max_norm):
    torch.manual_seed(1)
    model = MLP(12, [32, 16])
    twin = copy.deepcopy(model)
    grads_for(model)
    grads_for(twin)
    params = [p for p in model.parameters()]
    tracker = GradientTracker([n for n, _ in model.named_parameters()], max_norm,
                              torch.device("cpu"))
    ours = tracker.clip(params)
    theirs = torch.nn.utils.clip_grad_norm_(list(twin.parameters()), max_norm)
    assert torch.equal(ours, theirs)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)  # clipped identically
    row, layers = tracker.epoch_rows(1)
    assert row["steps"] == 1 and row["norm_last"] == pytest.approx(theirs.item(), rel=1e-12)
    assert row["norm_mean"] == row["norm_max"] == row["norm_min"] == row["norm_last"]
    assert row["clipped_fraction"] == (1.0 if theirs.item() > max_norm else 0.0)
    assert math.sqrt(sum(r["norm_mean"] ** 2 for r in layers)) == pytest.approx(theirs.item())


def test_nonfinite_steps_are_counted_not_averaged():
    model = MLP(4, [4])
    tracker = GradientTracker([n for n, _ in model.named_parameters()], 1.0,
                              torch.device("cpu"))
    for value in (1.0, float("nan"), 3.0):
        for p in model.parameters():
            p.grad = torch.full_like(p, value)
        tracker.clip(list(model.parameters()))
    row, _ = tracker.epoch_rows(1)
    assert row["steps"] == 3 and row["nonfinite_steps"] == 1
    assert math.isfinite(row["norm_mean"])


def test_focal_loss_equals_bce_when_gamma_zero_and_no_alpha():
    logits, y = torch.randn(50), (torch.rand(50) > 0.5).float()
    focal = LossConfig(type="focal", focal_gamma=0.0, focal_alpha=None)
    assert torch.allclose(classification_loss(logits, y, focal),
                          classification_loss(logits, y, LossConfig()))


def test_learned_weights_add_a_log_variance_per_component():
    cfg = LossConfig(components={"classification": 1.0, "reconstruction": 0.5},
                     learned_weights=True)
    module = TrainModule(MLP(6, [8], reconstruction=True), cfg)
    total, raw, _ = module(torch.randn(10, 6), torch.ones(10))
    assert raw.shape == (2,)
    assert total.item() == pytest.approx(raw[0].item() + 0.5 * raw[1].item())  # s = 0
    weights, sigmas = module.effective_weights()
    assert weights == [1.0, 0.5] and sigmas == [1.0, 1.0]


def test_separation_from_sums_matches_direct_computation():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.random(200)
    direct = separation_stats(y, p)
    pos, neg = p[y == 1], p[y == 0]
    sums = separation_from_sums(len(pos), pos.sum(), (pos ** 2).sum(), len(neg), neg.sum(),
                                (neg ** 2).sum())
    for key, value in direct.items():
        assert sums[key] == pytest.approx(value, rel=1e-9)


def test_synthetic_data_is_deterministic_and_honours_positive_rate():
    cfg = DataConfig(rows=2000, features=10, informative=4, positive_rate=0.25)
    a, b = load_data(cfg, 3), load_data(cfg, 3)
    assert torch.equal(a.splits["train"].x, b.splits["train"].x)
    assert sum(len(s) for s in a.splits.values()) == 2000
    assert a.info["positive_rate"]["train"] == pytest.approx(0.25, abs=0.03)
    assert not torch.equal(load_data(cfg, 4).splits["train"].x, a.splits["train"].x)


def test_files_loader_counts_and_fills_missing_values(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text(
            "a,b,label\n1,,0\n2,4,1\n3,6,0\n" + ("5,5,1\n" * 5))
    data = load_data(DataConfig(source="files", path=str(tmp_path), standardize=False), 0)
    assert data.feature_names == ["a", "b"]
    assert data.info["missing_values"] == {"train:b": 1, "val:b": 1, "test:b": 1}
    train_mean_b = (4 + 6 + 25) / 7
    assert data.splits["train"].x[0, 1].item() == pytest.approx(train_mean_b, rel=1e-6)


def test_files_loader_split_column_and_errors(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text("x,y,split\n" + "1,0,train\n2,1,train\n3,0,val\n4,1,test\n")
    data = load_data(DataConfig(source="files", path=str(path), label_column="y"), 0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 2, "val": 1, "test": 1}
    path.write_text("x,y,split\n1,2,train\n2,1,val\n3,0,test\n")
    with pytest.raises(DataError, match="binary"):
        load_data(DataConfig(source="files", path=str(path), label_column="y"), 0)


def test_checkpoint_roundtrip_with_rng_state_and_weights_only(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    weights = MLP(3, [2]).state_dict()
    state = {"rng": [checkpoint.rng_state()], "epoch": 3, "model": weights}
    expected = (torch.rand(3), np.random.rand(2))
    checkpoint.save(state, tmp_path / "last.pt")
    checkpoint.link(tmp_path / "last.pt", tmp_path / "best.pt")
    loaded = checkpoint.load(tmp_path / "best.pt")
    checkpoint.set_rng_state(loaded["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])
    assert loaded["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
