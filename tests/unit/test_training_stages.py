"""Stages and restarts of hpcrun's trainer: weights passed from one stage to the next
(``init_from``/``init_checkpoint``), ``--stage``, ``--resume`` after a preemption or a crash,
and the rows a resume drops from every per-epoch CSV."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal

import pytest
from trainer_harness import (
    column,
    epochs,
    isolated_trainer,
    load,
    rows,
    same_weights,
    split_loss,
)

from hpcrun import rundir
from hpcrun.errors import EXIT_REQUEUE
from hpcrun.track import checkpoint
from hpcrun.train import loop, pipeline


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    yield from isolated_trainer(tmp_path, monkeypatch)


#: every CSV with one row per epoch (and phase, layer or rank), with what makes a row unique
PER_EPOCH = {
    rundir.TRAINING: ("Epoch",),
    rundir.LOSS_COMPONENTS: ("epoch", "phase"),
    rundir.GRADIENT_STATS: ("epoch",),
    rundir.GRADIENT_LAYERS: ("epoch", "layer"),
    rundir.PROBABILITY_STATS: ("epoch", "phase"),
    rundir.GPU_MEMORY: ("epoch", "rank"),
}
#: columns that differ between two identical runs (wall time, process memory)
VOLATILE = {"Epoch Time", "host_rss_mb", "host_total_mb", "host"}


def stable_rows(path):
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows(path)]


def snapshot(folder):
    """Each file's bytes and inode: a rewrite (atomic rename) changes the inode."""
    return {p: (p.read_bytes(), p.stat().st_ino) for p in folder.rglob("*") if p.is_file()}


def preempt_after(monkeypatch, stop_epoch: int, stage: str | None = None) -> None:
    """Send this process SIGUSR1 (a scheduler's preemption warning) when the trainer reports
    the end of ``stop_epoch``."""
    original = pipeline.Run.write_status

    def write_status(self, **changes):
        original(self, **changes)
        if changes.get("epoch") == stop_epoch and (stage is None or changes["stage"] == stage):
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(pipeline.Run, "write_status", write_status)


# --------------------------------------------------------------------------- init_from


def two_stages(trainer, init_checkpoint: str, init_from: str = "pre"):
    return trainer.experiment(pipeline=[
        # mode max on the validation loss makes epoch 1 the best, so best.pt != last.pt
        {"name": "pre", "mode": "train_only", "overrides": {"training": {
            "epochs": 3, "early_stopping": {"mode": "max"}}}},
        # a learning rate too small to move the weights: the stage ends where it started
        {"name": "fine", "mode": "train_only", "init_from": init_from,
         "init_checkpoint": init_checkpoint,
         "overrides": {"training": {"epochs": 1, "lr": 1e-12}}},
        {"name": "ev", "mode": "eval_only", "init_from": "pre",
         "init_checkpoint": init_checkpoint, "eval_splits": ["val"]},
    ])


@pytest.mark.parametrize("which", ["best", "last"])
def test_next_stage_starts_from_the_chosen_checkpoint_of_the_previous(trainer, which):
    run = trainer.run(two_stages(trainer, which))
    pre_best = load(run / "pre/checkpoints/best.pt")
    pre_last = load(run / "pre/checkpoints/last.pt")
    assert pre_best["epoch"] == 1 and pre_last["epoch"] == 3
    assert not same_weights(pre_best["model"], pre_last["model"], atol=1e-4)
    chosen, other = (pre_best, pre_last) if which == "best" else (pre_last, pre_best)
    fine = load(run / "fine/checkpoints/last.pt")["model"]
    assert same_weights(fine, chosen["model"], atol=1e-8)
    assert not same_weights(fine, other["model"], atol=1e-4)
    # an eval_only stage evaluates the same checkpoint: its validation AUROC is that epoch's
    auroc = column(run / "pre" / "training.csv", "Val AUROC")[chosen["epoch"] - 1]
    (ev,) = rows(run / "ev" / "evaluation.csv")
    assert ev["split"] == "val" and float(ev["auroc"]) == pytest.approx(auroc, rel=1e-12)


