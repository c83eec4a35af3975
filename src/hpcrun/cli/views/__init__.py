"""Every line the ``hpcrun`` command prints, and how; the commands hand their results here.

- ``output``: how text reaches the terminal (``Output``: JSON documents, or rich lines whose
  text is never read as markup and whose control characters are shown escaped; ``write``
  for plain blocks; one-line errors and notes on stderr) and the shared formats (state
  colours, ages, numbers, red-flag lines, a failed job's triage);
- ``commands``: what each command prints for its result;
- ``dashboard``: a watched job (plain lines or the live dashboard) and the sinks
  ``monitor.watch`` hands its snapshots to.

Nothing heavy is imported at module level: rich when something is drawn, and the result
types for type checkers only.
"""

from .commands import (
    cancelled,
    checks,
    compared,
    config,
    fetched,
    job_table,
    log,
    no_log_yet,
    percent_bar,
    reported,
    resubmitted,
    resumed,
    set_up,
    statuses,
    submitted,
    synced,
)
from .dashboard import (
    JsonSink,
    LinesSink,
    LiveSink,
    SweepLinesSink,
    progress_text,
    render_snapshot,
    snapshot_lines,
)
from .output import Escaped, Output, ago, error, flag_lines, note, state, triage, warn, write

__all__ = [
    "Escaped", "JsonSink", "LinesSink", "LiveSink", "Output", "SweepLinesSink", "ago",
    "cancelled", "checks", "compared", "config", "error", "fetched", "flag_lines", "job_table",
    "log", "no_log_yet", "note", "percent_bar", "progress_text", "render_snapshot", "reported",
    "resubmitted", "resumed", "set_up", "snapshot_lines", "state", "statuses", "submitted",
    "synced", "triage", "warn", "write",
]
