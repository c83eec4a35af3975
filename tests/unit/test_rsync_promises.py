"""What rsync does for ``fetch`` and ``sync``, run for real on this machine: the ssh runner's
commands go through a loopback that drops ``-e ssh ...`` and the ``host:`` prefix, so the
"remote" is a folder here. ``fetch`` leaves out links pointing outside the run directory
(``--safe-links``); ``sync --delete`` removes what is gone here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcrun import sync as sync_module
from hpcrun.backends.files import RemoteFiles
from hpcrun.bundle import describe
from hpcrun.config import BundleConfig, RemoteConfig
from hpcrun.job import JobInfo, JobRecord
from hpcrun.shell import LocalRunner, Result, SshRunner

HOST = "pod.example"


class Loopback(LocalRunner):
    """ssh's commands run here under sh; rsync runs here with the host part dropped."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @staticmethod
    def _here(argv) -> list[str]:
        argv = list(argv)
        if "-e" in argv:
            at = argv.index("-e")
            del argv[at:at + 2]
        return [a.removeprefix(f"{HOST}:") for a in argv]

    def run(self, argv, **kwargs):
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "ssh":
            if "-O" in argv:  # closing the shared connection
                return Result(tuple(argv), 0, "", "")
            proc = subprocess.run(["sh", "-c", argv[-1]], capture_output=True, text=True,
                                  input=kwargs.get("input"))
            return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        return super().run(self._here(argv), **kwargs)

    def stream(self, argv, **kwargs):
        self.calls.append(list(argv))
        return super().stream(self._here(argv), **kwargs)

    @staticmethod
    def which(name: str) -> str | None:
        return None  # no git: the project is read as plain files

    def rsyncs(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "rsync"]


