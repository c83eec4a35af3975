"""Shipping a bundle to a remote with rsync over the remote's ssh connection.

``rsync_options`` is pure; ``push`` runs rsync with them and writes the bundle's manifest
(sha256 per file, git commit, dirty flag) beside the files on the remote, then freezes the
synced tree as ``bundles/<hash>`` so a job runs what was synced for it.

Data is not code: ``push_data`` ships a project's declared data paths into the remote's
``<workdir>/data/`` with rsync, incrementally and outside the bundle and its snapshots, so a
code change never copies a dataset again.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backends.agent_client import agent
from .bundle import MANIFEST_NAME, Bundle, manifest_text
from .errors import OperationFailed
from .shell import SshRunner


@dataclass
class SyncResult:
    bundle: Bundle
    remote_code: str
    remote_bundle: str
    dry_run: bool
    bytes_sent: int = 0
    files_transferred: int = 0
    changed: list[str] = field(default_factory=list)
    #: files checked against the manifest on the remote (0: the bundle was frozen before)
    verified: int = 0
    data: DataResult | None = None
    #: what setting hpcrun up on the remote did (provision.SetupResult), if it was checked
    setup: object | None = None

    def to_dict(self) -> dict[str, object]:
        return {"data": self.data.to_dict() if self.data else None,
                "setup": self.setup.to_dict() if self.setup else None,  # type: ignore[attr-defined]
                "hash": self.bundle.hash, "files": len(self.bundle.files),
                "bytes": self.bundle.size, "held_back": self.bundle.held_back,
                "git": self.bundle.git.as_dict(), "remote_code": self.remote_code,
                "remote_bundle": self.remote_bundle, "dry_run": self.dry_run,
                "bytes_sent": self.bytes_sent, "files_transferred": self.files_transferred,
                "changed": self.changed, "verified": self.verified}


@dataclass
class DataResult:
    paths: list[str]
    remote_dir: str
    bytes_sent: int = 0
    files_transferred: int = 0
    changed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"paths": self.paths, "remote_dir": self.remote_dir,
                "bytes_sent": self.bytes_sent, "files_transferred": self.files_transferred,
                "changed": self.changed}


def remote_paths(workdir: str, bundle_hash: str) -> tuple[str, str]:
    """(the synced tree, the frozen copy of this bundle) under the remote's workdir."""
    return posixpath.join(workdir, "code"), posixpath.join(workdir, "bundles", bundle_hash[:24])


def rsync_options(*, dry_run: bool = False) -> list[str]:
    """What one sync asks of rsync: the files listed on stdin (--files-from=-), stats to
    parse and progress to show; with ``dry_run`` the changes. (rsync cannot delete what a
    --files-from list does not name: ``sync --delete`` prunes through the agent.)"""
    options = ["--files-from=-", "--from0", "--stats", "--info=progress2"]
    if dry_run:
        options += ["--dry-run", "--itemize-changes"]
    return options


def parse_stats(text: str) -> tuple[int, int, list[str]]:
    """(bytes sent, regular files transferred, itemized changes) from rsync's output."""
    def number(label: str) -> int:
        match = re.search(rf"{label}:\s*([\d,.]+)", text)
        return int(float(match.group(1).replace(",", ""))) if match else 0

    changed = [line.split(" ", 1)[1] for line in text.splitlines()
               if re.match(r"^[<>ch.*][fdLDS][.+?cstpoguax]{9} ", line)]
    return number("Total bytes sent"), number("Number of regular files transferred"), changed


