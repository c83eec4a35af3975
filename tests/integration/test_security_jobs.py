"""Secrets in the environment reach a real job (on SLURM, and a real local training run)
and are written nowhere: not in scripts, logs, run directories or the job store. The
in-process claims of docs/security.md are in tests/unit/test_security.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import SECRET, invoke, stub_calls, stub_python, wait_for, wait_job


@pytest.fixture
def project(secret_project: Path) -> Path:
    """A project as the cwd with a secret in the environment (tests/conftest.py)."""
    return secret_project



@pytest.mark.slow
def test_a_slurm_job_inherits_a_secret_that_no_script_holds(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        slurm_env: dict[str, str]) -> None:
    """sbatch exports the submitting environment: the job sees HF_TOKEN, the sbatch script,
    SLURM's log and the job store do not hold it."""
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    stub = stub_python(tmp_path / "stub")
    monkeypatch.setattr(sys, "executable", str(stub))
    answer = invoke("--json", "submit", "tiny", "--backend", "slurm")
    assert answer.code == 0, answer.err
    job = json.loads(answer.out)["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=180)
    assert view["state"] == "SUCCEEDED", view.get("reason")
    ((_, env),) = stub_calls(stub.parent)
    assert env["HF_TOKEN"] == SECRET
    run = Path(job["run_dir"])
    written = [p for p in (*run.rglob("*"), *(tmp_path / "state").rglob("*"))
               if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert written == [] and list(run.glob("*.sbatch"))


@pytest.mark.slow
def test_a_real_run_writes_no_secret_into_its_run_directory(project: Path,
                                                            tmp_path: Path) -> None:
    """The trainer's metadata, logs, CSVs and checkpoints, and the job store, for a real run."""
    answer = invoke("--json", "submit", "tiny", "--backend", "local")
    assert answer.code == 0, answer.err
    run = Path(json.loads(answer.out)["jobs"][0]["run_dir"])
    assert wait_for(lambda: (run / "job.exit").exists(), timeout=240, interval=0.5)
    assert (run / "job.exit").read_text().strip() == "0", (run / "logs" / "job.out").read_text()
    assert (run / "metadata.json").is_file()
    written = [p for p in (*run.rglob("*"), *(tmp_path / "state").rglob("*"))
               if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert written == []
