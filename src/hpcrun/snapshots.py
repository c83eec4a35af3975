"""A frozen bundle (``<cache>/<hash>`` here, ``<workdir>/bundles/<hash>`` on a remote) is what
jobs run. A job does not work in it: its working folder is ``work/`` in its run directory, a
mirror of the snapshot (real folders, a link per file), so what a job writes there (a
tracker's ``./wandb/``, Lightning's ``./lightning_logs/``) stays with its run and comes back
with ``fetch``. Before a snapshot is used again it is checked against the bundle's manifest:
every file with its digest, and nothing else (a file a job changed through its link, or
wrote into the snapshot by its absolute path, would otherwise leak into every later
identical submit). A snapshot that fails is moved aside, never deleted (jobs may still run
in it), and taken again. Standard library only: the remote's agent uses it too.

``python -m hpcrun.snapshots SNAPSHOT RUN_ROOT`` (the job script's first step) makes or
completes the working folder and prints its path.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

from .rundir import WORK, sha256_file

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


def work_tree(snapshot: Path, run_root: Path) -> Path:
    """Make ``<run_root>/work`` a mirror of ``snapshot``: its folders as real folders, each of
    its files as an absolute link to the snapshot's file, its data links as the same links.
    Idempotent (a requeued job, the next stage): what is there and right is left; a file or
    folder the job made in place of a link is left too (it is the job's)."""
    snapshot = Path(snapshot).resolve()
    work = Path(run_root) / WORK
    work.mkdir(parents=True, exist_ok=True)
    for folder, dirs, files in os.walk(snapshot):
        dirs[:] = sorted(d for d in dirs if d != BYTECODE)
        here = Path(folder)
        dest = work / here.relative_to(snapshot)
        for name in dirs:
            source = here / name
            if source.is_symlink():  # a data link: the same link, never a copy
                _link(dest / name, os.readlink(source))
            else:
                (dest / name).mkdir(exist_ok=True)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in sorted(files):
            if here == snapshot and name in OWN_FILES:
                continue
            source = here / name
            _link(dest / name, os.readlink(source) if source.is_symlink() else str(source))
    return work


def _link(dest: Path, target: str) -> None:
    if dest.is_symlink():
        if os.readlink(dest) == target:
            return
        dest.unlink()
    elif os.path.lexists(dest):
        return  # the job's own file or folder
    os.symlink(target, dest)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hpcrun.snapshots SNAPSHOT RUN_ROOT", file=sys.stderr)
        return 2
    try:
        print(work_tree(Path(args[0]), Path(args[1])))
    except OSError as exc:
        print(f"hpcrun: cannot make the job's working folder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
