"""One rule picks a stage's best epoch for the trainer (best.pt, early stopping), monitor's best
row and the report: the first finite value that beats the best so far by more than min_delta."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hpcrun import rundir
from hpcrun.selection import BestRow, Selection, column_of, improves, read_selections

values = st.lists(st.one_of(st.floats(-10, 10), st.just(math.nan), st.just(math.inf)),
                  min_size=1, max_size=30)


def _training(path: Path, losses: list[float]) -> rundir.CsvTail:
    rows = [f"{i},1,0.5,{v!r},0.1" for i, v in enumerate(losses, 1)]
    path.write_text("Epoch,Epoch Time,Train Loss,Val Loss,Learning Rate\n" + "\n".join(rows)
                    + "\n")
    tail = rundir.CsvTail(path)
    tail.refresh()
    return tail


def test_min_delta_holds_the_best_at_the_first_epoch_it_did_not_beat_by_enough(tmp_path):
    losses = [1.0, 0.95, 0.93, 0.91]
    strict = Selection(min_delta=0.1)
    assert strict.best([1, 2, 3, 4], losses) == (1, 1.0)
    assert Selection().best([1, 2, 3, 4], losses) == (4, 0.91)
    # monitor's incremental row agrees (it used to ignore min_delta and showed epoch 4)
    row = BestRow(strict).update(_training(tmp_path / "training.csv", losses))
    assert row is not None and row["Epoch"] == "1"
    assert Selection(column="Val AUROC", mode="max", min_delta=0.05).best(
        [1, 2, 3], [0.7, 0.74, 0.8]) == (3, 0.8)


def test_non_finite_values_never_become_best():
    assert not improves(math.nan, None) and not improves(math.inf, None)
    assert improves(1.0, None) and not improves(1.0, 1.0)
    assert Selection().best([1, 2, 3], [math.nan, math.inf, 3.0]) == (3, 3.0)
    assert Selection().best([1], [math.nan])[0] is None


@given(losses=values, min_delta=st.sampled_from([0.0, 0.01, 0.5]),
       mode=st.sampled_from(["min", "max"]))
def test_the_trainer_monitor_and_report_choose_the_same_epoch(tmp_path_factory, losses,
                                                               min_delta, mode):
    selection = Selection(mode=mode, min_delta=min_delta)
    best, best_epoch = None, None  # the trainer's loop, epoch by epoch
    for epoch, value in enumerate(losses, 1):
        if improves(value, best, mode, min_delta):
            best, best_epoch = value, epoch
    assert selection.best(list(range(1, len(losses) + 1)), losses)[0] == best_epoch
    path = tmp_path_factory.mktemp("run") / "training.csv"
    row = BestRow(selection).update(_training(path, losses))
    assert (None if row is None else int(row["Epoch"])) == best_epoch


def test_a_runs_config_gives_each_stage_its_column_mode_and_margin(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text(
        "experiment: t\npipeline:\n  - name: train\n"
        "training:\n  early_stopping:\n    metric: val_auroc\n    min_delta: 0.02\n")
    selection = read_selections(rundir.RunDir(run))["train"]
    assert (selection.column, selection.mode, selection.min_delta) == ("Val AUROC", "max", 0.02)
    assert column_of("val_loss") == "Val Loss"


# --- the rule's edges, and the per-config cache a sweep's runs share -----------------------

import datetime  # noqa: E402

import pytest  # noqa: E402

from hpcrun import selection as selection_module  # noqa: E402
from hpcrun.selection import _key, read_config  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test reads configs from scratch (the cache is per process)."""
    selection_module._CACHE.clear()
    yield
    selection_module._CACHE.clear()


def test_improves_defaults_to_lower_is_better_with_no_margin():
    assert improves(0.5, 1.0) and not improves(2.0, 1.0)
    assert improves(0.999, 1.0)  # no margin by default: any decrease counts


def test_max_mode_needs_a_strict_gain_beyond_the_margin():
    assert not improves(1.0, 1.0, "max")
    assert improves(1.01, 1.0, "max")
    assert not improves(1.04, 1.0, "max", 0.05) and improves(1.06, 1.0, "max", 0.05)
    assert not improves(0.96, 1.0, "min", 0.05) and improves(0.94, 1.0, "min", 0.05)
    assert improves(1.0, math.nan, "max") and improves(-5.0, math.inf)


def test_best_refuses_epochs_and_values_of_different_lengths():
    with pytest.raises(ValueError):
        Selection().best([1, 2], [0.5])
    assert Selection().best([None, 2], [0.1, 0.5]) == (2, 0.5)  # an epoch-less row never wins


def test_best_row_follows_appended_rows_and_starts_again_on_a_rewrite(tmp_path):
    path = tmp_path / "training.csv"
    tail = _training(path, [1.0, 0.5])
    best = BestRow(Selection())
    assert best.update(tail)["Epoch"] == "2"
    with path.open("a") as f:
        f.write("3,1,0.5,0.7,0.1\n4,1,0.5,0.4,0.1\n")
    tail.refresh()
    assert best.update(tail)["Epoch"] == "4"
    # a resume rewrites the file: the old best (0.4) no longer exists
    path.unlink()
    _training(path, [0.7, 0.9])
    tail.refresh()
    assert tail.generation == 2
    row = best.update(tail)
    assert row is not None and row["Epoch"] == "1" and best.value == 0.7


