"""The client of ``hpcrun.agent``: one ssh round trip runs ``python -m hpcrun.agent COMMAND``
on a remote (a pod, a cluster's login node) with a JSON request on stdin and reads its JSON
answer. The remote's files, job states and cancels (backends) and its snapshots (sync) go
through it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..shell import SshRunner


def agent(ssh: SshRunner, command: str, request: dict, python: str | None = None) -> dict:
    """One call of ``python -m hpcrun.agent COMMAND`` on the remote, JSON in and out."""
    python = python or ssh.remote.interpreter
    result = ssh.run([python, "-m", "hpcrun.agent", command], input=json.dumps(request),
                     timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}
