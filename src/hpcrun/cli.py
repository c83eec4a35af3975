"""The ``hpcrun`` command. Each command parses its options, calls one function of ``ops`` and
renders the result (rich tables, plain lines when not a terminal, or JSON with ``--json``).

Nothing heavy is imported at module level: ``hpcrun --help`` imports neither torch nor pandas.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .errors import EXIT_FAILED, HpcrunError
from .formats import escape_controls

app = typer.Typer(
    name="hpcrun",
    help="Submit, watch and fetch PyTorch training jobs on this machine, SLURM/PBS clusters "
    "and ssh GPU pods.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect experiment configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")


class Escaped:
    """A rich renderable whose text reaches the terminal as text: what rich renders from it
    (values from run directories, logs, configs, file names) has its control characters
    shown escaped; rich's own cursor controls and line breaks pass."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.segment import Segment

        for segment in console.render(self.inner, options):
            if segment.control:
                yield segment
            else:
                yield Segment(escape_controls(segment.text, "\n"), segment.style)


class Output:
    """Where results go: JSON on stdout, or human text through rich (which honours NO_COLOR
    and drops colour and live redraws when stdout is not a terminal). Human text is never
    read as markup, and its control characters are shown escaped."""

    def __init__(self, as_json: bool):
        self.json = as_json
        self._console = None

    @property
    def console(self) -> Any:
        if self._console is None:
            import os

            from rich.console import Console

            # piped or redirected: no width to fit, so a table's paths are not folded
            wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
            self._console = Console(highlight=False, soft_wrap=False, markup=False,
                                    emoji=False, width=1000 if wide else None)
        return self._console

    def emit(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, default=str, indent=None) + "\n")
        sys.stdout.flush()

    def print(self, *parts: Any, **kwargs: Any) -> None:
        """One line (or renderable) of strings and rich Texts, joined with no separator."""
        from rich.text import Text

        if all(isinstance(p, str | Text) for p in parts):
            parts = (Text.assemble(*parts),)
            kwargs.setdefault("soft_wrap", True)  # a line the terminal wraps, not rich
        self.console.print(*(Escaped(p) for p in parts), **kwargs)

    def write(self, text: str) -> None:
        _write(text)


def _write(text: str) -> None:
    """A block of plain text (summaries, triage, scripts), control characters escaped."""
    sys.stdout.write(escape_controls(text, "\n\t"))
    sys.stdout.flush()


def _out(ctx: typer.Context) -> Output:
    return ctx.obj if isinstance(ctx.obj, Output) else Output(False)


def _notices(out: Output) -> Callable[[str], None]:
    """Progress lines of a long operation as plain text (none under --json)."""
    def notice(line: str) -> None:
        if not out.json:
            out.print(line)
    return notice


def run_op(fn: Callable[[], Any]) -> Any:
    """Run a use case; expected errors become one line on stderr and the exit code."""
    try:
        return fn()
    except HpcrunError as exc:
        text = f"hpcrun: error: {exc.message}"
        if exc.hint:
            text += f" (hint: {exc.hint})"
        typer.echo(escape_controls(text), err=True)  # one line, whatever it quotes
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("hpcrun: interrupted", err=True)
        raise typer.Exit(130) from None


def _no_script(first: str) -> None:
    from .errors import BadInput

    raise BadInput(f"{first!r} is not a script or experiment: a -- with no script before it?",
                   hint="hpcrun submit path/to/train.py -- ARGS")


def _cwd() -> Path:
    return Path.cwd()


STATE_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow",
               "PREEMPTED": "magenta", "RUNNING": "cyan", "PENDING": "blue", "UNKNOWN": "dim"}


def _state(state: str) -> Any:
    from rich.text import Text

    return Text(state, style=STATE_STYLE.get(state, "white"))


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


@app.callback()
def main_callback(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (one JSON "
                                 "document per result)."),
) -> None:
    ctx.obj = Output(as_json)


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Experiment name (configs/NAME.yaml) or path, or "
                               "your own script (train.py), run as the job."),
    script_args: list[str] = typer.Argument(None, metavar="[-- SCRIPT ARGS]",
                                            help="After --: arguments for the script, "
                                            "passed unchanged."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: KEY=VALUE "
                                        "(repeatable)."),
) -> None:
    """Print the resolved config (extends, --set and ${VAR} applied)."""
    from . import ops

    text = run_op(lambda: ops.config_show(name, overrides, _cwd(), script_args or ()))
    out = _out(ctx)
    if out.json:
        import yaml

        out.emit(yaml.safe_load(text))
    else:
        _write(text)


