"""Checkpoints: written atomically (temp file, fsync, rename), loaded with weights_only.

A checkpoint holds the unwrapped model, optimizer, scheduler, AMP scaler, the number of
completed epochs, the best metric, early-stopping counters and every rank's RNG states. RNG
states are stored as plain lists and tensors so that ``torch.load(weights_only=True)`` can read
them: loading a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rundir import fsync_dir, write_atomic


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
    """Write ``state`` to ``path`` so that ``path`` is always a complete checkpoint."""
    write_atomic(path, lambda handle: torch.save(state, handle))


def link(source: Path, target: Path) -> None:
    """Make ``target`` the same checkpoint as ``source`` (a hard link, atomically replaced).

    ``source`` is replaced by a new file on the next save, so the link keeps this version.
    """
    tmp = target.with_name(f".{target.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
    except OSError:  # filesystems without hard links
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
