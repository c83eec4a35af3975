"""Summaries and reports of one run directory: text for the terminal, PNGs and one HTML page.

``summarize`` reads a run directory (finished, failed or still running) through
:mod:`hpcrun.rundir` and returns a :class:`RunSummary`; ``format_summary`` turns it into plain
text lines; ``write_report`` adds per-stage plots and a self-contained ``report.html``;
``compare`` ranks several runs by one metric.

Which module owns what:

- :mod:`~hpcrun.report.summary`: the data model (``StageSummary``, ``RunSummary``,
  ``ReportFiles``) and the reading of a run directory (``summarize``, ``_load``).
- :mod:`~hpcrun.report.text`: plain-text lines and tables (``format_summary``,
  ``format_table``).
- :mod:`~hpcrun.report.plots`: the PNGs (``_Canvas``, the ``_plot_*`` functions, the system
  plot), the keys that keep an unchanged plot, and the worker processes (``_fan_out``); the
  pool's settings (``_workers``, ``_FORK_PLOTS``, ``_FORK_RUNS``, ``_MAX_WORKERS``) are read
  there, so that is where to patch them.
- :mod:`~hpcrun.report.html`: the page (``render_html``) and ``write_report``.
- :mod:`~hpcrun.report.comparison`: ``compare``, ``Comparison``, ``compare_metric``,
  ``default_mode``, ``COMPARE_METRICS``.

Reading is pure Python (CSV columns, plain lists): no pandas, no torch. matplotlib is imported
only to draw (its ``Figure`` objects, never pyplot, so a caller's backend is left alone), so
importing this package stays cheap for the CLI. A report's plots and a comparison's runs are
spread over forked worker processes when there are enough of them and more than one CPU.
"""

from hpcrun.errors import BadInput
from hpcrun.report.comparison import (
    COMPARE_METRICS,
    OVERLAY_LABELLED,
    Comparison,
    compare,
    compare_metric,
    default_mode,
)
from hpcrun.report.html import REPORT_DIR, REPORT_HTML, render_html, write_report
from hpcrun.report.plots import (
    _PLOTS,
    BAND_RANKS,
    PNG_SIGNATURE,
    _Canvas,
    _draw,
    _drawn_before,
    _fan_out,
    _plot_memory,
    system_series,
)
from hpcrun.report.summary import ReportFiles, RunSummary, StageSummary, _load, summarize
from hpcrun.report.text import format_summary, format_table

__all__ = [
    "BAND_RANKS", "COMPARE_METRICS", "OVERLAY_LABELLED", "PNG_SIGNATURE", "REPORT_DIR",
    "REPORT_HTML", "BadInput", "Comparison", "ReportFiles", "RunSummary", "StageSummary",
    "compare", "compare_metric", "default_mode", "format_summary", "format_table",
    "render_html", "summarize", "system_series", "write_report",
    # not API: what the tests reach into
    "_PLOTS", "_Canvas", "_draw", "_drawn_before", "_fan_out", "_load", "_plot_memory",
]
