"""A watched job on the terminal: its snapshot as plain lines or as the live dashboard, and
the sinks ``monitor.watch`` hands each snapshot to (JSON lines, plain lines, a live view)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .output import Escaped, Output, ago, flag_lines, num, state, triage, write

if TYPE_CHECKING:
    from ...monitor import Snapshot, SweepSnapshot
    from ...ops import Triage
    from ...report import RunSummary

    #: what a watch that ran to the job's end shows last: the run summary and the triage
    Ending = Callable[[Snapshot], tuple[RunSummary, Triage | None]]


def _reason(snap: Snapshot) -> str:
    """`` (why)`` for a job that is waiting or has ended badly, else nothing."""
    st = snap.view.status
    return f" ({st.reason})" if st.reason and st.state not in ("RUNNING", "SUCCEEDED") else ""


def progress_text(snap: Snapshot) -> str:
    from ...job import is_terminal

    if not snap.epochs:  # an evaluation-only stage: no epochs to count
        stage_state = (snap.stages or {}).get(snap.stage) or snap.state
        ended = is_terminal(snap.state) or is_terminal(stage_state)
        return f"stage {snap.stage}: " + (stage_state.lower() if ended else "evaluating")
    text = f"stage {snap.stage}: epoch {snap.epoch}/{snap.epochs}"
    if snap.eta_s is not None:
        text += f"  ETA {ago(snap.eta_s)}"
    if snap.epoch_time_s is not None:
        text += f" (median epoch {snap.epoch_time_s:.3g}s)"
    return text


_MEMORY_HEADER = ["rank", "host", "device", "allocated", "peak", "GPU used", "host RSS"]


def _memory_cells(row: dict[str, str]) -> list[str]:
    def mb(key: str) -> str:
        value = num(row.get(key, ""))
        return f"{value} MB" if value not in ("", "nan") else "-"

    used, total = num(row.get("device_used_mb", "")), num(row.get("device_total_mb", ""))
    gpu = f"{used}/{total} MB" if used not in ("", "nan") and total not in ("", "nan") else "-"
    return [row.get("rank", ""), row.get("host", ""), row.get("device", ""),
            mb("allocated_mb"), mb("peak_mb"), gpu, mb("host_rss_mb")]


def snapshot_lines(snap: Snapshot) -> list[str]:
    """A snapshot as plain lines (not a terminal, or --once)."""
    record = snap.view.record
    lines = [f"{record.handle}  {snap.view.status.state}{_reason(snap)}  {record.experiment}"
             f"  elapsed {ago(snap.elapsed_s)}"]
    if snap.connection:
        lines.append(f"  connection lost, retrying: {snap.connection}")
    if snap.stages:
        lines.append("  stages: " + "  ".join(f"{k}={v}" for k, v in snap.stages.items()))
    if snap.stage:
        lines.append("  " + progress_text(snap))
    for label, row in (("latest", snap.latest), (f"best ({snap.best_column})", snap.best)):
        if row:
            cells = [f"{k}={num(v)}" for k, v in row.items() if k != "Epoch Time"]
            lines.append(f"  {label}: " + "  ".join(cells))
    for row in snap.memory:
        cells = _memory_cells(row)
        sizes = [f"{name} {value}" for name, value in zip(_MEMORY_HEADER[3:], cells[3:],
                                                          strict=True) if value != "-"]
        lines.append(f"  memory rank {cells[0]} {cells[1]} {cells[2]}: " + ", ".join(sizes))
    if snap.flags:
        lines.extend("  " + line for line in flag_lines(snap.flags))
    return lines


def render_snapshot(snap: Snapshot) -> Any:
    """The live dashboard: state and reason, progress with ETA, latest and best rows,
    sparklines, memory per rank, red flags."""
    import math

    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    from ...job import is_terminal
    from ...monitor import sparkline

    record, st = snap.view.record, snap.view.status
    parts: list[Any] = [Text.assemble(
        (record.handle, "bold"), "  ", state(st.state), _reason(snap),
        f"  {record.experiment}  elapsed {ago(snap.elapsed_s)}")]
    if snap.connection:
        parts.append(Text(f"connection lost, retrying: {snap.connection}", style="bold yellow"))
    if snap.stages:
        stages: list[Any] = ["stages:"]
        for name, stage_state in snap.stages.items():
            stages += [f"  {name} ", state(stage_state)]
        parts.append(Text.assemble(*stages))
    if snap.stage:
        grid = Table.grid(padding=(0, 1))
        done = snap.epoch if snap.epochs else int(is_terminal(snap.state))
        grid.add_row(ProgressBar(total=max(snap.epochs, 1), completed=done, width=40),
                     Text(progress_text(snap)))
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
            table.add_row(label, *(num(row.get(c, "")) for c in columns))
        parts.append(table)
    if snap.series:
        curves = Table(box=None, padding=(0, 1))
        for column, justify in (("curve", "left"), ("", "left"), ("last", "right"),
                                ("min", "right"), ("max", "right")):
            curves.add_column(column, justify=justify)  # type: ignore[arg-type]
        for label, values in snap.series.items():
            finite = [v for v in values if math.isfinite(v)]
            curves.add_row(label, Text(sparkline(values), style="cyan"),
                           num(str(values[-1])) if values else "-",
                           num(str(min(finite))) if finite else "-",
                           num(str(max(finite))) if finite else "-")
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
    parts.append(Text("\n".join(flag_lines(snap.flags)), style=style))
    return Group(*parts)


def _ended(snap: Snapshot, ending: Ending) -> None:
    """The run summary, its red flags and a failed job's triage once the watch has ended; a
    run with nothing readable ends without them."""
    from ...report import format_summary

    try:
        summary, found = ending(snap)
    except Exception:  # noqa: BLE001 - the dashboard was shown; a run that can't be read is no error
        return
    write("\n".join(format_summary(summary)) + "\n")
    write("\n".join(flag_lines(snap.flags)) + "\n")
    if found is not None:
        triage(found)


class JsonSink:
    """--json: one document per refresh (a job's snapshot, or a sweep's view); the last one
    of a watch that ran to the job's end also carries the run summary and the triage."""

    def __init__(self, out: Output, ending: Ending | None = None):
        self.out, self.ending = out, ending

    def show(self, snap: Snapshot | SweepSnapshot) -> None:
        self.out.emit(snap.to_dict())

    def end(self, snap: Snapshot | SweepSnapshot) -> None:
        data = snap.to_dict()
        if self.ending is not None:
            summary, found = self.ending(snap)  # type: ignore[arg-type]
            data["summary"] = summary.to_dict()
            if found is not None:
                data["triage"] = found.to_dict()
        self.out.emit(data)

    def close(self) -> None:
        pass