def test_init_from_a_checkpoint_file(trainer):
    first = trainer.run(trainer.experiment("first", training={"epochs": 2}))
    saved = trainer.root / "pretrained.pt"
    shutil.copy(first / "train/checkpoints/last.pt", saved)
    exp = trainer.experiment("second", pipeline=[
        {"name": "fine", "mode": "train_only", "init_from": str(saved),
         "overrides": {"training": {"epochs": 1, "lr": 1e-12}}}])
    run = trainer.run(exp)
    assert same_weights(load(run / "fine/checkpoints/last.pt")["model"],
                        load(saved)["model"], atol=1e-8)


# --------------------------------------------------------------------------- --stage


def test_stage_option_runs_that_stage_only(trainer):
    exp = trainer.experiment(pipeline=[
        {"name": "pre", "mode": "train_only", "overrides": {"training": {"epochs": 2}}},
        {"name": "fine", "init_from": "pre", "overrides": {"training": {"epochs": 2}}}])
    run = trainer.run(exp, "--stage", "pre")
    assert not (run / "fine").exists()
    assert epochs(run / "pre" / "training.csv") == [1, 2]
    status = json.loads((run / "status.json").read_text())
    assert status["stages"] == {"pre": "SUCCEEDED", "fine": "PENDING"}
    assert status["state"] == "PENDING"
    pre_files = snapshot(run / "pre")

    trainer.run(exp, "--stage", "fine", run_dir=run)
    assert epochs(run / "fine" / "training.csv") == [1, 2]
    status = json.loads((run / "status.json").read_text())
    assert status["stages"] == {"pre": "SUCCEEDED", "fine": "SUCCEEDED"}
    assert status["state"] == "SUCCEEDED"
    assert snapshot(run / "pre") == pre_files  # neither run again nor touched

    stage_files = snapshot(run / "pre") | snapshot(run / "fine")
    trainer.run(exp, run_dir=run)  # all stages: both finished already, both skipped
    assert snapshot(run / "pre") | snapshot(run / "fine") == stage_files


def test_unknown_stage_is_refused(trainer, capsys):
    exp = trainer.experiment()
    assert trainer.main("--config", str(exp), "--stage", "nope") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


# --------------------------------------------------------------------------- --resume


def test_resume_after_preemption_continues_without_repeating_epochs(trainer, monkeypatch):
    # dropout draws from the RNG, the schedule and AdamW carry state, early stopping counts:
    # each must continue where it stopped for the numbers to match
    exp = trainer.experiment(model={"dropout": 0.3}, training={
        "epochs": 5, "weight_decay": 0.01,
        "scheduler": {"type": "cosine", "warmup_epochs": 1},
        "early_stopping": {"enabled": True, "patience": 4}})
    reference = trainer.run(exp, run_dir=trainer.root / "reference")

    with monkeypatch.context() as patch:
        preempt_after(patch, 2)
        assert trainer.main("--config", str(exp)) == EXIT_REQUEUE
    (run,) = (trainer.root / "runs" / "exp").iterdir()
    assert epochs(run / "train" / "training.csv") == [1, 2]
    assert load(run / "train/checkpoints/last.pt")["epoch"] == 2
    assert json.loads((run / "status.json").read_text())["state"] == "PREEMPTED"

    assert trainer.main("--config", str(exp), "--resume") == 0
    assert epochs(run / "train" / "training.csv") == [1, 2, 3, 4, 5]
    # epochs 3-5 continue from epoch 2's weights, optimizer, schedule and RNG: the same
    # numbers as the run that was never stopped
    for name in PER_EPOCH:
        assert stable_rows(run / "train" / name) == stable_rows(reference / "train" / name), \
            name
    assert same_weights(load(run / "train/checkpoints/last.pt")["model"],
                        load(reference / "train/checkpoints/last.pt")["model"])
    meta = json.loads((run / "metadata.json").read_text())
    assert [start["resumed"] for start in meta["runs"]] == [False, True]


