"""``hpcrun submit`` (with --resume and --resubmit-failed) and ``hpcrun config show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import views
from .core import output, run_op
from .options import Allow, Experiment, Overrides, ScriptArgs, remote_option


def config_show(ctx: typer.Context, name: Experiment, script_args: ScriptArgs = None,
                overrides: Overrides = ()) -> None:
    """Print the resolved config (extends, --set and ${VAR} applied)."""
    from .. import ops

    text = run_op(lambda: ops.config_show(name, overrides, Path.cwd(), script_args or ()))
    views.config(output(ctx), text)


def _no_script(first: str) -> None:
    from ..errors import BadInput

    raise BadInput(f"{first!r} is not a script or experiment: a -- with no script before it?",
                   hint="hpcrun submit path/to/train.py -- ARGS")


def submit(
    ctx: typer.Context,
    name: Experiment,
    script_args: ScriptArgs = None,
    overrides: Overrides = (),
    sweeps: Annotated[list[str], typer.Option(
        "--sweep", metavar="KEY=V1,V2,...", help="Sweep a key: KEY=V1,V2,... (repeatable; "
        "points are the cartesian product).")] = (),
    parallel: Annotated[int | None, typer.Option(
        "--parallel", "-P", metavar="N", help="Sweep points run at once (default: 1 locally, "
        "no limit on a scheduler).")] = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", "-b", metavar="BACKEND", help="local, slurm, pbs, pod (default: the "
        "config's `backend`).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the exact script and command; write and start "
        "nothing.")] = False,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Watch the job until it ends (like `hpcrun monitor`).")] = False,
    allow: Allow = (),
    resubmit_failed: Annotated[bool, typer.Option(
        "--resubmit-failed", help="NAME is a sweep job: run its failed points again, and "
        "only those.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="NAME is a job that failed, timed out, was cancelled or preempted: "
        "start it again in its run directory with the same scripts and bundle; finished "
        "stages are skipped, the others continue from last.pt.")] = False,
    remote: Annotated[str | None, remote_option(
        "Remote from configs/remotes.yaml where the job runs: the pod itself (--backend "
        "pod), or the login node of a SLURM or PBS cluster (--backend slurm|pbs; auto picks "
        "the scheduler that works there). hpcrun sets itself up there first when needed; not "
        "for --backend local.")] = None,
) -> None:
    """Render and start an experiment or your own script.

    A pipeline, or one job per sweep point: `hpcrun submit v3`, `hpcrun submit train.py --
    --lr 0.01`."""
    from .. import ops
    from .jobs import follow_job, follow_sweep

    out = output(ctx)
    if resume:
        view = run_op(lambda: ops.resume(name, Path.cwd()))
        views.resumed(out, view)
        if follow:
            raise typer.Exit(follow_job(out, view.record.id))
        return
    if resubmit_failed:
        views.resubmitted(out, run_op(lambda: ops.resubmit_failed(name, Path.cwd())))
        return
    if name.startswith("-"):
        run_op(lambda: _no_script(name))
    result = run_op(lambda: ops.submit(
        name, overrides=overrides, sweeps=sweeps, parallel=parallel, backend=backend,
        dry_run=dry_run, allow=allow, remote=remote, project_dir=Path.cwd(),
        script_args=script_args or (), notice=out.notices()))
    views.submitted(out, result)
    if follow and not dry_run:
        raise typer.Exit(follow_sweep(out, result.group.id) if result.group
                         else follow_job(out, result.jobs[0].id))
