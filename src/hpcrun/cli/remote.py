"""The commands about machines: ``sync`` (ship the code and data to a remote), ``setup``
(install hpcrun there) and ``doctor`` (which tools work here or there)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import views
from .core import output, run_op
from .options import Allow, Remote, remote_option


def sync(
    ctx: typer.Context,
    remote: Remote,
    experiment: Annotated[str | None, typer.Option(
        "--config", "-c", metavar="NAME", help="Take the bundle rules (bundle:) and the data "
        "to ship (data.path, sync.data) from this experiment.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would change; send nothing.")] = False,
    delete: Annotated[bool, typer.Option(
        "--delete", help="Also delete remote files that are gone here.")] = False,
    allow: Allow = (),
) -> None:
    """Ship this project's code and data to a remote.

    rsync over ssh: the code bundle into a frozen snapshot per content, the data it declares
    into <workdir>/data once and incrementally; hpcrun is set up there first when it is
    missing or of another build."""
    from .. import ops

    out = output(ctx)
    with views.percent_bar(out, "syncing") as progress:
        result = run_op(lambda: ops.sync(remote, name=experiment, dry_run=dry_run,
                                         delete=delete, allow=allow, project_dir=Path.cwd(),
                                         progress=progress, notice=out.notices()))
    views.synced(out, result)


def setup(
    ctx: typer.Context,
    remote: Remote,
    offline: Annotated[bool, typer.Option(
        "--offline", help="The remote has no package index: download every wheel it lacks "
        "here, for its platform, and ship them.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Install again even when the remote already runs this "
        "build.")] = False,
) -> None:
    """Install this hpcrun on a remote.

    A wheel of it, in a venv under the remote's workdir made with --system-site-packages (the
    remote's own torch is used), with the train extra. sync and submit do this by themselves
    when the remote's hpcrun is missing or another build."""
    from .. import ops

    out = output(ctx)
    views.set_up(out, run_op(lambda: ops.setup(remote, offline=offline, force=force,
                                               project_dir=Path.cwd(), notice=out.notices())))


def doctor(
    ctx: typer.Context,
    remote: Annotated[str | None, remote_option(
        "Check a remote from configs/remotes.yaml instead: its python, hpcrun build, torch, "
        "CUDA, GPUs, NVML, scheduler commands and free disk in the workdir.")] = None,
) -> None:
    """Check which tools hpcrun can use here.

    ssh, rsync, sbatch, qsub, torch, CUDA, NVML."""
    from .. import ops

    views.checks(output(ctx), run_op(lambda: ops.doctor(remote=remote, project_dir=Path.cwd())))
