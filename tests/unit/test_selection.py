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
