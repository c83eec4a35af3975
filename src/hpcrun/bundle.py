"""What a job runs: the files a bundle ships, their secret filter, hashes and git state.

``snapshot`` copies the selected files into a content-addressed cache, so a job that waits in a
queue runs the code as it was at submit time, whatever is edited afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from . import snapshots
from .config import BundleConfig
from .rundir import sha256_file
from .shell import CommandFailed, LocalRunner

#: never shipped unless a pattern in ``bundle.allow`` or ``--allow`` lets them through; matched
#: as .gitignore lines (pathspec), ignoring case (``ID_RSA`` and ``SERVER.PEM`` are the same
#: keys); an editor's or backup copy of a match (``.env~``, ``.id_rsa.swp``, ``#.env#``,
#: ``key.pem.bak``) is held back as the file itself
SECRET_PATTERNS = (
    ".env*", "*.env", "*.pem", "*.key", "*.p12", "*.pfx", "*.keystore", "*.jks", "*.ppk",
    "*.kdbx", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", "_netrc", ".pgpass",
    "*credentials*", "*secret*", "*token", "*token.json", "*.token", "*token.txt",
    "*token.yaml", "*token.yml", ".git-credentials",
    ".npmrc", ".pypirc", ".htpasswd", "kubeconfig*", "*service-account*.json",
    "*serviceaccount*.json", "*.tfstate", "*.tfstate.*", "*.tfvars", "rclone.conf",
    "*.keytab", "*.gpg", "*.asc", ".s3cfg", ".boto", ".my.cnf", "deploy_key*",
    ".aws/", ".ssh/", ".gnupg/", ".azure/", ".kube/", ".kaggle/", "secrets/", "credentials/",
    "keys/", "**/.config/gcloud/", "**/.config/gh/",
    "**/.docker/config.json", "**/.cache/huggingface/token",
)
#: a text file this small holding a private key's header is held back whatever its name
CONTENT_CHECK_BYTES = 1 << 20
PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_BACKUP_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".bak", ".orig", ".save", ".old", ".tmp")
MANIFEST_NAME = snapshots.MANIFEST_NAME


@dataclass(frozen=True)
class GitState:
    commit: str | None
    dirty: bool | None

    def as_dict(self) -> dict[str, object]:
        return {"commit": self.commit, "dirty": self.dirty}


@dataclass
class Bundle:
    project_dir: Path
    files: list[str]
    held_back: list[str]
    digests: dict[str, str]
    hash: str
    git: GitState
    path: Path | None = None  # the snapshot, once taken
    size: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    #: symlinks a snapshot carries to data outside it ({relative path: target}): a job
    #: opens its declared data at the same relative paths as in the project
    links: dict[str, str] = field(default_factory=dict)

    def link_data(self, links: dict[str, str]) -> None:
        """Add data links; they are part of what the snapshot is, so of its hash."""
        if not links:
            return
        self.links = dict(sorted({**self.links, **links}.items()))
        mixed = self.hash + json.dumps(self.links, sort_keys=True)
        self.hash = hashlib.sha256(mixed.encode()).hexdigest()


def git_state(path: Path, runner: LocalRunner | None = None) -> GitState:
    """Commit and dirty flag of the work tree holding ``path`` (None when not in git)."""
    runner = runner or LocalRunner()
    if runner.which("git") is None:
        return GitState(None, None)
    try:
        commit = runner.run(["git", "-C", str(path), "rev-parse", "HEAD"], timeout=10).stdout
        status = runner.run(["git", "-C", str(path), "status", "--porcelain",
                             "--untracked-files=no"], timeout=10).stdout
    except CommandFailed:
        return GitState(None, None)
    return GitState(commit.strip() or None, bool(status.strip()))


@functools.lru_cache(maxsize=64)
def _spec(patterns: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _any(rel: str, patterns: Iterable[str]) -> bool:
    """Whether ``rel`` matches ``patterns`` read as the lines of a .gitignore file."""
    return _spec(tuple(patterns)).match_file(rel)


def _original(rel: str) -> str:
    """The file an editor's swap file or a backup copy stands for: ``dir/.env`` for
    ``dir/.env.swp``, ``dir/#.env#``, ``dir/.env~`` or ``dir/.env.bak``."""
    folder, _, name = rel.rpartition("/")
    swap = False
    while True:
        if len(name) > 2 and name.startswith("#") and name.endswith("#"):
            name = name[1:-1]
            continue
        suffix = next((s for s in _BACKUP_SUFFIXES if name.endswith(s) and len(name) > len(s)),
                      None)
        if suffix is None:
            break
        swap = swap or suffix.startswith(".sw")
        name = name[:-len(suffix)]
    if swap and name.startswith(".") and len(name) > 1:  # vim's .NAME.swp for NAME
        name = name[1:]
    return f"{folder}/{name}" if folder else name


