"""What each command prints for its result (the watch's dashboard is in ``dashboard``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from ...formats import escape_controls
from .output import Output, ago, error, flag_lines, note, state, triage, write

if TYPE_CHECKING:
    from ...diagnose import Flag
    from ...ops import Check, FetchResult, JobView, ReportResult, SubmitResult
    from ...provision import SetupResult
    from ...report import Comparison, ReportFiles, RunSummary
    from ...sync import SyncResult


# --------------------------------------------------------------------------- config, submit


def config(out: Output, text: str) -> None:
    if out.json:
        import yaml

        out.emit(yaml.safe_load(text))
    else:
        write(text)


def submitted(out: Output, result: SubmitResult) -> None:
    """What was shipped and started, or under --dry-run the exact scripts and commands."""
    if out.json:
        out.emit(result.to_dict())
        return
    if result.dry_run:
        for plan in result.plans:
            write(f"# {plan.script_path}\n# command: {plan.command()}\n")
            write(plan.script)
            write("\n")
        return
    if result.setup is not None and result.setup.action == "installed":
        out.print(result.setup.line())
    bundle = result.bundle
    git = f"git {bundle.git.commit[:10]}" if bundle.git.commit else "not a git repository"
    dirty = " (dirty)" if bundle.git.dirty else ""
    out.print(f"bundle {bundle.hash[:12]}: {len(bundle.files)} files, {git}{dirty}")
    if bundle.held_back:
        out.print(f"held back (secret filter): {', '.join(bundle.held_back)}")
    if result.group:
        limit = result.group.info.parallel
        out.print(f"sweep {result.group.handle}: {len(result.jobs)} points"
                  + (f", {limit} at a time" if limit else ""))
    for job in result.jobs:
        point = job.info.sweep_point or {}
        label = " ".join(f"{k}={v}" for k, v in point.items())
        out.print(f"submitted {job.handle}  {job.run_dir}" + (f"  [{label}]" if label else ""))


def resumed(out: Output, view: JobView) -> None:
    if out.json:
        out.emit(view.to_dict())
    else:
        out.print(f"resumed {view.record.handle}  ", state(view.status.state),
                  f"  {view.record.run_dir}")


def resubmitted(out: Output, views: list[JobView]) -> None:
    if out.json:
        out.emit([v.to_dict() for v in views])
        return
    for child in views[0].children:
        out.print(f"  point {child.record.id}  ", state(child.status.state))


# --------------------------------------------------------------------------- sync, setup, doctor


@contextmanager
def percent_bar(out: Output, label: str) -> Iterator[Callable[[str], None] | None]:
    """A progress bar on a terminal, moved by the percentages in the lines a tool writes
    (rsync's --info=progress2); elsewhere (piped, --json) no bar: yields None."""
    if out.json or not out.console.is_terminal:
        yield None
        return
    import re

    from rich.progress import Progress

    with Progress(transient=True, console=out.console) as bar:
        task = bar.add_task(label, total=100)

        def progress(line: str) -> None:
            match = re.search(r"(\d+)%", line)
            if match:
                bar.update(task, completed=int(match.group(1)))

        yield progress


def setup_line(out: Output, setup: SetupResult | None) -> None:
    """A line when hpcrun was just installed on the remote (nothing when it was there)."""
    if setup is not None and setup.action == "installed":
        out.print(setup.line())


def synced(out: Output, result: SyncResult) -> None:
    if out.json:
        out.emit(result.to_dict())
        return
    setup_line(out, result.setup)  # type: ignore[arg-type]
    bundle, dry_run = result.bundle, result.dry_run
    verb = "would send" if dry_run else "sent"
    out.print(f"bundle {bundle.hash[:12]}: {len(bundle.files)} files "
              f"({bundle.size:,} bytes); {verb} {result.bytes_sent:,} bytes, "
              f"{result.files_transferred} file(s) changed -> {result.remote_code}")
    for line in result.changed:
        out.print(f"  {line}")
    if not dry_run:
        out.print(f"verified {result.verified} files against BUNDLE.sha256, frozen as "
                  f"{result.remote_bundle}" if result.verified else
                  f"bundle already frozen as {result.remote_bundle}")
    if bundle.held_back:
        out.print(f"held back (secret filter): {', '.join(bundle.held_back)}")
    data = result.data
    if data is not None and data.paths:
        out.print(f"data {', '.join(data.paths)}: {verb} {data.bytes_sent:,} bytes, "
                  f"{data.files_transferred} file(s) changed -> {data.remote_dir}")
        for line in data.changed:
            out.print(f"  {line}")


def set_up(out: Output, result: SetupResult) -> None:
    if out.json:
        out.emit(result.to_dict())
        return
    out.print(result.line())
    if result.torch:
        out.print(f"torch {result.torch}" + (f", CUDA {result.cuda}" if result.cuda else
                                              ", no CUDA"))


def checks(out: Output, found: list[Check]) -> None:
    if out.json:
        out.emit([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in found])
        return
    from rich.text import Text

    for check in found:
        mark = Text("ok  ", style="green") if check.ok else Text("--  ", style="yellow")
        out.print(mark, f"{check.name:<10} {check.detail}")


# --------------------------------------------------------------------------- status, list


def _view_row(view: JobView) -> list[Any]:
    record, status = view.record, view.status
    detail = status.detail
    progress = ""
    if detail.get("stage") and status.state == "RUNNING":
        progress = f"{detail['stage']} {detail.get('epoch', 0)}/{detail.get('epochs') or '-'}"
    if status.reason and status.state not in ("SUCCEEDED", "RUNNING"):
        progress = (progress + "  " if progress else "") + status.reason
    return [record.id, state(status.state), record.experiment, progress,
            ago(time.time() - record.submitted_at), record.run_dir]


#: a sweep's points shown under it in `list` (the rest are counted: `status SWEEP` shows all)
LIST_POINTS = 10


def job_table(out: Output, views: list[JobView]) -> None:
    """``hpcrun list``: one row per job, a sweep's first points under it."""
    if out.json:
        out.emit([v.to_dict() for v in views])
        return
    if not views:
        out.print("no jobs in this project yet (hpcrun submit v3; --all lists every project's)")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("JOB", "STATE", "EXPERIMENT", "PROGRESS", "AGE", "RUN DIR"):
        table.add_column(column, overflow="fold")
    for view in views:
        table.add_row(*_view_row(view))
        for child in view.children[:LIST_POINTS]:
            row = _view_row(child)
            row[0] = "  " + row[0]
            table.add_row(*row)
        more = len(view.children) - LIST_POINTS
        if more > 0:
            table.add_row("  ...", "", "", f"{more} more points (hpcrun status "
                          f"{view.record.id})", "", "")
    out.print(table)


def statuses(out: Output, views: list[JobView]) -> None:
    """``hpcrun status``: each job's state, reason, stages, sweep points and triage."""
    if out.json:
        out.emit([v.to_dict() for v in views])
        return
    for view in views:
        record, st = view.record, view.status
        out.print(f"{record.handle}  ", state(st.state), f"  {record.experiment}")
        if st.reason:
            out.print(f"  reason: {st.reason}")
        if st.detail.get("note"):
            out.print(f"  note: {st.detail['note']}")
        stages = st.detail.get("stages") or {}
        for stage, stage_state in stages.items():
            mark = ""
            if stage == st.detail.get("stage") and stage_state == "RUNNING":
                mark = f"  epoch {st.detail.get('epoch', 0)}/{st.detail.get('epochs') or '-'}"
            out.print(f"  stage {stage}: ", state(stage_state), mark)
        for child in view.children:
            out.print(f"  point {child.record.id}  ", state(child.status.state),
                      f"  {child.record.info.sweep_point}")
        out.print(f"  run dir: {record.run_dir}")
        if view.triage is not None:
            triage(view.triage)


def cancelled(out: Output, views: list[JobView]) -> None:
    if out.json:
        out.emit([v.to_dict() for v in views])
        return
    for view in views:
        out.print(f"{view.record.handle}  ", state(view.status.state))


# --------------------------------------------------------------------------- logs


def log(block: str, as_is: bool) -> None:
    """A piece of a job's log: as it is (piped, or --raw), else its control characters
    (escape sequences that could clear the screen or write the clipboard) escaped."""
    sys.stdout.write(block if as_is else escape_controls(block, "\n\t"))
    sys.stdout.flush()


def no_log_yet(job_id: str) -> None:
    typer.echo(f"(no output yet for job {job_id})", err=True)


# --------------------------------------------------------------------------- fetch, report


def _report_lines(files: ReportFiles) -> list[str]:
    """Where the report went: the page first (what to open), then the plots."""
    return ["Report:", f"  {files.html}", *(f"  {path}" for path in files.pngs)]


def _summary_text(summary: RunSummary, flags: list[Flag],
                  files: ReportFiles | None = None) -> str:
    from ...report import format_summary

    lines = [*format_summary(summary), "", *flag_lines(flags)]
    if files is not None:
        lines += ["", *_report_lines(files)]
    return "\n".join(lines) + "\n"


def fetched(out: Output, result: FetchResult, partial: bool) -> None:
    if out.json:
        out.emit(result.to_dict())
    else:
        verified = ("verified against MANIFEST.sha256" if result.verified
                    else f"job is {result.view.status.state}: not verified yet"
                    if not partial else "partial: not verified")
        write(f"{result.run_dir}  ({verified})\n")
        write(_summary_text(result.summary, result.flags, result.report))
    if result.report_error:
        error(result.report_error)


def reported(out: Output, result: ReportResult) -> None:
    if out.json:
        out.emit(result.to_dict())
        return
    files = result.files
    write(_summary_text(files.summary, files.flags, files))


def compared(out: Output, result: Comparison) -> None:
    if result.skipped:  # on stderr: the table on stdout stays the same either way
        note(f"skipped {len(result.skipped)} path(s) that are not run directories: "
             f"{', '.join(result.skipped)}")
    if out.json:
        out.emit(result.to_dict())
        return
    from ...report import format_table

    where = f" ({result.split})" if result.split else ""
    order = "highest" if result.mode == "max" else "lowest"
    rows = [{"#": str(rank), "run": row["run"], result.metric: row["value"],
             **{key: str(row[key]) for key in result.differing}}
            for rank, row in enumerate(result.rows, 1)]
    lines = [f"runs ranked by {result.metric}{where}, {order} first", *format_table(rows)]
    if not result.differing:
        lines.append("(the runs' configs do not differ)")
    if result.png:
        lines.append(f"overlay: {result.png}")
    write("\n".join(lines) + "\n")
