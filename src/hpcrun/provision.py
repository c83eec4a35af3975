"""hpcrun on a remote: a wheel of the running hpcrun, installed into a venv that hpcrun keeps
under the remote's workdir (``<workdir>/venv``, made with ``--system-site-packages`` so the
image's or the cluster's own torch is used).

``ensure`` is what ``hpcrun setup``, ``sync`` and ``submit`` call: one round trip asks the
remote's python what it has (``hpcrun.probe``: version, and the build digest of every file
hpcrun ships); only when that differs from the running hpcrun is anything installed. A
python the remote names itself (``python:``) is checked, never changed. Dependencies come
from the package index the remote reaches, or, ``offline``, from a wheelhouse built here
for the remote's platform and shipped with rsync.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import posixpath
import re
import shlex
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

from . import __version__, probe
from .config import RemoteConfig
from .errors import OperationFailed
from .shell import LocalRunner, SshRunner

#: the oldest python hpcrun runs on (pyproject's requires-python)
MIN_PYTHON = (3, 11)
_PACKAGE = Path(probe.__file__).resolve().parent


@dataclass(frozen=True)
class Build:
    version: str
    digest: str

    @property
    def label(self) -> str:
        return f"hpcrun {self.version} (build {self.digest[:12]})"


@cache
def local_build() -> Build:
    """The running hpcrun: its version and the digest of the files it ships."""
    return Build(__version__, probe.build_digest(_PACKAGE))


def cache_root() -> Path:
    from .bundle import cache_dir

    return cache_dir().parent


# --------------------------------------------------------------------------- the wheel


def _checkout() -> Path | None:
    """The source checkout the running hpcrun comes from (an editable install), if any."""
    root = _PACKAGE.parent.parent
    if _PACKAGE.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def repack_installed(target_dir: Path) -> Path:
    """A wheel of hpcrun as installed here (from a wheel, not a checkout): its package files
    and metadata, with a new RECORD. Entry points are made again by pip on install."""
    dist = metadata.distribution("hpcrun")
    info = f"hpcrun-{dist.version}.dist-info"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    out = target_dir / f"hpcrun-{dist.version}-py3-none-any.whl"
    rows = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for entry in sorted(dist.files or [], key=str):
            name = str(entry).replace("\\", "/")
            top, _, rest = name.partition("/")
            if "__pycache__" in name or name.endswith(".pyc"):
                continue
            if not (top == "hpcrun" or (top == info and rest not in skip)):
                continue
            data = Path(dist.locate_file(entry)).read_bytes()
            wheel.writestr(name, data)
            rows.append(_record_line(name, data))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([*rows, [f"{info}/RECORD", "", ""]])
        wheel.writestr(f"{info}/RECORD", text.getvalue())
    return out


def _wheel_digest(wheel: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp)
        return probe.build_digest(Path(tmp) / "hpcrun")


def build_wheel(runner: LocalRunner | None = None) -> Path:
    """A wheel of the running hpcrun, cached by build: ``pip wheel`` of the checkout it runs
    from, or the installed files packed again. Checked: its files are the running ones."""
    build = local_build()
    folder = cache_root() / "wheels" / build.digest[:16]
    found = sorted(folder.glob("hpcrun-*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        source = _checkout()
        if source is not None:
            (runner or LocalRunner()).run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                 "--disable-pip-version-check", "--wheel-dir", str(staging), str(source)],
                timeout=600)
            wheel = next(staging.glob("hpcrun-*.whl"))
        else:
            wheel = repack_installed(staging)
        if _wheel_digest(wheel) != build.digest:
            raise OperationFailed(f"the wheel built from {source or _PACKAGE} differs from the "
                                  "running hpcrun (files changed during the build?)",
                                  hint="run the command again")
        try:
            staging.rename(folder)
        except OSError:  # built at the same time by another hpcrun
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return next(folder.glob("hpcrun-*.whl"))


def requirements(wheel: Path, extras: tuple[str, ...] = ("train",)) -> list[str]:
    """The wheel's dependencies with ``extras``, markers dropped (for ``pip download``)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    out = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement, _, marker = line.partition(":")[2].strip().partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra is None or extra.group(1) in extras:
            out.append(requirement.strip())
    return out


def project_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def platforms(found: dict) -> list[str]:
    """pip's ``--platform`` tags for a remote as the probe saw it (glibc Linux)."""
    machine = found.get("machine") or "x86_64"
    libc, version = (found.get("libc") or ["", ""])[:2]
    tags = []
    if libc == "glibc" and re.fullmatch(r"2\.\d+", version or ""):
        top = int(version.split(".")[1])
        tags += [f"manylinux_2_{minor}_{machine}" for minor in range(top, 16, -1)]
        tags += [f"manylinux2014_{machine}"]
    return [*tags, f"linux_{machine}"]


