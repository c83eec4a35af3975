"""Names and formats match the whole value and refuse control characters (a final newline
ended #SBATCH parsing and dropped every directive after it); stage names the run directory
uses itself, or with a dot, are refused; the launcher signals only the job's own processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from hpcrun import formats
from hpcrun.config import RemoteConfig, load_config, parse_set
from hpcrun.errors import BadInput, ConfigError
from hpcrun.job import parse_handle


def config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "c.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize("key, value", [
    ("experiment", "v3"), ("resources.partition", "debug"), ("resources.time", "10:00"),
    ("resources.mem", "4G"), ("resources.constraint", "a100"), ("resources.account", "lab"),
    ("model.name", "pkg.models:build"),
])
def test_a_value_ending_in_a_newline_is_refused(tmp_path, key, value):
    """A YAML block scalar (`key: |`) makes such a value by accident."""
    config(tmp_path, "extends: v3\n")
    assert load_config("c", [f'{key}="{value}"'], project_dir=tmp_path)
    for bad in (f"{value}\n", f"{value}\r", f"{value}\x1b[2J", f"{value}\u2028"):
        with pytest.raises(ConfigError) as caught:
            load_config("c", [f"{key}={bad!r}".replace("'", '"')], project_dir=tmp_path)
        assert "\n" not in caught.value.message and key.split(".")[-1] in caught.value.message


def test_a_block_scalar_experiment_name_is_one_line_of_error(tmp_path):
    config(tmp_path, "extends: v3\nexperiment: |\n  v3\n")
    with pytest.raises(ConfigError, match=r"experiment name 'v3\\n' must be"):
        load_config("c", project_dir=tmp_path)
    config(tmp_path, "extends: v3\nresources:\n  slurm:\n    directives: [\"--exclusive\\n\"]\n")
    with pytest.raises(ConfigError, match="directive"):
        load_config("c", project_dir=tmp_path)


def test_every_format_matches_the_whole_value_only():
    for fmt, good in ((formats.NAME, "v3"), (formats.STAGE, "pretrain"), (formats.TIME, "1:00"),
                      (formats.MEMORY, "16G"), (formats.HOST, "login.example.org"),
                      (formats.USER, "me"), (formats.ENV_NAME, "HOME"),
                      (formats.SSH_OPTION, "Compression=yes"), (formats.KEY_PART, "lr"),
                      (formats.DIRECTIVE, "--exclusive"), (formats.CONSTRAINT, "a100|h100")):
        assert fmt.matches(good), fmt
        for bad in (good + "\n", good + "\r\n", "\n" + good, good + "\x00", good + "\x85"):
            assert not fmt.matches(bad), (fmt.pattern, bad)
    assert not formats.TIME.matches("١٠:٠٠")  # digits of another script are not SLURM's
    assert parse_handle("local://vm/abc") == ("local", "vm", "abc")
    with pytest.raises(BadInput, match="not a job handle"):
        parse_handle("local://vm/abc\n")
    with pytest.raises(ValueError, match="host"):
        RemoteConfig(host="pod\n", workdir="/w")
    with pytest.raises(ValueError, match="ssh option"):
        RemoteConfig(host="pod", workdir="/w", ssh_options=["Compression=yes\n"])
    with pytest.raises(ConfigError):
        parse_set("training\n.lr=1")


@pytest.mark.parametrize("name, needle", [
    ("report", "reserved"), ("logs", "reserved"), ("checkpoints", "reserved"),
    ("Report", "reserved"), ("pre.train", "must be 1-64 letters, digits, '_' or '-'"),
])
def test_stage_names_the_run_directory_uses_or_with_dots_are_refused(tmp_path, name, needle):
    config(tmp_path, f"extends: v3\npipeline:\n  - {{name: {name}, mode: train_only}}\n")
    with pytest.raises(ConfigError, match=needle):
        load_config("c", project_dir=tmp_path)


def _process(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, **env}, start_new_session=True)


def test_the_launcher_signals_only_positive_pids_of_the_jobs_own_processes(tmp_path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    host = os.uname().nodename
    mine = _process({"HPCRUN_RUN_ROOT": str(run)})
    stranger = _process({"HPCRUN_RUN_ROOT": str(tmp_path / "another-run")})
    # hostile pid files are tried with bash's kill replaced (BASH_ENV) by one that records a
    # signal instead of sending it: a launcher that signals -1 as root ends every process
    calls = tmp_path / "kill-calls"
    guard = tmp_path / "guard.sh"
    guard.write_text(f'kill() {{ if [[ $1 == -0 ]]; then builtin kill "$@"; '
                     f'else echo "$*" >>{calls}; fi; }}\n')
    try:
        time.sleep(0.3)
        script = REPO / "launchers" / "signal-trainer.sh"
        for pid in ("-1", "0", "-" + str(os.getpgid(mine.pid)), f"{stranger.pid}", "1"):
            (run / "logs" / "rank0.pid").write_text(f"{host} {pid}\n")
            proc = subprocess.run(["bash", str(script), str(run), "TERM"], capture_output=True,
                                  text=True, timeout=30,
                                  env={**os.environ, "BASH_ENV": str(guard)})
            assert not calls.exists(), (pid, calls.read_text())
        assert mine.poll() is None and stranger.poll() is None
        (run / "logs" / "rank0.pid").write_text(f"{host} {mine.pid}\n")
        proc = subprocess.run(["bash", str(script), str(run), "TERM"], capture_output=True,
                              text=True, timeout=30)
        assert "sent SIGTERM to 1 trainer process(es)" in proc.stderr
        assert mine.wait(timeout=10) == -signal.SIGTERM
    finally:
        for proc in (mine, stranger):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("workdir, needle", [
    ("~/hpcrun", "'~' is not expanded there"), ("hpcrun", "must be an absolute path"),
    ("-rf", "must be an absolute path"), ("/w\n", "control characters"),
])
def test_a_remote_workdir_is_an_absolute_path_on_the_remote(workdir, needle):
    with pytest.raises(ValueError, match=needle):
        RemoteConfig(host="pod", workdir=workdir)
    assert RemoteConfig(host="pod", workdir="/workspace/hpcrun").workdir == "/workspace/hpcrun"


@pytest.mark.parametrize("option", ["HostKeyAlias=trusted", "KnownHostsCommand=/bin/true",
                                    "GlobalKnownHostsFile=/tmp/k", "userknownhostsfile=/dev/null",
                                    "StrictHostKeyChecking=yes"])
def test_ssh_options_that_choose_the_expected_host_key_are_refused(option):
    with pytest.raises(ValueError, match="host keys are checked"):
        RemoteConfig(host="pod", workdir="/w", ssh_options=[option])
    assert RemoteConfig(host="pod", workdir="/w", ssh_options=["ProxyJump=bastion"])


def test_job_ids_are_drawn_again_on_a_collision(tmp_path, monkeypatch):
    from hpcrun.job import JobRecord
    from hpcrun.ops import submission as ops
    from hpcrun.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    store.add([JobRecord(id="d4d4", backend="local", host="h", experiment="e",
                         run_dir="/r", project_dir="/p")])
    drawn = iter(["a1a1", "a1a1", "d4d4", "b2b2", "c3c3"])
    monkeypatch.setattr(ops, "_new_id", lambda: next(drawn))
    assert ops._new_ids(3, store) == ["a1a1", "b2b2", "c3c3"]
    monkeypatch.undo()
    assert len(ops._new_id()) == 12


@pytest.mark.parametrize("content", [b"this is not a database\n" * 100, b"SQLite format 3\0"])
def test_a_broken_job_store_is_one_line_naming_it(tmp_path, monkeypatch, content):
    from conftest import invoke

    store = tmp_path / "state" / "hpcrun" / "jobs.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(content)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    answer = invoke("list")
    assert answer.code == 1 and answer.err.count("\n") == 1, answer.err
    assert f"the job store {store} cannot be read" in answer.err and "mv " in answer.err


class _Runner:
    """A scheduler client that queues the first stage, then loses the connection."""

    def __init__(self, fail_with: Exception):
        self.calls: list[list[str]] = []
        self.fail_with = fail_with

    def run(self, argv, **kwargs):
        from hpcrun.shell import Result

        self.calls.append(list(argv))
        if argv[0] in ("sbatch", "qsub"):
            if sum(c[0] == argv[0] for c in self.calls) > 1:
                raise self.fail_with
            return Result(list(argv), 0, "101\n" if argv[0] == "sbatch" else "101.pbs\n", "")
        return Result(list(argv), 0, "", "")


@pytest.mark.parametrize("backend", ["slurm", "pbs"])
def test_any_failure_after_a_stage_was_queued_cancels_what_was_queued(tmp_path, backend):
    from hpcrun.backends.pbs import PbsBackend
    from hpcrun.backends.slurm import SlurmBackend
    from hpcrun.errors import OperationFailed
    from hpcrun.render import SubmitPlan

    runner = _Runner(OperationFailed("ssh: connection to the login node lost"))
    impl = (SlurmBackend if backend == "slurm" else PbsBackend)(runner=runner)
    plans = []
    for stage in ("pretrain", "finetune"):
        script = tmp_path / f"job-{stage}.sh"
        tool = "sbatch" if backend == "slurm" else "qsub"
        plans.append(SubmitPlan(job_id="j1", script="#!/bin/bash\n", script_path=str(script),
                                argv=(tool, str(script)), files={"output": str(script)},
                                stage=stage))
    with pytest.raises(OperationFailed):
        impl.submit(plans)
    cancel = "scancel" if backend == "slurm" else "qdel"
    assert [cancel, "101" if backend == "slurm" else "101.pbs"] in runner.calls
