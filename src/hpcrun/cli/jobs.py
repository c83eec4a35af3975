"""The commands about jobs once they are submitted: ``status``, ``list``, ``logs``, ``cancel``
and ``monitor`` (and the watch behind ``submit --follow``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import EXIT_FAILED
from . import views
from .core import output, run_op
from .options import JobRef

if TYPE_CHECKING:
    from ..monitor import Event, Monitor, Snapshot, SweepSnapshot
    from ..ops import Triage
    from ..report import RunSummary
    from .views.dashboard import Ending


def status(
    ctx: typer.Context,
    jobs: Annotated[list[str] | None, typer.Argument(
        metavar="JOB", help="Job ids, unique prefixes, handles or 'latest' (default).")] = None,
) -> None:
    """Show the state of jobs (per stage, with the failure reason)."""
    from .. import ops

    found = run_op(lambda: ops.status(jobs or [], Path.cwd()))
    views.statuses(output(ctx), found)
    if any(v.status.state in ("FAILED", "CANCELLED") for v in found):
        raise typer.Exit(EXIT_FAILED)


def list_jobs(
    ctx: typer.Context,
    all_projects: Annotated[bool, typer.Option(
        "--all", "-a", help="Jobs of every project.")] = False,
    limit: Annotated[int, typer.Option(
        "--limit", "-n", metavar="N", help="At most this many rows (a sweep is one "
        "row).")] = 50,
) -> None:
    """List this project's jobs, newest first."""
    from .. import ops

    views.job_table(output(ctx), run_op(lambda: ops.list_jobs(Path.cwd(), all_projects, limit)))


def logs(
    job: JobRef = "latest",
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing until the job ends.")] = False,
    rank: Annotated[int | None, typer.Option(
        "--rank", "-r", metavar="N", help="Show one rank's trainer log instead of the job's "
        "output.")] = None,
    tail: Annotated[int, typer.Option(
        "--tail", "-n", metavar="N", help="Only the last N lines (0: all).")] = 0,
    raw: Annotated[bool, typer.Option(
        "--raw", help="Write the log as it is, escape sequences included (the default when "
        "the output is not a terminal).")] = False,
) -> None:
    """Print a job's output (or one rank's log).

    On a terminal its control characters (escape sequences that could clear the screen or
    write the clipboard) are shown escaped."""
    from .. import ops

    record, text = run_op(lambda: ops.log_file(job, rank, Path.cwd()))
    as_is = raw or not sys.stdout.isatty()
    if follow:
        def follow_all() -> None:  # the lines arrive (and may fail) while it iterates
            for line in ops.follow_logs(record, rank):
                views.log(line + "\n", as_is)

        run_op(follow_all)
    elif text is None:
        views.no_log_yet(record.id)
    else:
        lines = text.splitlines()
        views.log("\n".join(lines[-tail:] if tail else lines) + ("\n" if lines else ""), as_is)


def cancel(ctx: typer.Context, job: JobRef) -> None:
    """Stop a job (SIGTERM, then SIGKILL after a grace period).

    Cancelling twice is harmless."""
    from .. import ops

    views.cancelled(output(ctx), run_op(lambda: ops.cancel(job, Path.cwd())))


def monitor(
    ctx: typer.Context,
    job: JobRef = "latest",
    once: Annotated[bool, typer.Option(
        "--once", help="Print one snapshot and exit: 0 while the job is on its way or once it "
        "succeeded, 1 once it ended otherwise.")] = False,
    interval: Annotated[float | None, typer.Option(
        "--interval", min=0.1, metavar="SECONDS", help="Seconds between refreshes (default: "
        "the run's monitor.refresh_s).")] = None,
    notify: Annotated[str | None, typer.Option(
        "--notify", metavar="CMD", help="Run CMD (with sh -c) when the job ends or a new red "
        "flag appears; the event is in its environment: HPCRUN_EVENT (finished|flag), "
        "HPCRUN_JOB_ID, HPCRUN_JOB_HANDLE, HPCRUN_EXPERIMENT, HPCRUN_RUN_DIR, HPCRUN_STATE, "
        "HPCRUN_STAGE, HPCRUN_FLAG, HPCRUN_RANK, HPCRUN_MESSAGE.")] = None,
) -> None:
    """Watch a job live until it ends.

    State and scheduler reason, epoch progress with ETA, latest and best metrics, curves,
    memory per rank and red flags; then the run summary. The exit code reflects the job's
    outcome: 0 only when it succeeded, 1 when it failed, was cancelled or was preempted (and
    not requeued)."""
    raise typer.Exit(follow_job(output(ctx), job, once, interval, notify))


# --------------------------------------------------------------------------- the watches


def _outcome(snap: Snapshot | SweepSnapshot, once: bool = False) -> int:
    """The exit code of a watch: 0 for a job on its way (--once) or one that succeeded."""
    from ..job import is_terminal

    if once and not is_terminal(snap.state):
        return 0
    return 0 if snap.state == "SUCCEEDED" else EXIT_FAILED


def _ending(monitor: Monitor) -> Ending:
    """The run summary of a job the watch saw end and, when it failed, its triage (a log
    that cannot be read leaves the triage out; the summary is shown all the same)."""
    from .. import ops

    def ending(snap: Snapshot) -> tuple[RunSummary, Triage | None]:
        summary = monitor.summary()
        if snap.state != "FAILED" or snap.connection:
            return summary, None
        try:
            return summary, ops.triage(snap.view)
        except Exception:  # noqa: BLE001
            return summary, None
    return ending


def follow_job(out: views.Output, job: str | None, once: bool = False,
               interval: float | None = 1.0, notify: str | None = None) -> int:
    """Watch one job with the sink its output asks for; the exit code of its outcome."""
    from .. import ops
    from ..monitor import watch

    source = run_op(lambda: ops.open_monitor(job, Path.cwd()))
    ending = None if once else _ending(source)
    sink: views.JsonSink | views.LinesSink | views.LiveSink
    if out.json:
        sink = views.JsonSink(out, ending)
    elif once or not out.console.is_terminal:
        sink = views.LinesSink(ending)
    else:
        sink = views.LiveSink(out, _ending(source))

    def notice(event: Event) -> None:
        warning = ops.notify(notify, event)  # type: ignore[arg-type]
        if warning:
            views.warn(warning)

    snap = run_op(lambda: watch(source, sink, interval=interval or source.refresh_s, once=once,
                                notify=notice if notify else None))
    return _outcome(snap, once)


def follow_sweep(out: views.Output, group: str) -> int:
    """Watch a sweep until all its points have ended."""
    from .. import ops
    from ..monitor import SweepWatch, watch

    source = SweepWatch(lambda: ops.status([group], Path.cwd())[0])
    sink = views.JsonSink(out) if out.json else views.SweepLinesSink(out)
    return _outcome(run_op(lambda: watch(source, sink, interval=2.0)))