# --------------------------------------------------------------------------- submit


@app.command()
def submit(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Experiment name (configs/NAME.yaml) or path, or "
                               "your own script (train.py), run as the job."),
    script_args: list[str] = typer.Argument(None, metavar="[-- SCRIPT ARGS]",
                                            help="After --: arguments for the script, "
                                            "passed unchanged."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: KEY=VALUE "
                                        "(repeatable)."),
    sweeps: list[str] = typer.Option([], "--sweep", help="Sweep a key: KEY=V1,V2,... "
                                     "(repeatable; points are the cartesian product)."),
    parallel: int | None = typer.Option(None, "--parallel", "-P", help="Sweep points run at "
                                        "once (default: 1 locally, no limit on a scheduler)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="local, slurm, pbs, "
                                       "pod (default: the config's `backend`)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact script and command; "
                                 "write and start nothing."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Watch the job until it ends "
                                "(like `hpcrun monitor`)."),
    allow: list[str] = typer.Option([], "--allow", help="Ship files the secret filter would "
                                    "hold back (glob, repeatable)."),
    resubmit_failed: bool = typer.Option(False, "--resubmit-failed", help="NAME is a sweep job: "
                                         "run its failed points again, and only those."),
    resume: bool = typer.Option(False, "--resume", help="NAME is a job that failed, timed out, "
                                "was cancelled or preempted: start it again in its run "
                                "directory with the same scripts and bundle; finished stages "
                                "are skipped, the others continue from last.pt."),
    remote: str | None = typer.Option(None, "--remote", "-r", help="Remote from "
                                      "configs/remotes.yaml where the job runs: the pod itself "
                                      "(--backend pod), or the login node of a SLURM or PBS "
                                      "cluster (--backend slurm|pbs; auto picks the scheduler "
                                      "that works there). hpcrun sets itself up there first "
                                      "when needed; not for --backend local."),
) -> None:
    """Render and start an experiment or your own script (a pipeline, or one job per sweep
    point): `hpcrun submit v3`, `hpcrun submit train.py -- --lr 0.01`."""
    from . import ops

    out = _out(ctx)
    if resume:
        view = run_op(lambda: ops.resume(name, _cwd()))
        if out.json:
            out.emit(view.to_dict())
        else:
            out.print(f"resumed {view.record.handle}  ", _state(view.status.state),
                      f"  {view.record.run_dir}")
        if follow:
            raise typer.Exit(_watch(out, view.record.id, once=False, interval=1.0))
        return
    if resubmit_failed:
        views = run_op(lambda: ops.resubmit_failed(name, _cwd()))
        if out.json:
            out.emit([v.to_dict() for v in views])
        else:
            for child in views[0].children:
                out.print(f"  point {child.record.id}  ", _state(child.status.state))
        return
    if name.startswith("-"):
        run_op(lambda: _no_script(name))
    notice = _notices(out)  # setting hpcrun up on a remote takes a while: say what it does
    result = run_op(lambda: ops.submit(name, overrides=overrides, sweeps=sweeps,
                                       parallel=parallel, backend=backend, dry_run=dry_run,
                                       allow=allow, remote=remote, project_dir=_cwd(),
                                       script_args=script_args or (), notice=notice))
    if out.json:
        out.emit(result.to_dict())
    elif dry_run:
        for plan in result.plans:
            _write(f"# {plan.script_path}\n# command: {plan.command()}\n")
            _write(plan.script)
            _write("\n")
    else:
        if result.setup is not None and result.setup.action == "installed":
            out.print(result.setup.line())
        bundle = result.bundle
        git = (f"git {bundle.git.commit[:10]}" if bundle.git.commit
               else "not a git repository")
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
    if follow and not dry_run:
        target = result.group or result.jobs[0]
        if result.group:
            code = _watch_group(out, target.id)
        else:
            code = _watch(out, target.id, once=False, interval=1.0)
        raise typer.Exit(code)


