"""Shared helpers: run the trainer the way a user does (as a process, under torchrun or not)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def trainer_argv(*args: str, nproc: int | None = None) -> list[str]:
    if nproc:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", "hpcrun.train", *args]
    return [sys.executable, "-m", "hpcrun.train", *args]


def trainer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_trainer(cwd: Path, *args: str, nproc: int | None = None, timeout: float = 300,
                **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(trainer_argv(*args, nproc=nproc), cwd=cwd, env=trainer_env(**env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start_trainer(cwd: Path, *args: str, nproc: int | None = None, **env: str) -> subprocess.Popen:
    log = open(cwd / f"trainer-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    return subprocess.Popen(trainer_argv(*args, nproc=nproc), cwd=cwd, env=trainer_env(**env),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def only_run_dir(cwd: Path, experiment: str) -> Path:
    runs = sorted((cwd / "runs" / experiment).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def read_status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def v3_run(tmp_path_factory) -> Path:
    """One real 2-rank torchrun of the shipped v3 pipeline, shared by the tests that read it."""
    cwd = tmp_path_factory.mktemp("v3")
    proc = run_trainer(cwd, "--config", "v3", "--stage", "all", nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(cwd, "v3")
    (run.parent / "stdout.txt").write_text(proc.stdout)
    return run


# --------------------------------------------------------------------------- the CLI and sandboxes

HPCRUN = str(Path(sys.executable).parent / "hpcrun")


def hp(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed ``hpcrun`` as a user types it."""
    return subprocess.run([HPCRUN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def hpj(cwd: Path, *args: str, **kwargs):
    """``hpcrun --json ...`` parsed; an operation that failed (exit 1) still answers."""
    proc = hp(cwd, "--json", *args, **kwargs)
    assert proc.returncode in (0, 1) and proc.stdout.strip(), (args, proc.stderr)
    return json.loads(proc.stdout)


def wait_job(cwd: Path, job: str, states: set[str], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    view: dict = {}
    while time.monotonic() < deadline:
        view = hpj(cwd, "status", job)[0]
        if view["state"] in states:
            return view
        time.sleep(1)
    raise AssertionError(f"{job} never reached {states}: {view}")


def pid_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def start_sandbox(script: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Run an hpc/ up.sh; return the variables it exports. In CI a sandbox that cannot start
    is a failure, elsewhere a skip."""
    proc = subprocess.run([str(REPO / "hpc" / script)], capture_output=True, text=True,
                          env=env, timeout=900, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        message = f"hpc/{script} did not start: {proc.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return dict(re.findall(r"^export (\w+)=(.*)$", proc.stdout, re.M))


def stop_sandbox(script: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(REPO / "hpc" / script)], capture_output=True, env=env, timeout=120,
                   stdin=subprocess.DEVNULL)
