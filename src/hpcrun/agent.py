"""``python -m hpcrun.agent``: what hpcrun runs ON a pod, so that one ssh round trip does one
whole operation. It reuses the local backend (a pod is "local" from its own point of view)
and speaks JSON on stdin/stdout. No torch, no pandas.

    prepare   {"files": {path: text}, "modes": {path: mode}, "start": script|null}
              -> {"pid": int|null}      write files atomically, then start a job script detached
    status    {"run_dirs": [...]}       -> {run_dir: {state, reason, exit_code, detail}}
    cancel    {"run_dir": path}         -> {state, reason, exit_code, detail}
    tail      {"run_dir": dir, "known": {path: [identity, offset]}}
              -> {path: {identity, reset, data}}  the watched files' bytes added since
                                        ``known`` (rundir.read_since): one round trip per
                                        refresh of a live view
    snapshot  {"code": dir, "target": dir, "files": {name: text}, "links": {path: target}}
              -> {"created": bool, "verified": int, "mismatched": [path]}
                                        write the bundle manifest into the synced tree, check
                                        every file against it, then freeze it as a
                                        content-addressed copy (nothing is frozen on a
                                        mismatch) that links to the declared data
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import rundir

# The backends (pydantic, Jinja2, psutil) are imported only by the commands that use them: a
# monitor refresh (``tail``) runs every few seconds and needs the run directory alone.


def _record(run_dir: str) -> Any:
    from .job import JobRecord

    return JobRecord(id=run_dir, backend="local", host="pod", experiment="", run_dir=run_dir,
                     project_dir=run_dir)


def _local() -> Any:
    from .backends.local import LocalBackend

    return LocalBackend()


def prepare(request: dict[str, Any]) -> dict[str, Any]:
    for path, text in request.get("files", {}).items():
        target = Path(path)
        rundir.write_atomic(target, text.encode())
        mode = request.get("modes", {}).get(path)
        if mode is not None:
            target.chmod(int(mode))
    for folder in request.get("dirs", []):
        Path(folder).mkdir(parents=True, exist_ok=True)
    pid = None
    if request.get("start"):
        script = request["start"]
        output = str(Path(script).parent / rundir.JOB_OUTPUT)
        pid = _local().runner.spawn_detached(["bash", script], cwd=str(Path(script).parent),
                                                   output=output)
    return {"pid": pid}


def status(request: dict[str, Any]) -> dict[str, Any]:
    records = [_record(run_dir) for run_dir in request["run_dirs"]]
    found = _local().status(records)
    return {r.run_dir: asdict(found[r.id]) for r in records}


def cancel(request: dict[str, Any]) -> dict[str, Any]:
    records = [_record(run_dir) for run_dir in request["run_dirs"]]
    found = _local().cancel(records)
    return {r.run_dir: asdict(found[r.id]) for r in records}


def snapshot(request: dict[str, Any]) -> dict[str, Any]:
    """Hard-link copy of the synced tree: rsync replaces files by renaming new ones into
    place, so the copy keeps the content of this sync whatever later syncs do."""
    from . import snapshots

    target = Path(request["target"])
    for path, text in request.get("files", {}).items():
        rundir.write_atomic(Path(request["code"]) / path, text.encode())
    manifest = request.get("files", {}).get(snapshots.MANIFEST_NAME, "")
    links = request.get("links") or {}
    if target.is_dir():  # used again only as it was frozen: a job may have written into it
        if not snapshots.problems(target, manifest, links):
            return {"created": False, "verified": 0, "mismatched": []}
        snapshots.set_aside(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    snapshots.link_tree(Path(request["code"]), staging, manifest)
    checked, mismatched = _verify(staging, manifest)
    if mismatched:  # an interrupted or concurrent sync: the next one completes it
        shutil.rmtree(staging, ignore_errors=True)
        return {"created": False, "verified": 0, "mismatched": mismatched}
    snapshots.add_links(staging, links)
    os.replace(staging, target)
    return {"created": True, "verified": checked, "mismatched": []}


def _verify(root: Path, manifest: str) -> tuple[int, list[str]]:
    """(files checked, those missing under ``root`` or differing from the manifest's
    digest). The frozen copy is hard links: what is checked is what jobs run."""
    from .snapshots import parse_manifest

    checked, bad = 0, []
    for rel, digest in parse_manifest(manifest).items():
        checked += 1
        try:
            if rundir.sha256_file(root / rel) != digest:
                bad.append(rel)
        except OSError:
            bad.append(rel)
    return checked, bad


def tail(request: dict[str, Any]) -> dict[str, Any]:
    return rundir.read_since(request["run_dir"], request.get("known") or {})


COMMANDS = {"prepare": prepare, "status": status, "cancel": cancel, "snapshot": snapshot,
            "tail": tail}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in COMMANDS:
        print(f"usage: python -m hpcrun.agent {{{'|'.join(COMMANDS)}}} < request.json",
              file=sys.stderr)
        return 2
    request = json.loads(sys.stdin.read() or "{}")
    json.dump(COMMANDS[args[0]](request), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