def test_a_stop_in_the_middle_of_an_epoch_repeats_that_epoch(trainer, monkeypatch):
    exp = trainer.experiment(model={"dropout": 0.3}, training={"epochs": 3})
    reference = trainer.run(exp, run_dir=trainer.root / "reference")
    # 210 rows in steps of 32: 7 optimizer steps an epoch; stop in epoch 2's third step
    real_clip = loop.GradientTracker.clip
    steps = []

    def clip(self, params):
        steps.append(1)
        if len(steps) == 10:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_clip(self, params)

    with monkeypatch.context() as patch:
        patch.setattr(loop.GradientTracker, "clip", clip)
        run = trainer.run(exp, expect=EXIT_REQUEUE)
    assert len(steps) == 10
    assert epochs(run / "train" / "training.csv") == [1]
    assert load(run / "train/checkpoints/last.pt")["epoch"] == 1

    trainer.run(exp, "--resume", run_dir=run)
    for name in PER_EPOCH:
        assert stable_rows(run / "train" / name) == stable_rows(reference / "train" / name), \
            name


def test_resume_picks_the_run_started_last(trainer, monkeypatch):
    exp = trainer.experiment(training={"epochs": 3})
    # two runs of the experiment start within the same second; their ids differ by the
    # random token only
    ids = iter(["20250101-120000-ffff", "20250101-120000-0000"])
    monkeypatch.setattr(rundir, "new_run_id", lambda now, token: next(ids))
    assert trainer.main("--config", str(exp)) == 0
    with monkeypatch.context() as patch:
        preempt_after(patch, 1)
        assert trainer.main("--config", str(exp)) == EXIT_REQUEUE
    later = trainer.root / "runs" / "exp" / "20250101-120000-0000"
    assert epochs(later / "train" / "training.csv") == [1]

    assert trainer.main("--config", str(exp), "--resume") == 0
    assert epochs(later / "train" / "training.csv") == [1, 2, 3]


def test_resume_drops_rows_past_the_checkpoint_from_every_csv(trainer, monkeypatch):
    exp = trainer.experiment(training={"epochs": 4})
    cfg = trainer.config(exp)
    reference = trainer.run(exp, run_dir=trainer.root / "reference")
    run = trainer.root / "crashed"

    # the process dies after writing epoch 3's rows and before saving its checkpoint
    real_save = checkpoint.save

    def save(state, path):
        if state["epoch"] == 3:
            raise RuntimeError("killed while saving")
        real_save(state, path)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save", save)
        trainer.run(exp, run_dir=run, expect=1)
    stage = run / "train"
    assert load(stage / "checkpoints/last.pt")["epoch"] == 2
    for name in PER_EPOCH:
        assert 3 in {int(r[PER_EPOCH[name][0]]) for r in rows(stage / name)}, name
    # and one file ends in a row torn by the kill
    with open(stage / rundir.GRADIENT_STATS, "a") as handle:
        handle.write("4,17,0.5")

    trainer.run(exp, "--resume", run_dir=run)
    for name, key in PER_EPOCH.items():
        found = rows(stage / name)
        keys = [tuple(r[k] for k in key) for r in found]
        assert len(keys) == len(set(keys)), f"{name}: a row appears twice"
        assert stable_rows(stage / name) == stable_rows(reference / "train" / name), name
    losses = column(stage / "training.csv", "Val Loss")
    assert split_loss(cfg, load(stage / "checkpoints/last.pt")) == pytest.approx(
        losses[-1], rel=1e-5)


def test_resume_drops_rows_past_the_checkpoint_written_by_any_writer(trainer, monkeypatch):
    """Rows past last.pt in any per-epoch CSV are dropped, whatever their content."""
    exp = trainer.experiment(training={"epochs": 3})
    with monkeypatch.context() as patch:
        preempt_after(patch, 1)
        run = trainer.run(exp, expect=EXIT_REQUEUE)
    stage = run / "train"
    for name in PER_EPOCH:
        with open(stage / name, newline="") as handle:
            header = next(csv.reader(handle))
        with open(stage / name, "a", newline="") as handle:
            writer = csv.writer(handle)
            for epoch in (2, 3):
                writer.writerow([epoch] + ["999"] * (len(header) - 1))
    trainer.run(exp, "--resume", run_dir=run)
    for name in PER_EPOCH:
        text = (stage / name).read_text()
        assert ",999" not in text, f"{name} kept a row written past the checkpoint"
    assert epochs(stage / "training.csv") == [1, 2, 3]