# --------------------------------------------------------------------------- the remote


@dataclass
class SetupResult:
    remote: str
    python: str
    action: str  # "up to date" | "installed" | "checked"
    reason: str | None = None
    build: str | None = None
    version: str | None = None
    torch: str | None = None
    cuda: str | None = None
    offline: bool = False
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"remote": self.remote, "python": self.python, "action": self.action,
                "reason": self.reason, "version": self.version, "build": self.build,
                "torch": self.torch, "cuda": self.cuda, "offline": self.offline,
                "steps": self.steps}

    def line(self) -> str:
        where = f"{self.remote} ({self.python})"
        if self.action == "installed":
            return f"set up hpcrun {self.version} on {where}: {self.reason}"
        return f"hpcrun {self.version} on {where} is this build"


@cache
def probe_source() -> str:
    return Path(probe.__file__).read_text(encoding="utf-8")


def run_probe(ssh: SshRunner, python: str, request: dict | None = None,
              timeout: float = 180) -> tuple[dict | None, str]:
    """(what ``python`` on the remote has, or None; the last line of its error)."""
    result = ssh.run([python, "-c", probe_source(), json.dumps(request or {})], check=False,
                     timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode == 0 and lines:
        try:
            return json.loads(lines[-1]), ""
        except ValueError:
            pass
    error = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
    return None, error


def judge(found: dict | None, want: Build) -> str | None:
    """Why ``found`` (a probe's answer) cannot run this hpcrun's jobs; None when it can."""
    if found is None:
        return "there is no such python"
    package = found.get("hpcrun")
    if package is None:
        return "hpcrun is not installed"
    if not package.get("ours"):
        return (f"its package named hpcrun ({package.get('path')}) is another project, "
                "not this tool")
    if package.get("version") != want.version:
        return f"it has hpcrun {package.get('version')} (this is {want.version})"
    if package.get("build") != want.digest:
        return f"it has another build of hpcrun {want.version}"
    return None


def _pip(python: str, *args: str, index: list[str]) -> list[str]:
    return [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            *index, *args]


def ensure(remote: RemoteConfig, ssh: SshRunner, name: str, *, offline: bool = False,
           force: bool = False, progress: Callable[[str], None] | None = None,
           runner: LocalRunner | None = None) -> SetupResult:
    """Make ``remote`` run this hpcrun: nothing when it already does (one round trip)."""
    say = progress or (lambda line: None)
    want = local_build()
    python = remote.interpreter
    found, error = run_probe(ssh, python)
    problem = judge(found, want)
    if problem is None and not force:
        return SetupResult(name, python, "up to date", build=want.digest, version=want.version)
    if not remote.managed:
        detail = f"{problem} ({error})" if found is None and error else problem
        raise OperationFailed(
            f"{python} on remote {name}: {detail}",
            hint=f"leave python: unset in remote {name} so that hpcrun sets up its own venv "
                 f"there (hpcrun setup --remote {name}), or install this hpcrun with that "
                 f"python from a wheel (pip install {build_wheel(runner).name})")
    if found is None:
        problem = f"hpcrun has no venv there yet ({remote.venv})"
    result = SetupResult(name, python, "installed", reason=problem or "reinstall asked",
                         version=want.version, build=want.digest, offline=offline)
    if found is None:
        base, error = run_probe(ssh, remote.base_python)
        if base is None:
            raise OperationFailed(f"base_python {remote.base_python!r} does not run on remote "
                                  f"{name} ({error})",
                                  hint=f"set base_python: in remote {name} to a Python "
                                  f"{'.'.join(map(str, MIN_PYTHON))}+ there")
        version = tuple(int(p) for p in base["version"].split(".")[:2])
        if version < MIN_PYTHON:
            raise OperationFailed(f"{base['python']} on remote {name} is Python "
                                  f"{base['version']}; hpcrun needs "
                                  f"{'.'.join(map(str, MIN_PYTHON))} or newer",
                                  hint=f"set base_python: in remote {name} to a newer python "
                                  "(e.g. after `module load python` on a cluster)")
        say(f"creating {remote.venv} on {name} (from {base['python']}, with its packages)")
        _make_venv(ssh, remote, name, base)
        result.steps.append(f"created {remote.venv}")
        found, _ = run_probe(ssh, python)
        if found is None or not found.get("pip"):
            raise OperationFailed(f"the venv {remote.venv} on remote {name} has no pip",
                                  hint="install python3-venv (or pip) for base_python there")
    wheel = build_wheel(runner)
    setup_dir = posixpath.join(remote.workdir, "setup")
    ssh.run(["mkdir", "-p", posixpath.join(setup_dir, "wheelhouse")])
    index: list[str] = []
    if offline:
        have, _ = run_probe(ssh, python, {"distributions": True})
        house = wheelhouse(wheel, have or found or {}, remote.torch, runner)
        say(f"shipping {len(list(house.iterdir()))} wheels to {name} (offline)")
        ssh.rsync([*ssh.rsync_argv(), f"{house}/",
                   f"{ssh.target}:{posixpath.join(setup_dir, 'wheelhouse')}/"])
        index = ["--no-index", "--find-links", posixpath.join(setup_dir, "wheelhouse")]
        result.steps.append(f"shipped the wheelhouse {house.name}")
    ssh.rsync([*ssh.rsync_argv(), str(wheel), f"{ssh.target}:{setup_dir}/"])
    remote_wheel = posixpath.join(setup_dir, wheel.name)
    has_torch, _ = run_probe(ssh, python, {"modules": ["torch"]})
    if remote.torch and not (has_torch or {}).get("modules", {}).get("torch"):
        say(f"installing torch on {name}: pip install {remote.torch}")
        _install(ssh, name, _pip(python, *shlex.split(remote.torch), index=index))
        result.steps.append(f"pip install {remote.torch}")
    say(f"installing {wheel.name} with its train extra on {name}")
    _install(ssh, name, _pip(python, f"{remote_wheel}[train]", index=index))
    _install(ssh, name, _pip(python, "--force-reinstall", "--no-deps", remote_wheel, index=[]))
    result.steps.append(f"pip install {wheel.name}[train]")
    final, error = run_probe(ssh, python, {"torch": True})
    still = judge(final, want)
    if still is not None:
        raise OperationFailed(f"after installing, {python} on remote {name}: {still}",
                              hint="look at PYTHONPATH or a .pth file there that shadows the "
                              "venv's packages")
    result.torch = (final or {}).get("torch")
    result.cuda = (final or {}).get("cuda_version")
    return result


def _install(ssh: SshRunner, name: str, argv: list[str]) -> None:
    proc = ssh.run(argv, check=False, timeout=3600)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["no output"]
        problem = next((line for line in reversed(lines) if "ERROR" in line), lines[-1])
        raise OperationFailed(f"pip on remote {name} failed: {problem.strip()}",
                              hint="an index the remote can reach, or hpcrun setup --offline "
                              f"--remote {name} (ships every wheel from here)")


def _make_venv(ssh: SshRunner, remote: RemoteConfig, name: str, base: dict) -> None:
    ssh.run(["mkdir", "-p", remote.workdir])
    venv = [remote.base_python, "-m", "venv", "--system-site-packages"]
    proc = ssh.run([*venv, remote.venv], check=False, timeout=600)
    if proc.returncode != 0:  # Debian without python3-venv has no ensurepip: its pip serves
        ssh.run(["rm", "-rf", remote.venv], check=False)
        proc = ssh.run([*venv, "--without-pip", remote.venv], check=False, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OperationFailed(f"cannot create the venv {remote.venv} on remote {name}: {last}",
                              hint="install python3-venv there, or set base_python:")


def wheelhouse(wheel: Path, found: dict, torch: str | None,
               runner: LocalRunner | None = None) -> Path:
    """Every wheel the remote lacks for hpcrun[train], downloaded here for its platform and
    python (cached by what it holds)."""
    have = set(found.get("distributions") or [])
    wanted = [r for r in requirements(wheel) if project_name(r) not in have]
    torch_args: list[str] = []
    if any(project_name(r) == "torch" for r in wanted):
        wanted = [r for r in wanted if project_name(r) != "torch"]
        torch_args = shlex.split(torch) if torch else ["torch"]
    version = "".join(found.get("version", "3.11").split(".")[:2])
    target = ["--only-binary=:all:", "--python-version", version, "--implementation", "cp",
              "--abi", f"cp{version}"]
    for tag in platforms(found):
        target += ["--platform", tag]
    key = hashlib.sha256(json.dumps([wanted, torch_args, target]).encode()).hexdigest()[:16]
    house = cache_root() / "wheelhouse" / key
    if (house / ".complete").is_file():
        shutil.copy2(wheel, house / wheel.name)
        return house
    house.mkdir(parents=True, exist_ok=True)
    run = runner or LocalRunner()
    download = [sys.executable, "-m", "pip", "download", "--quiet",
                "--disable-pip-version-check", "--dest", str(house), *target]
    for args in ([*wanted], torch_args):
        if args:
            proc = run.run([*download, *args], check=False, timeout=3600)
            if proc.returncode != 0:
                lines = [line for line in proc.stderr.splitlines() if line.strip()]
                raise OperationFailed(f"cannot download wheels for the remote: "
                                      f"{(lines or ['pip failed'])[-1].strip()}",
                                      hint="this machine needs the package index for "
                                      "--offline")
    shutil.copy2(wheel, house / wheel.name)
    (house / ".complete").touch()
    return house
