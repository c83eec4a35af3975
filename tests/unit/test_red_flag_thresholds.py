"""Red flags at their thresholds (docs/red-flags.md): ``diverging``, ``vanishing_gradients``,
``nonfinite_gradients`` and ``separation_stalled`` are each raised, alone, on a planted run
directory that shows them, and not on one just short of them; a log with SLURM's preemption
line names the preemption."""

from __future__ import annotations

from pathlib import Path

import pytest
from planted_runs import EPOCHS, plant

from hpcrun.diagnose import diagnose, failed_flag, failure_cause


def codes(run: Path) -> list[str]:
    return sorted(f.code for f in diagnose(run))


def test_the_planted_run_is_healthy(tmp_path):
    assert codes(plant(tmp_path / "ok")) == []


# --------------------------------------------------------------------------- diverging


def _rising_for(epochs: int):
    """Validation loss falling, then rising over the last ``epochs`` epochs."""
    turn = EPOCHS - epochs
    return lambda e: 0.65 / e if e <= turn else 0.65 / turn + 0.01 * (e - turn)


def test_diverging_after_divergence_patience_epochs_of_rising_validation_loss(tmp_path):
    # divergence_patience is 5: validation loss rose in each of the last 5 epochs
    flags = diagnose(plant(tmp_path / "div", val=_rising_for(5)))
    assert [(f.code, f.epoch) for f in flags] == [("diverging", EPOCHS)]
    assert "5 epochs" in flags[0].message


def test_not_diverging_one_epoch_short_of_the_patience(tmp_path):
    assert codes(plant(tmp_path / "four", val=_rising_for(4))) == []


def test_not_diverging_when_training_loss_rose_too(tmp_path):
    run = plant(tmp_path / "both", val=_rising_for(5), train=lambda e: 0.1 + 0.01 * e)
    assert codes(run) == []


def test_the_divergence_patience_is_read_from_the_runs_config(tmp_path):
    run = plant(tmp_path / "patient", val=_rising_for(5),
                overrides=("monitor.divergence_patience=6",))
    assert codes(run) == []


# --------------------------------------------------------------------------- gradients


def test_vanishing_gradients_below_grad_norm_min_in_the_latest_epoch(tmp_path):
    # grad_norm_min is 1e-7
    flags = diagnose(plant(tmp_path / "tiny", grads=lambda e: 5e-8 if e == EPOCHS else 0.5))
    assert [(f.code, f.epoch) for f in flags] == [("vanishing_gradients", EPOCHS)]


def test_no_vanishing_gradients_just_above_grad_norm_min(tmp_path):
    assert codes(plant(tmp_path / "small", grads=lambda e: 2e-7 if e == EPOCHS else 0.5)) == []


def test_no_vanishing_gradients_once_the_norm_recovered(tmp_path):
    run = plant(tmp_path / "recovered", grads=lambda e: 5e-8 if e == 4 else 0.5)
    assert codes(run) == []  # only the latest epoch counts


def test_nonfinite_gradients_name_the_first_epoch_with_a_nonfinite_step(tmp_path):
    flags = diagnose(plant(tmp_path / "inf", nonfinite=lambda e: 1 if e in (3, 6) else 0))
    assert [(f.code, f.epoch) for f in flags] == [("nonfinite_gradients", 3)]


def test_no_nonfinite_gradients_without_a_nonfinite_step(tmp_path):
    assert codes(plant(tmp_path / "finite", nonfinite=lambda e: 0)) == []


# --------------------------------------------------------------------------- separation


def test_separation_stalled_below_separation_min(tmp_path):
    # separation_patience 5, separation_min 0.2: a plateau at 0.19 for the whole run
    flags = diagnose(plant(tmp_path / "flat", separation=lambda e: 0.19))
    assert [(f.code, f.epoch) for f in flags] == [("separation_stalled", EPOCHS)]
    assert "best 0.190" in flags[0].message


def test_separation_not_stalled_when_the_plateau_reaches_separation_min(tmp_path):
    assert codes(plant(tmp_path / "good", separation=lambda e: 0.2)) == []


def test_separation_not_stalled_when_the_latest_epoch_beats_the_earlier_best(tmp_path):
    run = plant(tmp_path / "moving", separation=lambda e: 0.19 if e < EPOCHS else 0.1901)
    assert codes(run) == []


def test_separation_stalled_only_after_separation_patience_epochs(tmp_path):
    # the best reached in epoch 3 and not beaten in the 5 epochs after it: stalled; reached
    # in epoch 4, 4 epochs before the end: not yet
    assert codes(plant(tmp_path / "five", separation=lambda e: 0.1 + 0.01 * min(e, 3))) == [
        "separation_stalled"]
    assert codes(plant(tmp_path / "four", separation=lambda e: 0.1 + 0.01 * min(e, 4))) == []



def test_a_new_best_within_the_patience_window_holds_the_flag_off(tmp_path):
    # the best (0.15) came in epoch 4, 4 epochs before the end; the later epochs fell back
    values = {1: 0.11, 2: 0.12, 3: 0.13, 4: 0.15}
    run = plant(tmp_path / "recent", separation=lambda e: values.get(e, 0.13))
    assert codes(run) == []


def test_the_separation_patience_is_read_from_the_runs_config(tmp_path):
    run = plant(tmp_path / "patient", separation=lambda e: 0.1 + 0.01 * min(e, 3),
                overrides=("monitor.separation_patience=6",))
    assert codes(run) == []


# --------------------------------------------------------------------------- preemption

PREEMPTED_LOG = ("epoch 3/10 train_loss=0.41\n"
                 "slurmstepd: error: *** JOB 4242 ON n1 CANCELLED AT 2024-05-01T10:00:00 DUE "
                 "TO PREEMPTION ***\n")


def test_slurms_preemption_line_names_the_preemption():
    assert failure_cause(PREEMPTED_LOG) == "preempted by the scheduler"
    assert failure_cause(PREEMPTED_LOG.replace("PREEMPTION", "NODE FAILURE")) is None


@pytest.mark.parametrize("read", ["failed_flag", "diagnose"])
def test_the_failed_flag_of_a_preempted_job_says_so(tmp_path, read):
    run = plant(tmp_path / "pre", status="FAILED")
    if read == "failed_flag":
        flag = failed_flag(run, PREEMPTED_LOG)
    else:
        [flag] = diagnose(run, log_text=PREEMPTED_LOG)
    assert flag.code == "failed" and "preempted by the scheduler" in flag.message
