"""Backend ``auto`` here: slurm where ``sbatch --version`` works, else pbs where ``qsub
--version`` does, else local. Through ``ops.submit --dry-run`` with the machine's commands
answered in memory."""

from __future__ import annotations

import pytest

from hpcrun import ops
from hpcrun.shell import Result


class Machine:
    """``which`` finds the tools in ``tools``; ``TOOL --version`` answers as given there
    (returncode, output). git is not installed (the project is read as plain files)."""

    def __init__(self, **tools: tuple[int, str]):
        self.tools = tools
        self.calls: list[list[str]] = []

    def which(self, name: str) -> str | None:
        return f"/usr/bin/{name}" if name in self.tools else None

    def run(self, argv, *, check=True, **kwargs):
        argv = list(argv)
        self.calls.append(argv)
        code, out = self.tools[argv[0]]
        return Result(tuple(argv), code, out if code == 0 else "", "" if code == 0 else out)


SLURM = (0, "slurm 23.02.7\n")
PBS = (0, "pbs_version = 22.05.11\n")
#: a version in the output does not make a client that exits non-zero usable
UNCONFIGURED = (1, "slurm 23.02.7\nsbatch: error: Could not establish a configuration source\n")


@pytest.fixture
def chosen(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def backend(machine: Machine, name: str | None = None) -> str:
        result = ops.submit("v3", backend=name, dry_run=True, project_dir=tmp_path,
                            runner=machine)
        names = {job.backend for job in result.jobs}
        assert len(names) == 1
        return names.pop()
    return backend


def test_slurm_when_sbatch_answers_its_version(chosen):
    machine = Machine(sbatch=SLURM, qsub=PBS)
    assert chosen(machine) == "slurm"
    assert ["sbatch", "--version"] in machine.calls


def test_pbs_when_sbatch_is_installed_but_not_configured_and_qsub_works(chosen):
    machine = Machine(sbatch=UNCONFIGURED, qsub=PBS)
    assert chosen(machine) == "pbs"
    assert ["sbatch", "--version"] in machine.calls and ["qsub", "--version"] in machine.calls


def test_pbs_when_only_qsub_is_here(chosen):
    assert chosen(Machine(qsub=PBS)) == "pbs"


def test_local_when_no_scheduler_works(chosen):
    assert chosen(Machine()) == "local"
    assert chosen(Machine(sbatch=UNCONFIGURED, qsub=(127, "qsub: command not found"))) == "local"


def test_a_client_that_names_no_version_is_not_taken_for_a_scheduler(chosen):
    assert chosen(Machine(sbatch=(0, "usage: sbatch [options]\n"))) == "local"


def test_a_named_backend_asks_nothing(chosen):
    machine = Machine(sbatch=SLURM)
    assert chosen(machine, "local") == "local"
    assert not any(argv[1:] == ["--version"] for argv in machine.calls)
