"""Run directories crafted to hurt the tools that read them: a FIFO where a CSV should be (it
hung every reader), a CSV that links to a file outside the run, a report/ folder that links
elsewhere (the report was written there), matplotlib math in a metric's name, status.json
that is not an object or is nested past the recursion limit. Each is one line or a skipped
item: never a traceback, a hang, or a read or write outside the run."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import hp
from test_report import make_run

from hpcrun import rundir


def _report(run: Path, cwd: Path):
    return hp(cwd, "report", str(run), timeout=120)  # a hang fails here, it does not wait


def test_a_fifo_or_a_link_out_of_the_run_is_skipped_not_read(tmp_path):
    run = make_run(tmp_path)
    os.unlink(run / "finetune" / rundir.TRAINING)
    os.mkfifo(run / "finetune" / rundir.TRAINING)
    secret = tmp_path / "outside.csv"
    secret.write_text("epoch,phase,pos_mean,pos_std,neg_mean,neg_std,separation\n"
                      "1,val,0.9,0.1,0.1,0.1,0.8123456\n")
    os.unlink(run / "pretrain" / rundir.PROBABILITY_STATS)
    os.symlink(secret, run / "pretrain" / rundir.PROBABILITY_STATS)
    proc = _report(run, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "0.8123" not in proc.stdout
    assert "0.8123" not in (run / "report" / "report.html").read_text()
    assert rundir.read_json(run / rundir.STATUS)["state"] == "SUCCEEDED"


def test_a_report_folder_that_links_elsewhere_is_not_written_through(tmp_path):
    run = make_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "report").symlink_to(elsewhere, target_is_directory=True)
    proc = _report(run, tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "symbolic link" in proc.stderr and list(elsewhere.iterdir()) == []


def test_math_text_in_a_metric_name_is_drawn_as_text(tmp_path):
    run = make_run(tmp_path)
    stage = run / "finetune" / rundir.TRAINING
    lines = stage.read_text().splitlines()
    lines[0] = lines[0].replace("Val MCC", "Val $\\frac{broken$")
    stage.write_text("\n".join(lines) + "\n")
    proc = _report(run, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (run / "report" / "finetune_metrics.png").stat().st_size > 1000


def test_a_status_that_is_not_an_object_or_nested_too_deep_is_not_a_traceback(tmp_path):
    run = make_run(tmp_path)
    for text in ("[1, 2, 3]", "[" * 100_000 + "]" * 100_000, '"SUCCEEDED"', "null"):
        (run / rundir.STATUS).write_text(text)
        proc = _report(run, tmp_path)
        assert "Traceback" not in proc.stderr and proc.returncode in (0, 1, 2), proc.stderr
        assert proc.stderr.count("\n") <= 1, proc.stderr


def test_a_stage_no_folder_can_be_named_is_read_as_no_stage(tmp_path):
    """status.json's stage names a folder that monitor and report open: a NUL (a ValueError
    from every path call), a '/' or '..' reads as no stage at all."""
    for bad in ("\x00", "a/b", "..", "../../etc", "", 7):
        assert rundir.Status.of({"state": "RUNNING", "stage": bad}).stage is None, bad
    assert rundir.Status.of({"stage": "finetune"}).stage == "finetune"


def test_a_lone_surrogate_in_a_record_is_shown_as_a_replacement_character(tmp_path):
    """JSON may spell a lone surrogate (\\ud800): no UTF-8 output can carry it (the HTML
    report raised UnicodeEncodeError); it reads as U+FFFD."""
    run = make_run(tmp_path, state="FAILED")
    (run / rundir.FAILURE).write_text('{"exception": "boom \\ud800", "rank": 0, '
                                      '"stage": "finetune"}')
    proc = _report(run, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "boom \ufffd" in (run / "report" / "report.html").read_text()


def test_a_run_directory_in_the_current_folder_is_named_without_a_slash(tmp_path, monkeypatch):
    """`hpcrun report run` was read as a job id and refused."""
    import shutil

    run = make_run(tmp_path)
    shutil.move(str(run), str(tmp_path / "abc"))  # a name that could be a job id prefix too
    proc = hp(tmp_path, "report", "abc", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "abc" / "report" / "report.html").is_file()


def test_the_jobs_own_folder_is_never_read_as_a_stage(tmp_path):
    """A script writing ./checkpoints/ or ./training.csv into its working folder (work/)
    does not make work/ a stage of the report, the red flags or monitor's tail."""
    run = make_run(tmp_path)
    (run / rundir.WORK / "checkpoints").mkdir(parents=True)
    (run / rundir.WORK / rundir.TRAINING).write_text("Epoch,Val Loss\n1,nan\n")
    assert rundir.WORK not in rundir.RunDir(run).stages()
    assert not [rel for rel in rundir.read_since(run, {}) if rel.startswith("work/")]


def test_a_config_yaml_of_an_earlier_version_still_loads(tmp_path):
    """Earlier versions wrote distributed.nnodes (read by nothing) into every run's
    config.yaml: resume, report and monitor still read those."""
    from hpcrun.config import load_config_text

    config = load_config_text("experiment: old\ndistributed: {nnodes: 1, timeout_s: 60}\n",
                              source="config.yaml")
    assert config.distributed.timeout_s == 60
