"""Where the files that ship with hpcrun (configs, templates, launchers) live.

A wheel carries them inside the package (``hpcrun/_resources``); a source checkout
(editable install, tests) keeps them at the repository root, where they are edited.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def resource_root() -> Path:
    bundled = _PACKAGE_DIR / "_resources"
    if (bundled / "configs").is_dir():
        return bundled
    checkout = _PACKAGE_DIR.parent.parent
    if (checkout / "configs").is_dir():
        return checkout
    raise FileNotFoundError(f"hpcrun's bundled configs are missing (looked in {bundled})")


def configs_dir() -> Path:
    return resource_root() / "configs"


def templates_dir() -> Path:
    return resource_root() / "templates"


def launchers_dir() -> Path:
    return resource_root() / "launchers"