def push(bundle: Bundle, ssh: SshRunner, workdir: str, *, dry_run: bool = False,
         delete: bool = False,
         progress: Callable[[str], None] | None = None) -> SyncResult:
    code, frozen = remote_paths(workdir, bundle.hash)
    if not dry_run:
        ssh.run(["mkdir", "-p", code, posixpath.dirname(frozen)])
    argv = [*ssh.rsync_argv(*rsync_options(dry_run=dry_run)),
            str(bundle.project_dir).rstrip("/") + "/", f"{ssh.target}:{code}"]
    result = ssh.rsync(argv, input="\0".join(bundle.files) + "\0",
                       on_line=progress or (lambda line: None))
    sent, transferred, changed = parse_stats(result.stdout)
    if delete:  # what the bundle no longer has leaves the synced tree (frozen copies stay)
        changed += [f"deleting {rel}" for rel in prune(ssh, code, bundle, dry_run)]
    verified = 0
    if not dry_run:
        meta = {"hash": bundle.hash, "git": bundle.git.as_dict(), "files": len(bundle.files)}
        request = {"code": code, "target": frozen, "links": bundle.links,
                   "files": {MANIFEST_NAME: manifest_text(bundle),
                             "bundle.json": json.dumps(meta, indent=2) + "\n"}}
        answer = agent(ssh, "snapshot", request)
        bad = answer.get("mismatched") or []
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise OperationFailed(f"{ssh.target}:{code}/{bad[0]}{more} differs from the "
                                  "bundle after the transfer; nothing was frozen",
                                  hint="run hpcrun sync again (another sync may have run at "
                                  "the same time)")
        verified = int(answer.get("verified") or 0)
    return SyncResult(bundle, code, frozen, dry_run, sent, transferred, changed, verified)


def prune(ssh: SshRunner, code: str, bundle: Bundle, dry_run: bool = False) -> list[str]:
    """Remove from the synced tree ``code`` the files and links the bundle no longer has,
    then the folders left empty (one round trip to list, one to remove; links are removed,
    never followed). Returns what was (or, with ``dry_run``, would be) removed."""
    listed = ssh.run(["sh", "-c", 'cd "$1" 2>/dev/null || exit 0; '
                      'find . -mindepth 1 \\( -type f -o -type l \\) -print0', "sh", code])
    keep = {*bundle.files, MANIFEST_NAME, "bundle.json"}
    gone = sorted(rel for rel in (p.removeprefix("./") for p in listed.stdout.split("\0") if p)
                  if rel not in keep)
    if gone and not dry_run:
        ssh.run(["sh", "-c", 'cd "$1" && xargs -0 rm -f -- && '
                 'find . -mindepth 1 -type d -empty -delete', "sh", code],
                input="\0".join(f"./{rel}" for rel in gone))
    return gone


def push_data(paths: Sequence[str], project_dir: Path, ssh: SshRunner, data_dir: str, *,
              dry_run: bool = False, delete: bool = False,
              progress: Callable[[str], None] | None = None) -> DataResult:
    """rsync each declared data path (relative to the project) to ``data_dir/<path>`` on the
    remote. A path that is a symlink here is followed: naming it is the opt-in."""
    result = DataResult(list(paths), data_dir)
    if not paths:
        return result
    if not dry_run:
        parents = sorted({posixpath.dirname(posixpath.join(data_dir, p)) for p in paths})
        ssh.run(["mkdir", "-p", *parents])
    for rel in paths:
        source = (project_dir / rel).resolve()
        target = posixpath.join(data_dir, rel)
        options = ["--stats", "--info=progress2"]
        if dry_run:
            options += ["--dry-run", "--itemize-changes"]
        if source.is_dir():
            options += ["--delete"] if delete else []
            pair = [f"{source}/", f"{ssh.target}:{target}/"]
        else:
            pair = [str(source), f"{ssh.target}:{target}"]
        done = ssh.rsync([*ssh.rsync_argv(*options), *pair],
                         on_line=progress or (lambda line: None))
        sent, transferred, changed = parse_stats(done.stdout)
        result.bytes_sent += sent
        result.files_transferred += transferred
        result.changed += [f"{rel}: {line}" for line in changed]
    return result


def missing_remote_paths(ssh: SshRunner, paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that do not exist on the remote (one round trip)."""
    if not paths:
        return []
    check = 'for p do [ -e "$p" ] || printf "%s\\n" "$p"; done'
    return ssh.run(["sh", "-c", check, "sh", *paths]).stdout.splitlines()
