"""What a python on some machine has: hpcrun (ours or a foreign package of that name, which
build), torch, CUDA, NVML, scheduler clients, free disk. One call answers everything, as JSON.

This module is self-contained (standard library only, no hpcrun imports, no import of the
package it inspects) because hpcrun sends its source to a remote's python with ``python -c``
before hpcrun is installed there; the local ``doctor`` runs the same code, so both sides
compute a build's identity with one function.

    python -c "$(cat probe.py)" '{"torch": true, "tools": ["sbatch"], "disk": "/work",
                                  "modules": ["torch"], "distributions": true}'
"""

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

#: a line only hpcrun's own ``__init__.py`` holds: a foreign package named hpcrun lacks it
MARKER = "HPCRUN_PRODUCT = "
#: the files whose content makes a build: code and the shipped configs, templates, launchers
BUILD_SUFFIXES = (".py", ".sh", ".j2", ".yaml", ".yml", ".json", ".txt")
RESOURCES = ("configs", "templates", "launchers")


def resource_root(package: Path) -> Path:
    """Where a build's configs/templates/launchers are: inside a wheel's package, or at the
    root of a source checkout (mirrors hpcrun.resources, which this module cannot import)."""
    bundled = package / "_resources"
    return bundled if (bundled / "configs").is_dir() else package.parent.parent


def _files(root: Path, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        if parts[0] in skip or "__pycache__" in parts or any(p.startswith(".") for p in parts):
            continue
        if path.is_file() and path.suffix in BUILD_SUFFIXES:
            found[f"{prefix}/{rel}"] = path
    return found


def build_digest(package: Path) -> str:
    """sha256 over the relative names and contents of a build's files: the same for a
    source checkout and the wheel built from it."""
    files = _files(package, "hpcrun", skip=("_resources",))
    root = resource_root(package)
    for name in RESOURCES:
        if (root / name).is_dir():
            files.update(_files(root / name, name))
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(files[rel].read_bytes()).digest())
    return digest.hexdigest()


def find_hpcrun() -> dict | None:
    """The package named hpcrun this python would import (without importing it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("hpcrun")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None if spec is None else {"path": spec.origin, "ours": False, "version": None}
    package = Path(list(spec.submodule_search_locations)[0])
    try:
        init = (package / "__init__.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        init = ""
    version = None
    for line in init.splitlines():
        if line.startswith("__version__"):
            version = line.partition("=")[2].strip().strip("\"'")
    ours = MARKER in init and (package / "agent.py").is_file()
    return {"path": str(package), "ours": ours, "version": version,
            "build": build_digest(package) if ours else None}


def _tool(name: str) -> dict:
    """A client on PATH, and whether it answers ``--version`` (sbatch without a SLURM
    configuration is installed but not usable)."""
    path = shutil.which(name)
    if path is None:
        return {"path": None, "usable": False, "detail": "not found on PATH"}
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"path": path, "usable": False, "detail": str(exc)}
    lines = (proc.stdout + "\n" + proc.stderr).strip().splitlines()
    version = next((line.strip() for line in lines if any(c.isdigit() for c in line)
                    and "." in line and "error" not in line.lower()), None)
    if proc.returncode != 0 or version is None:
        problem = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        return {"path": path, "usable": False, "detail": problem}
    return {"path": path, "usable": True, "detail": version}


def _torch() -> dict:
    out: dict = {}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.cuda.is_available()
        out["cuda_version"] = torch.version.cuda
        out["gpus"] = torch.cuda.device_count()
        out["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(out["gpus"])]
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        out["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import pynvml

        pynvml.nvmlInit()
        out["nvml"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as exc:  # noqa: BLE001
        out["nvml_error"] = type(exc).__name__
    return out


def _free(path: str) -> dict:
    target = Path(os.path.expanduser(path))
    while not target.exists() and target != target.parent:
        target = target.parent  # the workdir may not exist yet: its filesystem does
    usage = shutil.disk_usage(target)
    return {"path": path, "checked": str(target), "free_bytes": usage.free,
            "total_bytes": usage.total}


def probe(request: dict) -> dict:
    import importlib.util

    # the working folder (a remote's home, where a workdir named hpcrun may lie) is no package
    sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
    libc = platform.libc_ver()
    answer = {
        "python": sys.executable,
        "version": platform.python_version(),
        "implementation": sys.implementation.name,
        "machine": platform.machine(),
        "system": platform.system(),
        "libc": list(libc),
        "in_venv": sys.prefix != sys.base_prefix,
        "pip": importlib.util.find_spec("pip") is not None,
        "ensurepip": importlib.util.find_spec("ensurepip") is not None,
        "hpcrun": find_hpcrun(),
    }
    if request.get("modules"):
        answer["modules"] = {name: importlib.util.find_spec(name) is not None
                             for name in request["modules"]}
    if request.get("torch"):
        answer.update(_torch())
    if request.get("tools"):
        answer["tools"] = {name: _tool(name) for name in request["tools"]}
    if request.get("disk"):
        answer["disk"] = _free(request["disk"])
    if request.get("distributions"):
        from importlib import metadata

        answer["distributions"] = sorted({(d.metadata["Name"] or "").lower()
                                          for d in metadata.distributions()} - {""})
    return answer


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})))
