"""A remote that sets itself up: the pod sandbox with its system python3 (no hpcrun, no torch)
gets hpcrun's own venv from `sync`; a foreign package named hpcrun is told apart; a project's
git-ignored data ships once into the remote's data folder, outside the code bundle.

The venv is made once for the module (installing torch takes most of a minute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, hp, hpj, wait_job

pytestmark = pytest.mark.slow

SYSTEM_PYTHON = "/usr/bin/python3"
TINY = """extends: v3
experiment: {name}
data: {{rows: 600, features: 8, informative: 4}}
training: {{epochs: 1, batch_size: 128}}
"""


@pytest.fixture(scope="module")
def pod(tmp_path_factory, pod_sandbox):
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the pod's own python")
    # as the pod's ssh sessions run it: without this process's PYTHONPATH (sshd passes none)
    bare = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    found = subprocess.run([SYSTEM_PYTHON, "-c", "import hpcrun"], capture_output=True, env=bare)
    assert found.returncode != 0, "the system python must not have hpcrun for this test"
    env = dict(pod_sandbox.exports)
    root = tmp_path_factory.mktemp("remote-setup")
    env.update({"RUNPOD_WORKDIR": str(root / "pod-workspace"), "RUNPOD_PYTHON": "",
                "RUNPOD_BASE_PYTHON": SYSTEM_PYTHON, "RUNPOD_TORCH": "torch==2.13.0",
                "XDG_STATE_HOME": str(root / "state"), "XDG_CACHE_HOME": str(root / "cache"),
                "NO_COLOR": "1"})
    return env


@pytest.fixture
def project(tmp_path, monkeypatch, pod):
    for key, value in pod.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    return root


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project,
                   check=True, capture_output=True)


def test_sync_sets_up_the_system_python_once_and_v3_runs_on_it(project, pod):
    (project / "configs" / "tiny.yaml").write_text(TINY.format(name="tiny"))
    proc = hp(project, "sync", "--remote", "runpod", timeout=900)
    assert proc.returncode == 0, proc.stderr
    venv = Path(pod["RUNPOD_WORKDIR"]) / "venv"
    assert "set up hpcrun 0.1.0 on runpod" in proc.stdout, proc.stdout
    assert "creating" in proc.stdout and "installing" in proc.stdout
    assert (venv / "pyvenv.cfg").read_text().count("include-system-site-packages = true") == 1
    # the job runs with the venv's python, which now has this hpcrun and torch
    again = hpj(project, "sync", "--remote", "runpod")
    assert again["setup"]["action"] == "up to date", again["setup"]
    data = hpj(project, "submit", "tiny", "--backend", "pod", "--remote", "runpod")
    assert data["setup"]["action"] == "up to date"
    job = data["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert view["state"] == "SUCCEEDED", hp(project, "logs").stdout[-3000:]
    assert f"HPCRUN_PYTHON={venv}/bin/python" in data["plans"][0]["script"]
    fetched = hp(project, "fetch")
    assert fetched.returncode == 0 and "verified" in fetched.stdout, fetched.stderr
    meta = json.loads((Path(job["run_dir"]) / "metadata.json").read_text())
    system = subprocess.run([SYSTEM_PYTHON, "-c", "import platform; print("
                             "platform.python_version())"], capture_output=True, text=True)
    assert meta["versions"]["python"] == system.stdout.strip()  # the pod's, not this venv's
    assert meta["versions"]["torch"].startswith("2.13.0")
    doctor = hpj(project, "doctor", "--remote", "runpod")
    checks = {c["name"]: c for c in doctor}
    assert checks["hpcrun"]["ok"] and checks["torch"]["ok"], doctor
    assert checks["python"]["detail"].startswith(str(venv)), checks["python"]


def _plant(folder: Path, init: str, with_agent: bool = False) -> str:
    """A venv of the system python whose package named hpcrun is ``init``."""
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python3*/site-packages"))
    (site / "hpcrun").mkdir()
    (site / "hpcrun" / "__init__.py").write_text(init)
    if with_agent:
        (site / "hpcrun" / "agent.py").write_text("")
    return str(folder / "bin" / "python")


def test_a_foreign_or_older_hpcrun_in_a_named_python_is_one_line(project, tmp_path,
                                                                  monkeypatch):
    foreign = _plant(tmp_path / "foreign", '__version__ = "3.2.1"\n"""Some other hpcrun."""\n')
    monkeypatch.setenv("RUNPOD_PYTHON", foreign)
    proc = hp(project, "sync", "--remote", "runpod")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is another project, not this tool" in proc.stderr
    assert "leave python: unset" in proc.stderr and "Traceback" not in proc.stderr
    assert not (Path(os.environ["RUNPOD_WORKDIR"]) / "venv" / "lib" / "x").exists()

    init = (REPO / "src" / "hpcrun" / "__init__.py").read_text()
    older = _plant(tmp_path / "older", init.replace('__version__ = "0.1.0"',
                                                    '__version__ = "0.0.9"'), with_agent=True)
    monkeypatch.setenv("RUNPOD_PYTHON", older)
    proc = hp(project, "submit", "v3", "--backend", "pod", "--remote", "runpod")
    assert proc.returncode == 1 and "has hpcrun 0.0.9 (this is 0.1.0)" in proc.stderr, \
        proc.stderr
    assert not (project / "runs").exists()  # nothing was started or written


def test_git_ignored_data_is_read_in_place_locally_and_synced_once_for_the_pod(project):
    git(project, "init", "-q")
    (project / ".gitignore").write_text("data/\nruns/\n")
    data = project / "data"
    data.mkdir()
    rows = "\n".join(f"{i % 7 / 7:.3f},{(i * 3) % 5 / 5:.3f},{i % 2}" for i in range(3000))
    for split in ("train", "val", "test"):
        (data / f"{split}.csv").write_text("a,b,label\n" + rows + "\n")
    (project / "helpers.py").write_text("VALUE = 1\n")
    (project / "configs" / "own.yaml").write_text(
        "extends: v3\nexperiment: own\ndata: {source: files, path: data}\n"
        "training: {epochs: 1, batch_size: 256}\n")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "code")

    local = hpj(project, "submit", "own", "--backend", "local")
    view = wait_job(project, local["jobs"][0]["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert view["state"] == "SUCCEEDED", hp(project, "logs").stdout[-3000:]
    assert local["jobs"][0]["run_dir"].startswith(str(project))

    before = hp(project, "submit", "own", "--backend", "pod", "--remote", "runpod")
    assert before.returncode == 2 and before.stderr.count("\n") == 1, before.stderr
    assert "data path 'data' is not on remote runpod" in before.stderr
    assert "hpcrun sync --remote runpod --config own" in before.stderr

    first = hpj(project, "sync", "--remote", "runpod", "--config", "own")
    size = sum(p.stat().st_size for p in data.iterdir())
    assert first["data"]["files_transferred"] == 3 and first["hash"]
    synced = Path(first["data"]["remote_dir"]) / "data"
    assert sorted(p.name for p in synced.iterdir()) == ["test.csv", "train.csv", "val.csv"]
    assert not (Path(first["remote_code"]) / "data").exists()  # data is not code

    shutil.move(str(data), str(project / "elsewhere"))  # the pod must read its own copy
    remote = hpj(project, "submit", "own", "--backend", "pod", "--remote", "runpod")
    view = wait_job(project, remote["jobs"][0]["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert view["state"] == "SUCCEEDED", hp(project, "logs").stdout[-3000:]
    shutil.move(str(project / "elsewhere"), str(data))

    (project / "helpers.py").write_text("VALUE = 2\n")  # a code change only
    git(project, "commit", "-qam", "code only")
    second = hpj(project, "sync", "--remote", "runpod", "--config", "own")
    assert second["files_transferred"] == 1 and second["data"]["files_transferred"] == 0
    assert second["data"]["bytes_sent"] < size / 20, (second["data"], size)