def is_secret(rel: str) -> bool:
    """Whether the secret filter holds ``rel`` (a project-relative path) back by its name."""
    lowered = rel.lower()
    return _any(lowered, SECRET_PATTERNS) or _any(_original(lowered), SECRET_PATTERNS)


def holds_private_key(path: Path) -> bool:
    """A small file whose text holds a PEM or OpenSSH private key's header."""
    try:
        if path.stat().st_size > CONTENT_CHECK_BYTES:
            return False
        return PRIVATE_KEY.search(path.read_bytes()) is not None
    except OSError:
        return False


def _through_symlink(project_dir: Path, rel: str) -> bool:
    """Whether any component of ``rel`` (a folder on the way, or the file) is a symbolic
    link: what lies behind one may be outside the project, so it is never shipped."""
    path = project_dir
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink():
            return True
    return False


def candidate_files(project_dir: Path, runner: LocalRunner | None = None) -> list[str]:
    """Every file of the project that git does not ignore (all files outside git)."""
    runner = runner or LocalRunner()
    if runner.which("git") is not None:
        try:
            out = runner.run(["git", "-C", str(project_dir), "ls-files", "-z", "--cached",
                              "--others", "--exclude-standard"], timeout=60).stdout
            # paths come relative to the project, also when it is a subfolder of the
            # repository: the repository's .gitignore files apply to it as well
            files = sorted({f for f in out.split("\0") if f})
            return [f for f in files if not _through_symlink(project_dir, f)
                    and (project_dir / f).is_file()]
        except CommandFailed:  # not in a git work tree
            pass
    found = []
    for folder, dirs, names in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                found.append(path.relative_to(project_dir).as_posix())
    return sorted(found)


def select(project_dir: Path, cfg: BundleConfig, allow: Iterable[str] = (),
           runner: LocalRunner | None = None) -> tuple[list[str], list[str]]:
    """(files to ship, files held back by the secret filter)."""
    allowed = [*cfg.allow, *allow]
    files, held = [], []
    for rel in candidate_files(project_dir, runner):
        if not _any(rel, cfg.include) or _any(rel, cfg.exclude):
            continue
        if (is_secret(rel) or holds_private_key(project_dir / rel)) \
                and not _any(rel, allowed):
            held.append(rel)
            continue
        files.append(rel)
    return files, held


def describe(project_dir: Path, cfg: BundleConfig, allow: Iterable[str] = (),
             runner: LocalRunner | None = None) -> Bundle:
    """Select and hash the bundle without copying anything."""
    project_dir = project_dir.resolve()
    files, held = select(project_dir, cfg, allow, runner)
    digests = {rel: sha256_file(project_dir / rel) for rel in files}
    total = hashlib.sha256()
    for rel in files:
        total.update(f"{rel}\0{digests[rel]}\n".encode())
    size = sum((project_dir / rel).stat().st_size for rel in files)
    return Bundle(project_dir, files, held, digests, total.hexdigest(),
                  git_state(project_dir, runner), size=size)


def manifest_text(bundle: Bundle) -> str:
    return "".join(f"{bundle.digests[rel]}  {rel}\n" for rel in bundle.files)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcrun" / "bundles"


def snapshot(bundle: Bundle, root: Path | None = None) -> Path:
    """Copy the bundle into ``root/<hash>`` (once: an existing snapshot is reused)."""
    root = root or cache_dir()
    target = root / bundle.hash[:24]
    if target.is_dir():  # used again only as it was made: a job may have written into it
        if not snapshots.problems(target, manifest_text(bundle), bundle.links):
            bundle.path = target
            return target
        snapshots.set_aside(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        for rel in bundle.files:
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle.project_dir / rel, dest)
            if sha256_file(dest) != bundle.digests[rel]:  # edited while we copied
                raise OSError(f"{rel} changed while the bundle was being taken; submit again")
        (staging / MANIFEST_NAME).write_text(manifest_text(bundle))
        snapshots.add_links(staging, bundle.links)
        snapshots.read_only(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / MANIFEST_NAME).is_file():  # not a concurrent identical snapshot
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bundle.path = target
    return target
