"""PBS: no server runs here, so the parsers are checked against output written from the PBS
Professional reference's formats, and the scripts against golden files (tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcrun.backends.pbs import (
    PbsBackend,
    final_state,
    parse_qstat_json,
    parse_qstat_text,
    pbs_mem,
    pbs_walltime,
)
from hpcrun.job import JobRecord

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pbs"


def jobs_json():
    return parse_qstat_json((FIXTURES / "qstat-x-f-F-json.txt").read_text())


def combine(native, jobs, tmp_path):
    record = JobRecord(id="a", backend="pbs", host="h", experiment="v3", run_dir=str(tmp_path),
                       project_dir=str(tmp_path), info={"native": native})
    return PbsBackend._combine(record, jobs, {k.split(".")[0]: v for k, v in jobs.items()})


@pytest.mark.parametrize("value, expected", [
    ("30", "00:30:00"), ("01:30", "01:30:00"), ("02:00:00", "02:00:00"),
    ("1-12:00:00", "36:00:00"), (None, None),
])
def test_walltime(value, expected):
    assert pbs_walltime(value) == expected


@pytest.mark.parametrize("value, expected", [("16G", "16gb"), ("4000M", "4000mb"),
                                             ("512000K", "512000kb"), ("8", "8mb")])
def test_memory(value, expected):
    assert pbs_mem(value) == expected


def test_exit_status_meanings():
    assert final_state(0) == ("SUCCEEDED", None)
    assert final_state(271)[0] == "CANCELLED"
    assert final_state(265) == ("FAILED", "killed by signal 9")
    assert final_state(2) == ("FAILED", "exit code 2")
    assert final_state(-1)[0] == "FAILED"


def test_a_failed_stage_fails_the_pipeline_with_its_reason(tmp_path):
    status = combine({"pretrain": "1234.pbs01", "finetune": "1235.pbs01",
                      "eval": "1236.pbs01"}, jobs_json(), tmp_path)
    assert status.state == "FAILED"
    assert status.reason == "stage finetune failed (job 1235.pbs01): exit code 1"
    assert status.detail["stages"] == {"pretrain": "SUCCEEDED", "finetune": "FAILED",
                                       "eval": "PENDING"}


def test_array_subjobs_and_pending_reasons(tmp_path):
    jobs = jobs_json()
    assert combine({"train": "1240[0].pbs01"}, jobs, tmp_path).state == "SUCCEEDED"
    assert combine({"train": "1240[1].pbs01"}, jobs, tmp_path).state == "RUNNING"
    pending = combine({"train": "1240[2].pbs01"}, jobs, tmp_path)
    assert pending.state == "PENDING" and "Insufficient amount of resource" in pending.reason
    assert combine({"train": "1237.pbs01"}, jobs, tmp_path).state == "CANCELLED"


def test_text_form_with_continuation_lines(tmp_path):
    jobs = parse_qstat_text((FIXTURES / "qstat-x-f.txt").read_text())
    assert jobs["1234.pbs01"]["comment"].endswith("and finished")
    assert combine({"a": "1234.pbs01", "b": "1238.pbs01"}, jobs, tmp_path).state == "RUNNING"