# --------------------------------------------------------------------------- sync


@app.command()
def sync(
    ctx: typer.Context,
    remote: str = typer.Option(..., "--remote", "-r", help="Remote from configs/remotes.yaml."),
    experiment: str | None = typer.Option(None, "--config", "-c", help="Take the bundle rules "
                                          "(bundle:) and the data to ship (data.path, "
                                          "sync.data) from this experiment."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would change; send "
                                 "nothing."),
    delete: bool = typer.Option(False, "--delete", help="Also delete remote files that are "
                                "gone here."),
    allow: list[str] = typer.Option([], "--allow", help="Ship files the secret filter would "
                                    "hold back (glob, repeatable)."),
) -> None:
    """Ship this project's code bundle and its declared data to a remote with rsync over ssh
    (code into a frozen snapshot per content, data into <workdir>/data once and
    incrementally), setting hpcrun up there first when it is missing or of another build."""
    from . import ops

    out = _out(ctx)
    notice = _notices(out)
    if out.json or not out.console.is_terminal:
        result = run_op(lambda: ops.sync(remote, name=experiment, dry_run=dry_run,
                                         delete=delete, allow=allow, project_dir=_cwd(),
                                         notice=notice))
    else:
        from rich.progress import Progress

        with Progress(transient=True, console=out.console) as bar:
            task = bar.add_task("syncing", total=100)

            def progress(line: str) -> None:
                match = re.search(r"(\d+)%", line)
                if match:
                    bar.update(task, completed=int(match.group(1)))

            result = run_op(lambda: ops.sync(remote, name=experiment, dry_run=dry_run,
                                             delete=delete, allow=allow, project_dir=_cwd(),
                                             progress=progress, notice=notice))
    if out.json:
        out.emit(result.to_dict())
        return
    if result.setup is not None and result.setup.action == "installed":
        out.print(result.setup.line())
    bundle = result.bundle
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


# --------------------------------------------------------------------------- setup


@app.command()
def setup(
    ctx: typer.Context,
    remote: str = typer.Option(..., "--remote", "-r", help="Remote from configs/remotes.yaml."),
    offline: bool = typer.Option(False, "--offline", help="The remote has no package index: "
                                 "download every wheel it lacks here, for its platform, and "
                                 "ship them."),
    force: bool = typer.Option(False, "--force", help="Install again even when the remote "
                               "already runs this build."),
) -> None:
    """Install this hpcrun on a remote: a wheel of it, in a venv under the remote's workdir
    made with --system-site-packages (the remote's own torch is used), with the train extra.
    sync and submit do this by themselves when the remote's hpcrun is missing or another
    build."""
    from . import ops

    out = _out(ctx)
    notice = _notices(out)
    result = run_op(lambda: ops.setup(remote, offline=offline, force=force, project_dir=_cwd(),
                                      notice=notice))
    if out.json:
        out.emit(result.to_dict())
        return
    out.print(result.line())
    if result.torch:
        out.print(f"torch {result.torch}" + (f", CUDA {result.cuda}" if result.cuda else
                                              ", no CUDA"))


# --------------------------------------------------------------------------- status, list


def _view_row(view: Any) -> list[str]:
    record, status = view.record, view.status
    detail = status.detail
    progress = ""
    if detail.get("stage") and status.state == "RUNNING":
        progress = f"{detail['stage']} {detail.get('epoch', 0)}/{detail.get('epochs') or '-'}"
    if status.reason and status.state not in ("SUCCEEDED", "RUNNING"):
        progress = (progress + "  " if progress else "") + status.reason
    return [record.id, _state(status.state), record.experiment, progress,
            _ago(time.time() - record.submitted_at), record.run_dir]


#: a sweep's points shown under it in `list` (the rest are counted: `status SWEEP` shows all)
LIST_POINTS = 10


def _table(out: Output, views: list[Any]) -> None:
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


