"""A frozen bundle (``<cache>/<hash>`` here, ``<workdir>/bundles/<hash>`` on a remote) is what
jobs run, and their working folder. Before one is used again it is checked against the
bundle's manifest: every file with its digest, and nothing else (a job that wrote
``./wandb/`` into it would otherwise leak those files into every later identical submit).
A snapshot that fails is moved aside, never deleted (jobs may still run in it), and taken
again. Standard library only: the remote's agent uses it too.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from .rundir import sha256_file

MANIFEST_NAME = "BUNDLE.sha256"
#: files hpcrun itself writes into a frozen snapshot beside the project's
OWN_FILES = frozenset({MANIFEST_NAME, "bundle.json"})
#: what python writes beside the modules a job imports from the snapshot
BYTECODE = "__pycache__"


def parse_manifest(text: str) -> dict[str, str]:
    entries = {}
    for line in text.splitlines():
        digest, _, rel = line.partition("  ")
        if rel:
            entries[rel] = digest
    return entries


def problems(root: Path, manifest: str, links: dict[str, str] | None = None) -> list[str]:
    """What differs between ``root`` and ``manifest`` (+ the data ``links`` it carries):
    files missing or changed, and files, folders or links that should not be there."""
    expected = parse_manifest(manifest)
    links = links or {}
    bad = []
    for rel, digest in expected.items():
        path = root / rel
        try:
            if sha256_file(path) != digest:  # a link is an OSError: not ours
                bad.append(rel)
        except OSError:
            bad.append(rel)
    folders = {str(Path(rel).parent) for rel in [*expected, *links]}
    folders = {p for f in folders for p in [f, *map(str, Path(f).parents)]}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != BYTECODE]
        here = Path(folder).relative_to(root)
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            rel = (here / name).as_posix()
            if rel in expected or rel in OWN_FILES:
                continue
            if rel in links and (Path(folder) / name).is_symlink() \
                    and os.readlink(Path(folder) / name) == links[rel]:
                continue
            bad.append(rel)
        for name in dirs:
            rel = (here / name).as_posix()
            if rel not in folders and not (Path(folder) / name).is_symlink():
                bad.append(rel + "/")
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    return sorted(set(bad))


def add_links(root: Path, links: dict[str, str]) -> None:
    """Create the data links of a snapshot being built under ``root``."""
    for rel, target in links.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(dest):
            os.symlink(target, dest)


def link_tree(source: Path, staging: Path, manifest: str) -> None:
    """Hard links in ``staging`` to the manifest's files (and hpcrun's own) in ``source``:
    a file left in ``source`` by an earlier sync is not part of this bundle."""
    staging.mkdir(parents=True, exist_ok=True)
    for rel in [*parse_manifest(manifest), *sorted(OWN_FILES)]:
        src = source / rel
        if not src.is_file() or src.is_symlink():
            continue  # a missing file is reported by the check that follows
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dest)


def set_aside(root: Path) -> Path:
    """Move a snapshot that failed its check out of the way (jobs may still run in it)."""
    aside = root.with_name(f".{root.name}.stale-{time.time_ns()}")
    os.replace(root, aside)
    return aside


def read_only(root: Path) -> None:
    """Take the write bits off a snapshot's files: a job (of a user who is not root) cannot
    change the code later submits of the same content will run."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(stat.S_IMODE(mode) & ~0o222)
