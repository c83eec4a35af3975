"""Shared helpers: run the trainer the way a user does (as a process, under torchrun or not)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

#: in CI every run tries the same examples (a failure there is reproducible); locally hypothesis
#: keeps exploring new ones
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

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


def epoch_of(cwd: Path, experiment: str) -> int:
    """The epoch the only run of ``experiment`` reports; 0 until its run directory exists
    (``runs/<experiment>/`` is created a moment before the run's own directory)."""
    folder = cwd / "runs" / experiment
    runs = sorted(folder.iterdir()) if folder.is_dir() else []
    assert len(runs) <= 1, runs
    return read_status(runs[0]).get("epoch", 0) if runs else 0


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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


SLURM_STATE = Path(os.environ.get("HPCRUN_SLURM_DIR", "/tmp/hpcrun-slurm"))


@pytest.fixture(scope="session")
def slurm_env():
    """The sandbox cluster (hpc/slurm/up.sh); stopped again at the end if this session
    started it."""
    was_up = pid_alive(SLURM_STATE / "run" / "slurmctld.pid")
    yield start_sandbox("slurm/up.sh")
    if not was_up:
        stop_sandbox("slurm/down.sh")


@dataclass
class PodSandbox:
    """A pod sandbox (hpc/pod/up.sh) of this test session's own: its host key, client key and
    workspace under ``state``, its sshd on ``port`` (a free one). Neither a sandbox started by
    hand on the defaults (/tmp/hpcrun-pod, 22022) nor another test run's is touched."""

    state: Path
    port: int
    #: the variables up.sh exports, which the ``runpod`` remote in configs/remotes.yaml reads
    exports: dict[str, str] = field(default_factory=dict)

    @property
    def pidfile(self) -> Path:
        return self.state / "run" / "sshd.pid"

    def env(self) -> dict[str, str]:
        return {**os.environ, "HPCRUN_POD_DIR": str(self.state),
                "HPCRUN_POD_PORT": str(self.port)}

    def up(self) -> dict[str, str]:
        """Start it, or start it again after ``down`` (same state, same port)."""
        self.exports = start_sandbox("pod/up.sh", self.env())
        return self.exports

    def down(self) -> None:
        """Stop its sshd (by the pid file in its own state directory)."""
        stop_sandbox("pod/down.sh", self.env())


@pytest.fixture(scope="session")
def pod_sandbox(tmp_path_factory) -> Iterator[PodSandbox]:
    """The pod sandbox for this session: started in a fresh state directory on a free port,
    stopped at the end."""
    pod = PodSandbox(tmp_path_factory.mktemp("pod"), free_port())
    try:
        pod.up()
        yield pod
    finally:
        pod.down()


@pytest.fixture(scope="session")
def pod_env(pod_sandbox: PodSandbox) -> dict[str, str]:
    """The ``runpod`` remote's variables for this session's pod sandbox, with this python as
    the pod's (the pod shares this machine: hpcrun is there)."""
    return {**pod_sandbox.exports, "RUNPOD_PYTHON": sys.executable}


def sandbox_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    env: dict[str, str]) -> Path:
    """An empty project whose hpcrun sees a sandbox's variables (``env``) and keeps its own
    job store and cache under ``tmp_path``."""
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    for key, value in {**env, "XDG_STATE_HOME": str(tmp_path / "state"),
                       "XDG_CACHE_HOME": str(tmp_path / "cache"), "NO_COLOR": "1"}.items():
        monkeypatch.setenv(key, value)
    return root


@pytest.fixture
def slurm_project(tmp_path, monkeypatch, slurm_env):
    """An empty project whose hpcrun talks to the sandbox cluster, with its own job store."""
    return sandbox_project(tmp_path, monkeypatch, slurm_env)


# ------------------------------------------------------------------------- the CLI in this process


@dataclass
class Answer:
    code: int
    out: str
    err: str


