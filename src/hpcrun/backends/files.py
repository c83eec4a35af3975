"""Where a job's files live: on this machine, or on a remote reached by ssh (a pod, or a
cluster's login node). Backends render paths with ``place``/``bundle_dir`` (pure) and move
files with the rest; the same SLURM code then serves a local cluster and one behind ssh."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

from .. import rundir
from ..bundle import Bundle, cache_dir, snapshot
from ..job import JobRecord
from ..shell import LocalRunner, SshRunner
from ..sync import push, remote_paths
from .agent_client import agent


class LocalFiles:
    remote_name: str | None = None

    def place(self, local_run_dir: str) -> str:
        return local_run_dir

    def bundle_dir(self, bundle: Bundle) -> str:
        return str(cache_dir() / bundle.hash[:24])

    def ship(self, bundle: Bundle) -> None:
        snapshot(bundle)

    def write(self, files: dict[str, str], modes: dict[str, int] | None = None) -> None:
        for path, text in files.items():
            target = Path(path)
            rundir.write_atomic(target, text.encode())
            if modes and path in modes:
                target.chmod(modes[path])

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def read_json(self, path: str) -> dict | None:
        return rundir.read_json(Path(path))

    def run_dir(self, record: JobRecord) -> str:
        return record.run_dir

    def catch_up(self, record: JobRecord, known: dict[str, list]) -> None:
        """Nothing to do: the run directory is on this machine."""


class RemoteFiles:
    """Files under ``workdir`` on an ssh remote; writes go through ``python -m hpcrun.agent``
    there (one round trip), reads through ssh, run directories come back with rsync."""

    def __init__(self, ssh: SshRunner, workdir: str, python: str, remote_name: str,
                 local: LocalRunner | None = None):
        self.ssh, self.workdir, self.python = ssh, workdir, python
        self.remote_name = remote_name
        self.local = local or LocalRunner()

    def place(self, local_run_dir: str) -> str:
        """``<workdir>/runs/<experiment>/<run-id>`` for a local ``.../<experiment>/<run-id>``."""
        local = Path(local_run_dir)
        return posixpath.join(self.workdir, "runs", local.parent.name, local.name)

    def bundle_dir(self, bundle: Bundle) -> str:
        return remote_paths(self.workdir, bundle.hash)[1]

    def ship(self, bundle: Bundle) -> None:
        push(bundle, self.ssh, self.workdir)

    def write(self, files: dict[str, str], modes: dict[str, int] | None = None,
              start: str | None = None) -> dict:
        dirs = sorted({posixpath.join(posixpath.dirname(p), rundir.LOGS) for p in files})
        return agent(self.ssh, "prepare", {"files": files, "modes": modes or {}, "dirs": dirs,
                                           "start": start}, python=self.python)

    def remove(self, paths: list[str]) -> None:
        self.ssh.run(["rm", "-f", "--", *paths])

    def read_text(self, path: str) -> str | None:
        result = self.ssh.run(["cat", path], check=False)
        return result.stdout if result.returncode == 0 else None

    def read_json(self, path: str) -> dict | None:
        text = self.read_text(path)
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def run_dir(self, record: JobRecord) -> str:
        return record.info.remote_run_dir or self.place(record.run_dir)

    def catch_up(self, record: JobRecord, known: dict[str, list]) -> None:
        """Bring the local copy of a running job's watched files up to date in one round trip
        that carries only what was added since ``known`` (updated in place)."""
        changes = agent(self.ssh, "tail", {"run_dir": self.run_dir(record), "known": known},
                        python=self.python)
        rundir.mirror(Path(record.run_dir), changes, known)

    def pull(self, record: JobRecord, partial: bool = False) -> None:
        """Bring the run directory back with rsync (resumable). ``partial``: CSVs and JSON
        only, for a job still running."""
        local = Path(record.run_dir)
        local.mkdir(parents=True, exist_ok=True)
        only = ["--include=*/", "--include=*.csv", "--include=*.json", "--exclude=*"]
        argv = self.ssh.rsync_argv("--safe-links", *(only if partial else []))
        argv += [f"{self.ssh.target}:{self.run_dir(record).rstrip('/')}/", str(local) + "/"]
        self.ssh.rsync(argv)

    def close(self) -> None:
        self.ssh.close()


def files_for(remote, remote_name: str | None):
    """LocalFiles, or RemoteFiles over a new ssh connection to ``remote``."""
    if remote is None:
        return LocalFiles()
    return RemoteFiles(SshRunner(remote), remote.workdir, remote.interpreter, remote_name or "")