@app.command()
def status(
    ctx: typer.Context,
    jobs: list[str] = typer.Argument(None, help="Job ids, unique prefixes, handles or "
                                     "'latest' (default)."),
) -> None:
    """Show the state of jobs (per stage, with the failure reason)."""
    from . import ops

    out = _out(ctx)
    views = run_op(lambda: ops.status(jobs or [], _cwd()))
    if out.json:
        out.emit([v.to_dict() for v in views])
        return
    for view in views:
        record, st = view.record, view.status
        out.print(f"{record.handle}  ", _state(st.state), f"  {record.experiment}")
        if st.reason:
            out.print(f"  reason: {st.reason}")
        if st.detail.get("note"):
            out.print(f"  note: {st.detail['note']}")
        stages = st.detail.get("stages") or {}
        for stage, state in stages.items():
            mark = ""
            if stage == st.detail.get("stage") and state == "RUNNING":
                mark = f"  epoch {st.detail.get('epoch', 0)}/{st.detail.get('epochs') or '-'}"
            out.print(f"  stage {stage}: ", _state(state), mark)
        for child in view.children:
            out.print(f"  point {child.record.id}  ", _state(child.status.state),
                      f"  {child.record.info.sweep_point}")
        out.print(f"  run dir: {record.run_dir}")
        if view.triage is not None:
            _print_triage(view.triage)
    bad = [v for v in views if v.status.state in ("FAILED", "CANCELLED")]
    if bad:
        raise typer.Exit(EXIT_FAILED)


def _print_triage(triage: Any) -> None:
    """A failed job's triage, as plain lines (log lines are the job's text: never markup)."""
    lines = [f"  cause: {triage.cause}"]
    if triage.signal:
        lines.append(f"  signal: {triage.signal}")
    if triage.failure:  # its exception is already in the cause
        lines.append("  failure.json: " + ", ".join(
            f"{k} {v}" for k, v in triage.failure.items() if k != "exception"))
    if triage.log_tail:
        lines.append("  last log lines:")
        lines.extend(f"    {line}" for line in triage.log_tail)
    _write("\n".join(lines) + "\n")
    sys.stdout.flush()


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    all_projects: bool = typer.Option(False, "--all", "-a", help="Jobs of every project."),
    limit: int = typer.Option(50, "--limit", "-n",
                              help="At most this many rows (a sweep is one row)."),
) -> None:
    """List this project's jobs, newest first."""
    from . import ops

    out = _out(ctx)
    views = run_op(lambda: ops.list_jobs(_cwd(), all_projects, limit))
    if out.json:
        out.emit([v.to_dict() for v in views])
    elif not views:
        out.print("no jobs in this project yet (hpcrun submit v3; --all lists every project's)")
    else:
        _table(out, views)


# --------------------------------------------------------------------------- logs, cancel


@app.command()
def logs(
    ctx: typer.Context,
    job: str = typer.Argument("latest", help="Job id, prefix, handle or 'latest'."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job "
                                "ends."),
    rank: int | None = typer.Option(None, "--rank", "-r", help="Show one rank's trainer log "
                                    "instead of the job's output."),
    tail: int = typer.Option(0, "--tail", "-n", help="Only the last N lines (0: all)."),
    raw: bool = typer.Option(False, "--raw", help="Write the log as it is, escape sequences "
                             "included (the default when the output is not a terminal)."),
) -> None:
    """Print a job's output (or one rank's log). On a terminal its control characters (escape
    sequences that could clear the screen or write the clipboard) are shown escaped."""
    from . import ops

    record, text = run_op(lambda: ops.log_file(job, rank, _cwd()))
    as_is = raw or not sys.stdout.isatty()

    def show(block: str) -> None:
        sys.stdout.write(block if as_is else escape_controls(block, "\n\t"))
        sys.stdout.flush()

    if follow:
        for line in run_op(lambda: ops.follow_logs(record, rank)):
            show(line + "\n")
        return
    if text is None:
        typer.echo(f"(no output yet for job {record.id})", err=True)
        return
    lines = text.splitlines()
    show("\n".join(lines[-tail:] if tail else lines) + ("\n" if lines else ""))


@app.command()
def cancel(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="Job id, prefix, handle or 'latest'."),
) -> None:
    """Stop a job (SIGTERM, then SIGKILL after a grace period). Cancelling twice is harmless."""
    from . import ops

    out = _out(ctx)
    views = run_op(lambda: ops.cancel(job, _cwd()))
    if out.json:
        out.emit([v.to_dict() for v in views])
        return
    for view in views:
        out.print(f"{view.record.handle}  ", _state(view.status.state))


