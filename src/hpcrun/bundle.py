"""What a job runs: the code's git state (and, for remote backends, the bundle shipped)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .shell import CommandFailed, LocalRunner


@dataclass(frozen=True)
class GitState:
    commit: str | None
    dirty: bool | None

    def as_dict(self) -> dict[str, object]:
        return {"commit": self.commit, "dirty": self.dirty}


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
