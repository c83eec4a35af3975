"""Remote machines: sync (code bundle and data), setup (hpcrun and its environment there) and
doctor (what works here or on a remote)."""

from __future__ import annotations

import json
import posixpath
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import describe
from ..config import load_config
from ..errors import BadInput
from ..shell import LocalRunner
from .submission import _data_paths

# --------------------------------------------------------------------------- sync


def sync(remote: str, *, name: str | None = None, dry_run: bool = False, delete: bool = False,
         allow: Sequence[str] = (), project_dir: Path,
         progress: Any = None, notice: Any = None) -> Any:
    """Set the remote up to run this hpcrun (when it does not yet), ship this project's code
    bundle, then the data the experiment ``name`` declares (rsync over one ssh connection)."""
    from ..config import BundleConfig, load_remote
    from ..provision import ensure
    from ..shell import SshRunner
    from ..sync import push, push_data

    project_dir = project_dir.resolve()
    cfg = load_config(name, project_dir=project_dir) if name else None
    data = _data_paths([cfg], project_dir) if cfg else []
    shipped = [p for p in data if not posixpath.isabs(p) and not p.startswith("~")]
    for path in shipped:
        if not (project_dir / path).exists():
            raise BadInput(f"data path {path!r} does not exist (looked for "
                           f"{project_dir / path})", hint="fix sync.data or data.path")
    remote_cfg = load_remote(remote, project_dir)
    ssh = SshRunner(remote_cfg)
    try:
        setup = None if dry_run else ensure(remote_cfg, ssh, remote, progress=notice)
        bundle = describe(project_dir, cfg.bundle if cfg else BundleConfig(), allow)
        result = push(bundle, ssh, remote_cfg.workdir, dry_run=dry_run, delete=delete,
                      progress=progress)
        result.setup = setup
        result.data = push_data(shipped, project_dir, ssh, remote_cfg.data_dir,
                                dry_run=dry_run, delete=delete, progress=progress)
        return result
    finally:
        ssh.close()


def setup(remote: str, *, offline: bool = False, force: bool = False, project_dir: Path,
          notice: Any = None) -> Any:
    """Install this hpcrun on a remote (its own venv there), or find it already there."""
    from ..config import load_remote
    from ..provision import ensure
    from ..shell import SshRunner

    remote_cfg = load_remote(remote, project_dir)
    ssh = SshRunner(remote_cfg)
    try:
        return ensure(remote_cfg, ssh, remote, offline=offline, force=force, progress=notice)
    finally:
        ssh.close()


# --------------------------------------------------------------------------- doctor


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _python_checks(found: dict) -> list[Check]:
    """torch, CUDA and NVML as ``hpcrun.probe`` found them."""
    checks = []
    if "torch" in found:
        checks.append(Check("torch", True, found["torch"]))
        names = ", ".join(found.get("gpu_names") or [])
        checks.append(Check("CUDA", bool(found.get("cuda")),
                            f"CUDA {found['cuda_version']}, {found['gpus']} GPU(s)"
                            + (f": {names}" if names else "") if found.get("cuda")
                            else "no CUDA device (training runs on CPU, gloo)"))
    else:
        checks.append(Check("torch", False, found.get("torch_error", "not importable")))
        checks.append(Check("CUDA", False, "needs torch"))
    checks.append(Check("NVML", "nvml" in found,
                        f"driver {found['nvml']}" if "nvml" in found
                        else f"unavailable ({found.get('nvml_error', 'pynvml missing')}): GPU "
                        "memory columns stay empty"))
    return checks


def doctor(runner: LocalRunner | None = None, remote: str | None = None,
           project_dir: Path | None = None) -> list[Check]:
    """What hpcrun can use here, or on ``remote`` (one round trip there)."""
    if remote is not None:
        return _remote_doctor(remote, project_dir)
    from ..provision import probe_source

    runner = runner or LocalRunner()
    checks = []
    for tool, argv in (("ssh", ["ssh", "-V"]), ("rsync", ["rsync", "--version"]),
                       ("sbatch", ["sbatch", "--version"]), ("qsub", ["qsub", "--version"]),
                       ("git", ["git", "--version"])):
        path = runner.which(tool)
        if path is None:
            checks.append(Check(tool, False, "not found on PATH"))
            continue
        result = runner.run(argv, check=False, timeout=20)
        lines = (result.stdout + "\n" + result.stderr).strip().splitlines()
        version = next((line.strip() for line in lines if re.search(r"\d+\.\d+", line)
                        and "error" not in line.lower()), None)
        if version is None:  # e.g. sbatch without a SLURM configuration to read
            problem = lines[-1].strip() if lines else f"exit code {result.returncode}"
            checks.append(Check(tool, False, f"found at {path} but not usable: {problem}"))
        else:
            checks.append(Check(tool, True, f"{version} ({path})"))
    probe = runner.run([sys.executable, "-c", probe_source(), json.dumps({"torch": True})],
                       check=False, timeout=120)
    try:
        found = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        found = {"torch_error": probe.stderr.strip()[-200:] or "probe failed"}
    return checks + _python_checks(found)


def _remote_doctor(name: str, project_dir: Path | None) -> list[Check]:
    from ..config import load_remote
    from ..provision import judge, local_build, run_probe
    from ..shell import SshRunner

    remote = load_remote(name, project_dir)
    ssh = SshRunner(remote)
    request = {"torch": True, "disk": remote.workdir,
               "tools": ["sbatch", "squeue", "qsub", "rsync", "nvidia-smi"]}
    try:
        found, error = run_probe(ssh, remote.interpreter, request)
        checks = [Check("ssh", True, f"{ssh.target}:{remote.port}")]
        if found is None:
            checks.append(Check("python", False, f"{remote.interpreter}: {error}"))
            if not remote.managed:
                return checks
            found, error = run_probe(ssh, remote.base_python, request)
            if found is None:
                checks.append(Check("base", False, f"{remote.base_python}: {error}"))
                return checks
            checks.append(Check("base", True, f"{found['python']} (Python {found['version']}"
                                f"); the venv is not there yet: hpcrun setup --remote {name}"))
        else:
            checks.append(Check("python", True, f"{found['python']} (Python "
                                f"{found['version']})"))
        want = local_build()
        problem = judge(found, want)
        checks.append(Check("hpcrun", problem is None, f"{want.version}, this build"
                            if problem is None else f"{problem}: hpcrun setup --remote {name}"))
        checks += _python_checks(found)
        for tool, seen in (found.get("tools") or {}).items():
            checks.append(Check(tool, bool(seen.get("usable")),
                                f"{seen['detail']} ({seen['path']})" if seen.get("usable")
                                else seen.get("detail") or "not usable"))
        disk = found.get("disk") or {}
        if disk:
            free = disk["free_bytes"] / 2**30
            checks.append(Check("disk", free >= 10, f"{free:,.1f} GiB free in {disk['path']} "
                                f"(filesystem of {disk['checked']})"))
        return checks
    finally:
        ssh.close()