# --------------------------------------------------------------------------- monitor


def _reason(snap: Any) -> str:
    """`` (why)`` for a job that is waiting or has ended badly, else nothing."""
    st = snap.view.status
    return f" ({st.reason})" if st.reason and st.state not in ("RUNNING", "SUCCEEDED") else ""


def _status_text(snap: Any) -> str:
    return snap.view.status.state + _reason(snap)


def _progress_text(snap: Any) -> str:
    from .job import is_terminal

    if not snap.epochs:  # an evaluation-only stage: no epochs to count
        state = (snap.stages or {}).get(snap.stage) or snap.state
        ended = is_terminal(snap.state) or is_terminal(state)
        return f"stage {snap.stage}: " + (state.lower() if ended else "evaluating")
    text = f"stage {snap.stage}: epoch {snap.epoch}/{snap.epochs}"
    if snap.eta_s is not None:
        text += f"  ETA {_ago(snap.eta_s)}"
    if snap.epoch_time_s is not None:
        text += f" (median epoch {snap.epoch_time_s:.3g}s)"
    return text


def _memory_cells(row: dict[str, str]) -> list[str]:
    def mb(key: str) -> str:
        value = _num(row.get(key, ""))
        return f"{value} MB" if value not in ("", "nan") else "-"

    used, total = _num(row.get("device_used_mb", "")), _num(row.get("device_total_mb", ""))
    gpu = f"{used}/{total} MB" if used not in ("", "nan") and total not in ("", "nan") else "-"
    return [row.get("rank", ""), row.get("host", ""), row.get("device", ""),
            mb("allocated_mb"), mb("peak_mb"), gpu, mb("host_rss_mb")]


_MEMORY_HEADER = ["rank", "host", "device", "allocated", "peak", "GPU used", "host RSS"]


def _snapshot_lines(snap: Any) -> list[str]:
    record = snap.view.record
    lines = [f"{record.handle}  {_status_text(snap)}  {record.experiment}  elapsed "
             f"{_ago(snap.elapsed_s)}"]
    if snap.connection:
        lines.append(f"  connection lost, retrying: {snap.connection}")
    if snap.stages:
        lines.append("  stages: " + "  ".join(f"{k}={v}" for k, v in snap.stages.items()))
    if snap.stage:
        lines.append("  " + _progress_text(snap))
    for label, row in (("latest", snap.latest), (f"best ({snap.best_column})", snap.best)):
        if row:
            cells = [f"{k}={_num(v)}" for k, v in row.items() if k != "Epoch Time"]
            lines.append(f"  {label}: " + "  ".join(cells))
    for row in snap.memory:
        cells = _memory_cells(row)
        sizes = [f"{name} {value}" for name, value in zip(_MEMORY_HEADER[3:], cells[3:],
                                                          strict=True) if value != "-"]
        lines.append(f"  memory rank {cells[0]} {cells[1]} {cells[2]}: " + ", ".join(sizes))
    if snap.flags:
        lines.extend("  " + line for line in _flag_lines(snap.flags))
    return lines


def _flag_lines(flags: list[Any]) -> list[str]:
    if not flags:
        return ["red flags: none"]
    lines = ["red flags:"]
    for f in flags:
        lines.append(f"  ! {f.code}" + (f" [{f.stage}]" if f.stage else "") + f": {f.message}")
        lines.append(f"      what to do: {f.advice}")
    return lines


def _num(text: str) -> str:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text)
    return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.4g}"