class LinesSink:
    """Plain lines, printed again only when something other than the elapsed time changed;
    then, for a watch that ran to the job's end, the summary."""

    def __init__(self, ending: Ending | None = None):
        self.ending = ending
        self._last: Any = None

    def show(self, snap: Snapshot) -> None:
        lines = snapshot_lines(snap)
        key = (snap.state, lines[1:])  # not every tick of the elapsed time
        if key != self._last:
            write("\n".join(lines) + "\n")
            self._last = key

    def end(self, snap: Snapshot) -> None:
        self.show(snap)
        if self.ending is not None:
            _ended(snap, self.ending)

    def close(self) -> None:
        pass


class LiveSink:
    """The dashboard redrawn in place on a terminal; the summary below it once it ends."""

    def __init__(self, out: Output, ending: Ending):
        self.out, self.ending = out, ending
        self._live: Any = None

    def show(self, snap: Snapshot) -> None:
        if self._live is None:
            from rich.live import Live

            self._live = Live(Escaped(render_snapshot(snap)), console=self.out.console,
                              refresh_per_second=4)
            self._live.start()
        else:
            self._live.update(Escaped(render_snapshot(snap)))

    def end(self, snap: Snapshot) -> None:
        self.show(snap)
        self.close()
        _ended(snap, self.ending)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class SweepLinesSink:
    """A sweep's state as one line, printed when it changes."""

    def __init__(self, out: Output):
        self.out = out
        self._last = ""

    def show(self, snap: SweepSnapshot) -> None:
        status = snap.view.status
        line = f"sweep {snap.view.record.id}: {status.state} ({status.reason})"
        if line != self._last:
            self.out.print(line)
            self._last = line

    end = show

    def close(self) -> None:
        pass
