"""Your own training code through the installed ``hpcrun``, as a user types it, on the local
backend: the shipped examples (plain PyTorch and Lightning) and bare scripts that never
import hpcrun."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, hp, hpj, wait_job

from hpcrun import rundir

pytestmark = pytest.mark.slow

OK = "import sys\nprint('bare script ran with', sys.argv[1:], flush=True)\n"
BAD = "def load():\n    raise FileNotFoundError('data/train.bin is missing')\nload()\n"
WRITES = (
    "import os\nfrom pathlib import Path\n"
    "assert Path('scripts/ok.py').read_text().startswith('import sys')  # the code is there\n"
    "Path('wandb').mkdir()\nPath('wandb/run.log').write_text('a tracker wrote this')\n"
    "Path('scripts/out.txt').write_text('beside the code')\n"
    "print('cwd', os.getcwd(), os.environ['HPCRUN_WORK_DIR'], flush=True)\n")
SPIN = "import time\nt = time.time()\nwhile time.time() - t < 2.5:\n    pass\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project holding copies of the examples and a few bare scripts."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "examples", root / "examples")
    (root / "scripts").mkdir()
    for name, text in (("ok.py", OK), ("bad.py", BAD), ("spin.py", SPIN),
                       ("writes.py", WRITES)):
        (root / "scripts" / name).write_text(text)
    for key, value in {"XDG_STATE_HOME": str(tmp_path / "state"),
                       "XDG_CACHE_HOME": str(tmp_path / "cache"), "NO_COLOR": "1",
                       "COLUMNS": "200", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    return root


def submitted(project: Path, *args: str) -> dict:
    data = hpj(project, "submit", "--backend", "local", *args)
    assert data["jobs"], data
    return data


def test_the_pytorch_example_on_two_local_processes(project):
    data = submitted(project, "examples/pytorch/train.py", "--set",
                     "distributed.nproc_per_node=2", "--", "--epochs", "3")
    job = data["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"})
    run = Path(job["run_dir"])
    assert view["state"] == "SUCCEEDED", (run / "logs" / "job.out").read_text()[-3000:]
    meta = json.loads((run / rundir.METADATA).read_text())
    assert meta["world_size"] == 2 and meta["program"] == ["examples/pytorch/train.py",
                                                           "--epochs", "3"]
    once = hpj(project, "monitor", "--once", job["id"])
    assert once["epoch"] == 3 and once["stage"] == "train"
    assert "val loss" in once["series"] and "accuracy" in once["series"]
    fetched = hp(project, "fetch", job["id"])
    assert fetched.returncode == 0, fetched.stderr
    assert "verified against MANIFEST.sha256" in fetched.stdout
    assert "red flags: none" in fetched.stdout
    html = (run / "report" / "report.html").read_text()
    assert html.count("<img") >= 5 and "train: Loss per epoch" in html
    assert "System" in html  # system.csv of the job's processes
    rank1 = hp(project, "logs", job["id"], "--rank", "1")
    assert rank1.returncode == 0 and "resuming" not in rank1.stdout
    assert len(rundir.read_rows(run / rundir.SYSTEM)) >= 1


def test_the_lightning_example_on_two_local_processes(project):
    data = submitted(project, "examples/lightning/train.py", "--set",
                     "distributed.nproc_per_node=2", "--", "--epochs", "2", "--samples", "1024")
    job = data["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"})
    run = Path(job["run_dir"])
    assert view["state"] == "SUCCEEDED", (run / "logs" / "job.out").read_text()[-3000:]
    training = rundir.read_rows(run / "train" / rundir.TRAINING)
    assert [r["Epoch"] for r in training] == ["1", "2"]
    assert rundir.read_header(run / "train" / rundir.TRAINING) == rundir.training_columns(
        ["accuracy"])
    assert json.loads((run / rundir.METADATA).read_text())["world_size"] == 2
    assert rundir.read_rows(run / "train" / rundir.EVALUATION)[0]["split"] == "test"
    assert (run / "train" / "checkpoints" / "last.ckpt").is_file()
    fetched = hp(project, "fetch", job["id"])
    assert fetched.returncode == 0 and "verified against MANIFEST.sha256" in fetched.stdout


def test_bare_scripts_get_state_logs_triage_and_system_samples(project):
    ok = submitted(project, "scripts/ok.py", "--set", "monitor.system_interval_s=0.5", "--",
                   "--flag", "a b")["jobs"][0]
    bad = submitted(project, "scripts/bad.py")["jobs"][0]
    spin = submitted(project, "scripts/spin.py", "--set",
                     "monitor.system_interval_s=0.5")["jobs"][0]
    assert wait_job(project, ok["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    logs = hp(project, "logs", ok["id"])
    assert "bare script ran with ['--flag', 'a b']" in logs.stdout

    failed = wait_job(project, bad["id"], {"SUCCEEDED", "FAILED"})
    assert failed["state"] == "FAILED" and failed["exit_code"] != 0
    status = hp(project, "status", bad["id"])
    assert status.returncode == 1  # the job failed
    assert "FileNotFoundError: data/train.bin is missing" in status.stdout
    triage = hpj(project, "status", bad["id"])[0]["triage"]
    assert triage["failure"]["exception"] == "FileNotFoundError: data/train.bin is missing"
    assert any("raise FileNotFoundError" in line for line in triage["log_tail"])
    monitor = hp(project, "monitor", bad["id"])
    assert monitor.returncode == 1

    assert wait_job(project, spin["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    rows = rundir.read_rows(Path(spin["run_dir"]) / rundir.SYSTEM)
    assert len(rows) >= 3 and max(float(r["cpu_pct"]) for r in rows) > 30
    fetched = hp(project, "fetch", spin["id"])
    assert fetched.returncode == 0 and "verified against MANIFEST.sha256" in fetched.stdout


def test_what_a_job_writes_into_its_folder_stays_with_its_run(project, tmp_path):
    """The job works in <run>/work, a mirror of the snapshot: a tracker's ./wandb/ and a file
    beside the code land there, the snapshot stays as it was and the next identical submit
    uses it again."""
    runs = []
    for _ in range(2):
        job = submitted(project, "scripts/writes.py")["jobs"][0]
        view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"})
        run = Path(job["run_dir"])
        assert view["state"] == "SUCCEEDED", (run / "logs" / "job.out").read_text()[-3000:]
        work = run / rundir.WORK
        assert f"cwd {work} {work}" in (run / "logs" / "job.out").read_text()
        assert (work / "wandb" / "run.log").read_text() == "a tracker wrote this"
        assert (work / "scripts" / "out.txt").is_file()
        assert (work / "scripts" / "ok.py").is_symlink()
        runs.append((run, job["id"]))
    bundles = tmp_path / "cache" / "hpcrun" / "bundles"
    snapshots = [p.name for p in bundles.iterdir()]
    assert len(snapshots) == 1 and ".stale-" not in snapshots[0], snapshots
    snap = bundles / snapshots[0]
    assert not (snap / "wandb").exists() and not (snap / "scripts" / "out.txt").exists()
    assert os.path.realpath(runs[1][0] / rundir.WORK / "scripts" / "ok.py") == str(
        snap / "scripts" / "ok.py")
    fetched = hp(project, "fetch", runs[0][1])
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "verified against MANIFEST.sha256" in fetched.stdout
    assert f" {rundir.WORK}/" not in (runs[0][0] / rundir.MANIFEST).read_text()


def test_a_planted_nan_raises_the_nan_flag(project):
    job = submitted(project, "examples/pytorch/train.py", "--", "--epochs", "2",
                    "--nan-at-epoch", "2", "--samples", "512")["jobs"][0]
    assert wait_job(project, job["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    fetched = hp(project, "fetch", job["id"])
    assert "nan_loss" in fetched.stdout or "not finite from epoch 2" in fetched.stdout
    flags = hpj(project, "monitor", "--once", job["id"])["flags"]
    assert "nan_loss" in {f["code"] for f in flags}


def test_a_params_sweep_is_compared_by_the_scripts_own_metric(project):
    data = submitted(project, "examples/pytorch/train.py", "--sweep",
                     "params.lr=0.0001,0.01", "--parallel", "2", "--", "--epochs", "2",
                     "--samples", "1024", "--lr", "{params.lr}")
    assert len(data["jobs"]) == 2
    wait_job(project, data["group"]["id"], {"SUCCEEDED", "FAILED"})
    ranked = hpj(project, "compare", data["group"]["id"], "--metric", "accuracy")
    assert [row["params.lr"] for row in ranked["rows"]] == [0.01, 0.0001]
    assert ranked["differing"] == ["params.lr"]  # run.args holds the placeholder itself
    own = hpj(project, "compare", data["group"]["id"], "--metric", "Accuracy")
    assert own["rows"][0]["params.lr"] == 0.01
    for job in data["jobs"]:
        meta = json.loads((Path(job["run_dir"]) / rundir.METADATA).read_text())
        assert "--lr" in meta["program"]


def test_a_pipeline_of_own_stages_passes_a_checkpoint_on(project):
    (project / "configs").mkdir()
    (project / "scripts" / "stage.py").write_text(
        "import os, sys, pathlib\n"
        "out = pathlib.Path(os.environ['HPCRUN_RUN_DIR']) / 'model.txt'\n"
        "if '--init' in sys.argv:\n"
        "    init = pathlib.Path(sys.argv[sys.argv.index('--init') + 1])\n"
        "    out.write_text(init.read_text() + '+finetuned')\n"
        "else:\n"
        "    out.write_text('pretrained')\n")
    (project / "configs" / "two.yaml").write_text(
        "experiment: two\nrun: {script: scripts/stage.py}\n"
        "pipeline:\n  - {name: pretrain}\n"
        "  - {name: finetune, run: {args: [--init, '{stages.pretrain.dir}/model.txt']}}\n")
    job = submitted(project, "two")["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"})
    assert view["state"] == "SUCCEEDED"
    run = Path(job["run_dir"])
    assert (run / "finetune" / "model.txt").read_text() == "pretrained+finetuned"
    status = json.loads((run / rundir.STATUS).read_text())
    assert status["stages"] == {"pretrain": "SUCCEEDED", "finetune": "SUCCEEDED"}