def _render_snapshot(snap: Any) -> Any:
    """The live dashboard: state and reason, progress with ETA, latest and best rows,
    sparklines, memory per rank, red flags."""
    import math

    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    from .job import is_terminal
    from .monitor import sparkline

    record, st = snap.view.record, snap.view.status
    parts: list[Any] = [Text.assemble(
        (record.handle, "bold"), "  ", _state(st.state), _reason(snap),
        f"  {record.experiment}  elapsed {_ago(snap.elapsed_s)}")]
    if snap.connection:
        parts.append(Text(f"connection lost, retrying: {snap.connection}", style="bold yellow"))
    if snap.stages:
        stages: list[Any] = ["stages:"]
        for name, state in snap.stages.items():
            stages += [f"  {name} ", _state(state)]
        parts.append(Text.assemble(*stages))
    if snap.stage:
        grid = Table.grid(padding=(0, 1))
        done = snap.epoch if snap.epochs else int(is_terminal(snap.state))
        grid.add_row(ProgressBar(total=max(snap.epochs, 1), completed=done, width=40),
                     Text(_progress_text(snap)))
        parts.append(grid)
    rows = [(label, row) for label, row in (("latest", snap.latest), ("best", snap.best)) if row]
    if rows:
        table = Table(box=None, padding=(0, 1))
        columns = [c for c in rows[0][1] if c != "Epoch Time"]
        table.add_column("")
        for column in columns:
            style = "bold" if column == snap.best_column else None
            table.add_column(column, justify="right", header_style=style)
        for label, row in rows:
            table.add_row(label, *(_num(row.get(c, "")) for c in columns))
        parts.append(table)
    if snap.series:
        curves = Table(box=None, padding=(0, 1))
        for column, justify in (("curve", "left"), ("", "left"), ("last", "right"),
                                ("min", "right"), ("max", "right")):
            curves.add_column(column, justify=justify)  # type: ignore[arg-type]
        for label, values in snap.series.items():
            finite = [v for v in values if math.isfinite(v)]
            curves.add_row(label, Text(sparkline(values), style="cyan"),
                           _num(str(values[-1])) if values else "-",
                           _num(str(min(finite))) if finite else "-",
                           _num(str(max(finite))) if finite else "-")
        parts.append(curves)
    if snap.memory:
        memory = Table(box=None, padding=(0, 1), title="memory", title_justify="left")
        for column in _MEMORY_HEADER:
            memory.add_column(column, justify="left" if column in ("host", "device")
                              else "right")
        for row in snap.memory:
            memory.add_row(*_memory_cells(row))
        parts.append(memory)
    style = "bold red" if snap.flags else "green"
    parts.append(Text("\n".join(_flag_lines(snap.flags)), style=style))
    return Group(*parts)


def _finish(out: Output, monitor: Any, snap: Any) -> None:
    """The final summary once the job has ended."""
    from .report import format_summary

    try:
        summary = monitor.summary()
    except Exception:  # noqa: BLE001 - a run with nothing readable still ends cleanly
        return
    _write("\n".join(format_summary(summary)) + "\n")
    _write("\n".join(_flag_lines(snap.flags)) + "\n")
    sys.stdout.flush()
    triage = _triage_of(snap)
    if triage is not None:
        _print_triage(triage)


def _triage_of(snap: Any) -> Any:
    from . import ops

    if snap.state != "FAILED" or snap.connection:
        return None
    try:
        return ops.triage(snap.view)
    except Exception:  # noqa: BLE001 - the summary is shown; a log that can't be read is no error
        return None


def _watch(out: Output, job: str | None, once: bool, interval: float | None,
           notify: str | None = None) -> int:
    from . import ops
    from .job import is_terminal

    monitor = run_op(lambda: ops.open_monitor(job, _cwd()))
    interval = interval or monitor.refresh_s
    failures = 0

    def refresh() -> Any:
        nonlocal failures
        snap = run_op(monitor.refresh)
        failures = failures + 1 if snap.connection else 0
        if notify:
            for event in monitor.events(snap):
                warning = ops.notify(notify, event)
                if warning:
                    sys.stderr.write(f"hpcrun: {warning}\n")
        return snap

    def pause() -> None:  # back off while the machine cannot be reached
        time.sleep(min(interval * 2 ** min(failures, 5), 30.0) if failures else interval)

    def done(snap: Any) -> bool:
        return once or (snap.connection is None and is_terminal(snap.state))

    snap = refresh()
    if out.json:
        while True:
            data = snap.to_dict()
            if done(snap) and not once:
                data["summary"] = run_op(monitor.summary).to_dict()
                triage = _triage_of(snap)
                if triage is not None:
                    data["triage"] = triage.to_dict()
            out.emit(data)
            if done(snap):
                break
            pause()
            snap = refresh()
    elif once or not out.console.is_terminal:
        last: Any = None
        while True:
            lines = _snapshot_lines(snap)
            key = (snap.state, lines[1:])  # not every tick of the elapsed time
            if key != last:
                _write("\n".join(lines) + "\n")
                sys.stdout.flush()
                last = key
            if done(snap):
                break
            pause()
            snap = refresh()
        if not once:
            _finish(out, monitor, snap)
    else:
        from rich.live import Live

        with Live(Escaped(_render_snapshot(snap)), console=out.console,
                  refresh_per_second=4) as live:
            while not done(snap):
                pause()
                snap = refresh()
                live.update(Escaped(_render_snapshot(snap)))
        _finish(out, monitor, snap)
    if once and not is_terminal(snap.state):
        return 0  # still on its way
    return 0 if snap.state == "SUCCEEDED" else EXIT_FAILED


