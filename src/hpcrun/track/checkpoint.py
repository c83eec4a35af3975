"""Checkpoints: written atomically (temp file, fsync, rename), loaded with weights_only.

A checkpoint holds the unwrapped model, optimizer, scheduler, AMP scaler, the number of
completed epochs, the best metric, early-stopping counters and every rank's RNG states. RNG
states are stored as plain lists and tensors so that ``torch.load(weights_only=True)`` can read
them: loading a checkpoint never unpickles arbitrary objects.

A process killed while writing leaves its temp file behind (``.last.pt.<random>.tmp``, as large
as a checkpoint); ``remove_partial`` deletes those when the stage starts again, so repeated
preemptions do not fill the disk.

Only rank 0 writes checkpoints, and rank 0 decides which one a job continues from
(``load_agreed``): with run directories on node-local disks the other ranks may see no file,
or an older one left on their node, and would otherwise start from another epoch than rank 0
(or wait forever in a collective rank 0 never enters). Each save carries a random ``id``; a
rank whose own copy has another id gets rank 0's state over the process group. Checkpoints are
loaded onto the CPU: ``load_state_dict`` moves what it loads to where the model and optimizer
live, and RNG states must stay CPU tensors.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rundir import fsync_dir, write_atomic
from .distributed import DistContext
from .writes import writing

log = logging.getLogger("hpcrun.train")

#: errors of os.link that mean "this filesystem has no hard links here": copy instead
_NO_HARD_LINKS = (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())  # a generator's state is a CPU byte tensor
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always a complete checkpoint.

    Raises ``WriteFailed`` naming ``path`` when storage fails; ``path`` is then unchanged.
    Adds a random ``id`` by which ranks tell their copies apart (``load_agreed``).
    """
    state = {**state, "id": secrets.token_hex(8)}
    with writing(path):
        write_atomic(path, lambda handle: torch.save(state, handle))


def link(source: Path, target: Path) -> None:
    """Make ``target`` the same checkpoint as ``source`` (a hard link, atomically replaced).

    ``source`` is replaced by a new file on the next save, so the link keeps this version.
    """
    tmp = target.with_name(f".{target.name}.link")
    with writing(target):
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:  # a full or read-only disk fails a copy too
                raise
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    fsync_dir(target.parent)


def remove_partial(directory: Path) -> None:
    """Delete the temp files of checkpoint writes that never finished.

    Only the stage's rank 0 writes in ``directory``, and it calls this before its first
    write, so every temp file found belongs to a process that is gone.
    """
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        name = path.name
        if not (name.startswith(".") and name.endswith((".tmp", ".link"))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # the next write into the directory reports the cause
            log.warning("could not remove %s: %s", path, exc.strerror or exc)
            continue
        log.info("removed %s, left by a checkpoint write that was interrupted", path)


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's state, on the CPU (see the module's documentation)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _identity(state: dict[str, Any] | None, path: Path) -> tuple[Any, ...] | None:
    """What tells two copies of a checkpoint apart: its id, or for one written before ids
    were saved, its epoch and size."""
    if state is None:
        return None
    if "id" in state:
        return ("id", state["id"])
    return ("epoch", state.get("epoch"), path.stat().st_size)


def load_agreed(ctx: DistContext, *paths: Path) -> dict[str, Any] | None:
    """The state of the checkpoint every rank continues from: the first of ``paths`` that
    exists on rank 0; None on every rank when rank 0 has none of them. A rank whose own
    copy is missing or differs gets rank 0's. Every rank must call it (it is collective)."""
    chosen = None
    if ctx.is_main:
        chosen = next((str(p) for p in paths if p.exists()), None)
    chosen = ctx.broadcast_object(chosen)
    if chosen is None:
        return None
    path = Path(chosen)
    try:
        state: dict[str, Any] | None = load(path)
    except FileNotFoundError:
        state = None
    except Exception as exc:  # another rank's unreadable copy: rank 0's replaces it
        if ctx.is_main:
            raise
        log.info("rank %d: cannot read %s (%s)", ctx.rank, path, exc)
        state = None
    identities = ctx.gather_objects(_identity(state, path))
    if identities[0] is None:  # gone from rank 0 since it looked: start afresh everywhere
        return None
    if any(other != identities[0] for other in identities):
        sent = ctx.broadcast_object(state if ctx.is_main else None)
        if identities[ctx.rank] != identities[0]:
            log.info("rank %d: %s differs from rank 0's (%s); continuing from rank 0's",
                     ctx.rank, path, "missing here" if state is None else "another save")
            state = sent
    return state