def invoke(*argv: str) -> Answer:
    """``hpcrun ARGV...`` in this process, through the console script's ``main``; SystemExit
    becomes the exit code. stdout and stderr encode as they do when piped (UTF-8; strict on
    stdout, backslashreplace on stderr), so output that could not be printed fails here too.
    Typer installs its own ``sys.excepthook`` on every call, which lasts as long as the process
    does; here the test process's hook is put back after."""
    from hpcrun import cli

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace",
                           newline="")
    code: object = 0
    hook = sys.excepthook
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.excepthook = hook
    return Answer(code if isinstance(code, int) else 0, _written(out), _written(err))


def _written(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode("utf-8", "replace")  # type: ignore[attr-defined]


STUB_PYTHON = r"""#!/usr/bin/env bash
# A python that runs nothing: asked for hpcrun's launchers it names them, otherwise it records
# its arguments and environment (NUL-separated) and exits 0; asked for the job's working
# folder (-m hpcrun.snapshots SNAPSHOT RUN_ROOT) it also makes RUN_ROOT/work and names it.
if [ "${1-}" = -c ]; then printf '%s\n' {launchers}; exit 0; fi
record={records}/$$
printf '%s\0' "$@" > "$record.argv"
env -0 > "$record.env"
if [ "${2-}" = hpcrun.snapshots ]; then mkdir -p "$4/work" && printf '%s\n' "$4/work"; fi
"""


def stub_python(folder: Path) -> Path:
    """An executable ``python`` in ``folder`` (see STUB_PYTHON); its calls land in
    ``folder/records``."""
    from hpcrun.resources import launchers_dir

    records = folder / "records"
    records.mkdir(parents=True, exist_ok=True)
    stub = folder / "python"
    stub.write_text(STUB_PYTHON.replace("{launchers}", shlex.quote(str(launchers_dir())))
                    .replace("{records}", shlex.quote(str(records))))
    stub.chmod(0o755)
    return stub


def stub_calls(folder: Path, samplers: bool = False,
               work: bool = False) -> list[tuple[list[str], dict[str, str]]]:
    """What the stub python in ``folder`` was called with: (argv, environment) per call; the
    calls that start the system sampler beside the launcher only with ``samplers``, those
    that make the job's working folder only with ``work``."""
    calls = []
    for argv_file in sorted((folder / "records").glob("*.argv")):
        argv = argv_file.read_bytes().decode().split("\0")[:-1]
        if ("hpcrun.sampler" in argv and not samplers) or ("hpcrun.snapshots" in argv
                                                            and not work):
            continue
        pairs = argv_file.with_suffix(".env").read_bytes().decode().split("\0")[:-1]
        calls.append((argv, dict(p.split("=", 1) for p in pairs if "=" in p)))
    return calls


# --------------------------------------------------------------------------- security

SECRET = "s3cr3t-token-123"
TINY = """\
extends: v3
experiment: tiny
data: {rows: 600}
training: {epochs: 1}
resources: {cpus_per_task: 1}
pipeline:
  - {name: train, mode: full_pipeline}
"""
REMOTES = """\
remotes:
  gpu:
    host: 127.0.0.1
    port: 22022
    workdir: /tmp/hpcrun-security-pod
    env: [HF_TOKEN]
"""


@pytest.fixture
def secret_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project as the cwd, its job store and caches isolated, a secret in the environment
    and a remote that forwards it by name."""
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    write_config(root / "configs" / "tiny.yaml", TINY)
    write_config(root / "configs" / "remotes.yaml", REMOTES)
    for key, value in {"XDG_STATE_HOME": str(tmp_path / "state"),
                       "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_TOKEN": SECRET,
                       "NO_COLOR": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(root)
    yield root


# --------------------------------------------------------------------------- tiers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration and tests/e2e starts real processes (torchrun, the
    sandboxes, the installed command): all are ``slow``, whatever their module says, so
    ``-m "not slow"`` (make test-fast) is the in-process tier alone."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "e2e" in parts:
            item.add_marker(pytest.mark.slow)