@pytest.fixture
def ssh(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    remote = RemoteConfig(host=HOST, workdir=str(tmp_path / "remote"))
    runner = SshRunner(remote, known_hosts=tmp_path / "known_hosts",
                       control_dir=tmp_path / "ctl", local=Loopback())
    return runner


def _run_dirs(tmp_path: Path) -> tuple[JobRecord, Path, Path]:
    remote_run = tmp_path / "remote" / "runs" / "exp" / "r1"
    (remote_run / "train").mkdir(parents=True)
    (remote_run / "status.json").write_text('{"state": "SUCCEEDED"}\n')
    (remote_run / "train" / "training.csv").write_text("Epoch,Train Loss\n1,0.5\n")
    (remote_run / "train" / "last.pt").write_bytes(b"weights")
    secret = tmp_path / "remote-home" / ".ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_text("PRIVATE KEY\n")
    (remote_run / "key").symlink_to(secret)  # a job's link out of its run directory
    (remote_run / "up.json").symlink_to("../../../remote-home/.ssh/id_ed25519")
    (remote_run / "latest.csv").symlink_to("train/training.csv")  # inside: kept
    local_run = tmp_path / "local" / "runs" / "exp" / "r1"
    record = JobRecord(id="d" * 12, backend="pod", host="h", experiment="exp",
                       run_dir=str(local_run), project_dir=str(tmp_path),
                       info=JobInfo(remote="pod", remote_run_dir=str(remote_run)))
    return record, remote_run, local_run


@pytest.mark.parametrize("partial", [False, True])
def test_fetch_leaves_out_links_that_point_outside_the_run_directory(tmp_path, ssh, partial):
    record, _, local_run = _run_dirs(tmp_path)
    files = RemoteFiles(ssh, str(tmp_path / "remote"), "python3", "pod")
    files.pull(record, partial=partial)
    [argv] = ssh.local.rsyncs()
    assert "--safe-links" in argv
    assert (local_run / "train" / "training.csv").read_text().startswith("Epoch")
    assert not os.path.lexists(local_run / "key")
    assert not os.path.lexists(local_run / "up.json")
    assert (local_run / "train" / "last.pt").exists() is not partial  # --partial: CSV, JSON
    if not partial:
        assert os.readlink(local_run / "latest.csv") == "train/training.csv"
    found = [p for p in (tmp_path / "local").rglob("*") if p.is_file()]
    assert not any("PRIVATE KEY" in p.read_text(errors="replace") for p in found)


# --------------------------------------------------------------------------- sync --delete


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text("print('version 2')\n")
    (project / "data" / "a.csv").write_text("x\n1\n")
    return project


def _remote_from_an_earlier_sync(tmp_path: Path) -> tuple[Path, Path]:
    code = tmp_path / "remote" / "code"
    code.mkdir(parents=True)
    (code / "train.py").write_text("print('v1')\n")
    (code / "old_module.py").write_text("removed here since\n")
    data = tmp_path / "remote" / "data"
    (data / "data").mkdir(parents=True)
    (data / "data" / "a.csv").write_text("x\n0\n0\n")
    (data / "data" / "stale.csv").write_text("removed here since\n")
    return code, data


@pytest.fixture
def no_agent(monkeypatch):
    """The remote agent freezes the synced tree; here nothing is frozen."""
    monkeypatch.setattr(sync_module, "agent", lambda *args, **kwargs: {"verified": 0})


def _push(tmp_path, ssh, delete: bool) -> tuple[Path, Path]:
    project = _project(tmp_path)
    code, data = _remote_from_an_earlier_sync(tmp_path)
    bundle = describe(project, BundleConfig(), runner=ssh.local)
    sync_module.push(bundle, ssh, str(tmp_path / "remote"), delete=delete)
    sync_module.push_data(["data"], project, ssh, str(data), delete=delete)
    assert (code / "train.py").read_text() == "print('version 2')\n"
    assert (data / "data" / "a.csv").read_text() == "x\n1\n"
    return code, data


def test_sync_without_delete_keeps_remote_files_gone_here(tmp_path, ssh, no_agent):
    code, data = _push(tmp_path, ssh, delete=False)
    assert (code / "old_module.py").exists() and (data / "data" / "stale.csv").exists()
    assert not any("--delete" in a for argv in ssh.local.rsyncs() for a in argv)


def test_sync_delete_removes_data_files_gone_here(tmp_path, ssh, no_agent):
    _, data = _push(tmp_path, ssh, delete=True)
    assert not (data / "data" / "stale.csv").exists()


def test_sync_delete_removes_code_files_gone_here(tmp_path, ssh, no_agent):
    outside = tmp_path / "remote-home" / "notes.txt"
    outside.parent.mkdir(parents=True)
    outside.write_text("not the project's\n")
    code, _ = _remote_from_an_earlier_sync(tmp_path)
    (code / "old pkg\nname").mkdir()
    (code / "old pkg\nname" / "mod.py").write_text("gone here\n")
    (code / "notes").symlink_to(outside)  # a link in the tree: removed, never followed
    project = _project(tmp_path)
    bundle = describe(project, BundleConfig(), runner=ssh.local)
    shown = sync_module.push(bundle, ssh, str(tmp_path / "remote"), dry_run=True, delete=True)
    gone = ["notes", "old pkg\nname/mod.py", "old_module.py"]
    assert [c for c in shown.changed if c.startswith("deleting ")] == \
        [f"deleting {rel}" for rel in gone]
    assert (code / "old_module.py").exists()  # a dry run removes nothing
    synced = sync_module.push(bundle, ssh, str(tmp_path / "remote"), delete=True)
    assert [c for c in synced.changed if c.startswith("deleting ")] == \
        [f"deleting {rel}" for rel in gone]
    assert sorted(p.relative_to(code).as_posix() for p in code.rglob("*")
                  if not p.is_dir() or p.is_symlink()) == sorted(bundle.files)
    assert not (code / "old pkg\nname").exists()  # the folder it left empty went too
    assert outside.read_text() == "not the project's\n"