def _watch_group(out: Output, group: str, interval: float = 2.0) -> int:
    from . import ops
    from .job import is_terminal

    last = ""
    while True:
        view = run_op(lambda: ops.status([group], _cwd()))[0]
        line = f"sweep {view.record.id}: {view.status.state} ({view.status.reason})"
        if out.json:
            out.emit(view.to_dict())
        elif line != last:
            out.print(line)
            last = line
        if is_terminal(view.status.state):
            return 0 if view.status.state == "SUCCEEDED" else EXIT_FAILED
        time.sleep(interval)


@app.command()
def monitor(
    ctx: typer.Context,
    job: str = typer.Argument("latest", help="Job id, prefix, handle or 'latest'."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit: 0 while "
                              "the job is on its way or once it succeeded, 1 once it ended "
                              "otherwise."),
    interval: float | None = typer.Option(
        None, "--interval", min=0.1, help="Seconds between refreshes (default: the run's "
        "monitor.refresh_s)."),
    notify: str | None = typer.Option(
        None, "--notify", metavar="CMD",
        help="Run CMD (with sh -c) when the job ends or a new red flag appears; the event is "
             "in its environment: HPCRUN_EVENT (finished|flag), HPCRUN_JOB_ID, "
             "HPCRUN_JOB_HANDLE, HPCRUN_EXPERIMENT, HPCRUN_RUN_DIR, HPCRUN_STATE, "
             "HPCRUN_STAGE, HPCRUN_FLAG, HPCRUN_RANK, HPCRUN_MESSAGE."),
) -> None:
    """Watch a job live until it ends: state and scheduler reason, epoch progress with ETA,
    latest and best metrics, curves, memory per rank and red flags; then the run summary.
    The exit code reflects the job's outcome: 0 only when it succeeded, 1 when it failed,
    was cancelled or was preempted (and not requeued)."""
    raise typer.Exit(_watch(_out(ctx), job, once, interval, notify))


# --------------------------------------------------------------------------- fetch, report


def _report_lines(files: Any) -> list[str]:
    """Where the report went: the page first (what to open), then the plots."""
    return ["Report:", f"  {files.html}", *(f"  {path}" for path in files.pngs)]


def _summary_text(summary: Any, flags: list[Any], files: Any | None = None) -> str:
    from .report import format_summary

    lines = [*format_summary(summary), "", *_flag_lines(flags)]
    if files is not None:
        lines += ["", *_report_lines(files)]
    return "\n".join(lines) + "\n"


@app.command()
def fetch(
    ctx: typer.Context,
    job: str = typer.Argument("latest", help="Job id, prefix, handle or 'latest'."),
    partial: bool = typer.Option(False, "--partial", help="Only the CSVs and status (a job "
                                 "still running); nothing is verified. The report is written "
                                 "all the same, from the epochs so far."),
) -> None:
    """Bring a job's run directory back (rsync for remote jobs), verify it against
    MANIFEST.sha256, print the run summary and red flags, and write the report (PNG plots and
    a self-contained HTML page into RUN/report, as `hpcrun report` does)."""
    from . import ops

    out = _out(ctx)
    result = run_op(lambda: ops.fetch(job, _cwd(), partial=partial))
    if out.json:
        out.emit(result.to_dict())
    else:
        verified = ("verified against MANIFEST.sha256" if result.verified
                    else f"job is {result.view.status.state}: not verified yet"
                    if not partial else "partial: not verified")
        _write(f"{result.run_dir}  ({verified})\n")
        _write(_summary_text(result.summary, result.flags, result.report))
        sys.stdout.flush()
    if result.report_error:
        typer.echo(escape_controls(f"hpcrun: error: {result.report_error}"), err=True)
        raise typer.Exit(EXIT_FAILED)


