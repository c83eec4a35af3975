"""How text reaches the terminal: JSON documents, plain blocks, rich lines whose text is never
read as markup and whose control characters are shown escaped; the styles and small formats
every view shares."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from ...formats import escape_controls

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.text import Text

    from ...diagnose import Flag
    from ...ops import Triage


class Escaped:
    """A rich renderable whose text reaches the terminal as text: what rich renders from it
    (values from run directories, logs, configs, file names) has its control characters
    shown escaped; rich's own cursor controls and line breaks pass."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
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
        self._console: Console | None = None

    @property
    def console(self) -> Console:
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

    def notices(self) -> Callable[[str], None]:
        """Progress lines of a long operation as plain text (none under --json)."""
        def notice(line: str) -> None:
            if not self.json:
                self.print(line)
        return notice


def write(text: str) -> None:
    """A block of plain text (summaries, triage, scripts), control characters escaped."""
    sys.stdout.write(escape_controls(text, "\n\t"))
    sys.stdout.flush()


def error(text: str) -> None:
    """``hpcrun: error: ...`` as one line on stderr, whatever it quotes."""
    typer.echo(escape_controls(f"hpcrun: error: {text}"), err=True)


def warn(text: str) -> None:
    """``hpcrun: ...``: something went wrong beside the command's work, which goes on."""
    typer.echo(escape_controls(f"hpcrun: {text}"), err=True)


def note(text: str) -> None:
    """A remark on stderr, so that what goes to stdout stays the same either way."""
    typer.echo(escape_controls(f"hpcrun: note: {text}"), err=True)


STATE_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow",
               "PREEMPTED": "magenta", "RUNNING": "cyan", "PENDING": "blue", "UNKNOWN": "dim"}


def state(name: str) -> Text:
    from rich.text import Text

    return Text(name, style=STATE_STYLE.get(name, "white"))


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def num(text: str) -> str:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text)
    return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.4g}"


def flag_lines(flags: list[Flag]) -> list[str]:
    if not flags:
        return ["red flags: none"]
    lines = ["red flags:"]
    for f in flags:
        lines.append(f"  ! {f.code}" + (f" [{f.stage}]" if f.stage else "") + f": {f.message}")
        lines.append(f"      what to do: {f.advice}")
    return lines



def triage(found: Triage) -> None:
    """A failed job's triage, as plain lines (log lines are the job's text: never markup)."""
    lines = [f"  cause: {found.cause}"]
    if found.signal:
        lines.append(f"  signal: {found.signal}")
    if found.failure:  # its exception is already in the cause
        lines.append("  failure.json: " + ", ".join(
            f"{k} {v}" for k, v in found.failure.items() if k != "exception"))
    if found.log_tail:
        lines.append("  last log lines:")
        lines.extend(f"    {line}" for line in found.log_tail)
    write("\n".join(lines) + "\n")
