"""Backends: one interface (``base.Backend``), one module per kind, imported on demand."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput

if TYPE_CHECKING:
    from ..job import JobRecord
    from .base import Backend

_REGISTRY = {"local": "hpcrun.backends.local:LocalBackend",
             "slurm": "hpcrun.backends.slurm:SlurmBackend",
             "pbs": "hpcrun.backends.pbs:PbsBackend",
             "pod": "hpcrun.backends.pod:PodBackend"}
KNOWN = ("local", "slurm", "pbs", "pod")


def get_backend(name: str, *, remote: str | None = None,
                project_dir: Path | None = None) -> Backend:
    """The backend called ``name``; the pod backend needs the name of its remote."""
    target = _REGISTRY.get(name)
    if target is None:
        raise BadInput(f"unknown backend {name!r}; choose one of {', '.join(KNOWN)}")
    module_name, _, cls = target.partition(":")
    factory = getattr(importlib.import_module(module_name), cls)
    if remote and name == "local":
        raise BadInput(f"the local backend runs on this machine; remote {remote!r} is for "
                       "--backend pod, slurm or pbs (a cluster's login node)")
    config = None
    if remote:
        from ..config import load_remote

        config = load_remote(remote, project_dir)
    return factory(remote=config, remote_name=remote)


def backend_for(record: JobRecord, project_dir: Path | None = None) -> Backend:
    """The backend that runs an existing job."""
    return get_backend(record.backend, remote=record.info.remote,
                       project_dir=project_dir or Path(record.project_dir))