@app.command()
def report(
    ctx: typer.Context,
    run: str = typer.Argument("latest", help="A run directory, or a job id/prefix/handle/"
                              "'latest'."),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Where to write (default: "
                                        "RUN/report)."),
) -> None:
    """Print a run's summary and red flags, write PNG plots and a self-contained HTML report
    (which shows both), and print their paths."""
    from . import ops

    out = _out(ctx)
    result = run_op(lambda: ops.report(run, _cwd(), out_dir))
    if out.json:
        out.emit(result.to_dict())
        return
    files = result.files
    _write(_summary_text(files.summary, files.flags, files))


@app.command()
def compare(
    ctx: typer.Context,
    runs: list[str] = typer.Argument(..., help="Run directories, jobs, or a sweep job. A name "
                                     "that exists on disk is a path; paths that are not run "
                                     "directories (files, sweep folders) are skipped with a "
                                     "note."),
    metric: str = typer.Option("auroc", "--metric", "-m", help="What to rank by: an "
                               "evaluation metric (auroc, auprc, accuracy, sensitivity, "
                               "specificity, precision, recall, f1, mcc; from the final "
                               "evaluation, test split first, else val), loss (the lowest "
                               "validation loss of the last training stage), or any metric "
                               "the runs write: a 'Val <name>' column of training.csv (its "
                               "best value) or an evaluation.csv column (rmse, ...)."),
    mode: str | None = typer.Option(None, "--mode", help="max (higher is better) or min; "
                                    "default: min for loss, max otherwise."),
    out: Path | None = typer.Option(None, "--out", "-o", help="PNG of the runs' validation "
                                    "loss curves (default: beside the runs, or in the sweep's "
                                    "folder)."),
) -> None:
    """Rank runs by a metric, show the config keys that differ, and overlay their curves."""
    from . import ops

    output = _out(ctx)
    result = run_op(lambda: ops.compare(runs, _cwd(), metric, mode, out))
    if result.skipped:  # on stderr: the table on stdout stays the same either way
        typer.echo(escape_controls(f"hpcrun: note: skipped {len(result.skipped)} path(s) "
                                   f"that are not run directories: "
                                   f"{', '.join(result.skipped)}"), err=True)
    if output.json:
        output.emit(result.to_dict())
        return
    from .report import format_table

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
    _write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- doctor


@app.command()
def doctor(
    ctx: typer.Context,
    remote: str | None = typer.Option(None, "--remote", "-r", help="Check a remote from "
                                      "configs/remotes.yaml instead: its python, hpcrun "
                                      "build, torch, CUDA, GPUs, NVML, scheduler commands "
                                      "and free disk in the workdir."),
) -> None:
    """Check which tools hpcrun can use here: ssh, rsync, sbatch, qsub, torch, CUDA, NVML."""
    from . import ops

    out = _out(ctx)
    checks = run_op(lambda: ops.doctor(remote=remote, project_dir=_cwd()))
    if out.json:
        out.emit([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks])
        return
    from rich.text import Text

    for check in checks:
        mark = Text("ok  ", style="green") if check.ok else Text("--  ", style="yellow")
        out.print(mark, f"{check.name:<10} {check.detail}")


def _global_json_first(args: list[str]) -> list[str]:
    """``--json`` is global: accept it after the command too (``hpcrun status --json``)."""
    head, sep, tail = (args[:args.index("--")], ["--"], args[args.index("--") + 1:]) \
        if "--" in args else (args, [], [])
    if "--json" not in head:
        return args
    return ["--json", *(a for a in head if a != "--json"), *sep, *tail]


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors become one line and exit code 2."""
    args = _global_json_first(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args, prog_name="hpcrun", standalone_mode=False)
    except typer.Abort:
        typer.echo("hpcrun: interrupted", err=True)
        code = 130
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, ...
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "hpcrun"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message:  # empty when the help was shown for a bare command group
            typer.echo(f"hpcrun: error: {message} (hint: {command} --help)", err=True)
        code = getattr(exc, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
