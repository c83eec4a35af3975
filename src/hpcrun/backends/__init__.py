"""Backends: one interface (``base.Backend``), one module per kind, imported on demand."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import BadInput

if TYPE_CHECKING:
    from .base import Backend

_REGISTRY = {"local": "hpcrun.backends.local:LocalBackend",
             "slurm": "hpcrun.backends.slurm:SlurmBackend",
             "pbs": "hpcrun.backends.pbs:PbsBackend"}
KNOWN = ("local", "slurm", "pbs", "pod")


def get_backend(name: str) -> Backend:
    target = _REGISTRY.get(name)
    if target is None:
        if name in KNOWN:
            raise BadInput(f"backend {name!r} is not available in this version of hpcrun; "
                           f"available: {', '.join(_REGISTRY)}")
        raise BadInput(f"unknown backend {name!r}; choose one of {', '.join(KNOWN)}")
    module_name, _, cls = target.partition(":")
    return getattr(importlib.import_module(module_name), cls)()