def test_column_of_maps_metrics_to_training_csv_columns():
    assert column_of("val_loss") == "Val Loss" and column_of("loss") == "Val Loss"
    assert column_of("val_auroc") == "Val AUROC"
    assert column_of("val_my_metric") == "Val my_metric"  # unknown: kept as written


def _run(tmp_path: Path, name: str, text: str) -> rundir.RunDir:
    run = tmp_path / name
    run.mkdir()
    (run / rundir.CONFIG).write_text(text)
    return rundir.RunDir(run)


ES = ("experiment: t\npipeline:\n  - name: train\n"
      "training:\n  lr: {lr}\n  early_stopping:\n    metric: {metric}\n")


def test_read_config_returns_the_text_and_its_data(tmp_path):
    run = _run(tmp_path, "a", "experiment: t\ntraining:\n  lr: 0.1\n")
    assert read_config(run) == ("experiment: t\ntraining:\n  lr: 0.1\n",
                                {"experiment": "t", "training": {"lr": 0.1}})
    assert read_config(_run(tmp_path, "b", "a: [1,\n")) == ("a: [1,\n", None)
    assert read_config(rundir.RunDir(tmp_path / "missing")) is None


def test_a_sweeps_runs_share_one_selection_and_other_choices_do_not(tmp_path):
    first = read_selections(_run(tmp_path, "a", ES.format(lr=0.1, metric="val_auroc")))
    assert first["train"].column == "Val AUROC"
    # only the learning rate differs: the same validated selection, not a second one
    assert read_selections(_run(tmp_path, "b", ES.format(lr=0.2, metric="val_auroc"))) is first
    other = read_selections(_run(tmp_path, "c", ES.format(lr=0.1, metric="val_loss")))
    assert other["train"].column == "Val Loss" and len(selection_module._CACHE) == 2
    assert read_selections(_run(tmp_path, "d", "just: [broken")) == {}


def test_the_cache_key_covers_what_decides_a_selection():
    base = {"training": {"early_stopping": {"metric": "val_loss", "mode": "min"},
                         "loss": {"components": {"classification": 1}}, "lr": 0.1},
            "pipeline": [{"name": "train"}]}
    reordered = {"pipeline": [{"name": "train"}],
                 "training": {"lr": 0.3, "loss": {"components": {"classification": 1}},
                              "early_stopping": {"mode": "min", "metric": "val_loss"}}}
    assert _key("a", base) == _key("b", reordered)
    for change in ({"training": {**base["training"], "early_stopping": {"metric": "val_f1"}}},
                   {"training": {**base["training"], "loss": {"components": {}}}},
                   {"run": {"script": "train.py"}},
                   {"pipeline": [{"name": "train", "mode": "eval_only"}]}):
        assert _key("a", {**base, **change}) != _key("a", base), change
    # a value JSON cannot hold (a YAML date) still gives a key
    dated = {"training": {"early_stopping": {"since": datetime.date(2024, 1, 1)}}}
    assert "2024-01-01" in _key("a", dated)
    # not a mapping, or a training section that is not one: the text itself is the key
    assert _key("text", ["a"]) == "text" and _key("text", {"training": 3}) == "text"


def test_the_cache_is_emptied_when_it_reaches_256_configs(tmp_path, monkeypatch):
    monkeypatch.setattr(selection_module, "_CACHE", {str(i): {} for i in range(255)})
    read_selections(_run(tmp_path, "a", ES.format(lr=0.1, metric="val_loss")))
    assert len(selection_module._CACHE) == 256
    read_selections(_run(tmp_path, "b", ES.format(lr=0.1, metric="val_auroc")))
    assert len(selection_module._CACHE) == 1


PIPELINE = """\
experiment: t
training:
  early_stopping: {metric: val_auroc, min_delta: 0.02}
pipeline:
  - name: pretrain
    mode: train_only
    overrides:
      training:
        early_stopping: {metric: val_loss, mode: max}
        loss: {components: {reconstruction: 1.0, classification: 0.0}}
  - name: eval
    mode: eval_only
    init_from: pretrain
"""


def test_each_stage_of_a_pipeline_gets_its_own_selection(tmp_path):
    stages = read_selections(_run(tmp_path, "a", PIPELINE))
    assert stages == {
        "pretrain": Selection("Val Loss", "max", 0.02, "train_only", classifies=False),
        "eval": Selection("Val AUROC", "max", 0.02, "eval_only", classifies=True),
    }
    # an own program decides its metrics itself: its stages count as classifiers
    own = PIPELINE.replace("experiment: t\n", "experiment: t\nrun: {script: train.py}\n")
    assert read_selections(_run(tmp_path, "b", own))["pretrain"].classifies


def test_a_loss_without_a_classification_term_does_not_classify(tmp_path):
    text = ("experiment: t\ntraining:\n  loss:\n    components: {reconstruction: 1.0}\n")
    assert read_selections(_run(tmp_path, "a", text)) == {
        "train": Selection(stage_mode="full_pipeline", classifies=False)}
