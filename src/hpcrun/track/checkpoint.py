"""Checkpoints: written atomically (temp file, fsync, rename), loaded with weights_only.

A checkpoint holds the unwrapped model, optimizer, scheduler, AMP scaler, the number of
completed epochs, the best metric, early-stopping counters and every rank's RNG states. RNG
states are stored as plain lists and tensors so that ``torch.load(weights_only=True)`` can read
them: loading a checkpoint never unpickles arbitrary objects.

A process killed while writing leaves its temp file behind (``.last.pt.<random>.tmp``, as large
as a checkpoint); ``remove_partial`` deletes those when the stage starts again, so repeated
preemptions do not fill the disk.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rundir import fsync_dir, write_atomic
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
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always a complete checkpoint.

    Raises ``WriteFailed`` naming ``path`` when storage fails; ``path`` is then unchanged.
    """
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


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
