"""A run's summary as plain text for a terminal: aligned tables and one block per stage.

``format_summary`` turns a :class:`~hpcrun.report.summary.RunSummary` into lines without
colour codes; ``format_table`` aligns rows of dicts (text left, numbers right, 4 decimals),
and the HTML page formats its numbers with the same helpers (``_num``, ``_cell``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hpcrun.report.summary import RunSummary


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def format_table(rows: Sequence[dict[str, Any]], indent: str = "") -> list[str]:
    """Rows of dicts as aligned text: text left-aligned, numbers right-aligned (4 decimals)."""
    if not rows:
        return []
    columns = _table_columns(rows)
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), float) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if n else v.ljust(w)
                 for v, w, n in zip(values, widths, numeric, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(columns), *(line(r) for r in cells)]


def format_summary(summary: RunSummary) -> list[str]:
    """Plain-text lines (no colour codes) for a terminal."""
    lines = [f"Run {summary.run_id}  experiment {summary.experiment}  state {summary.state}",
             f"  {summary.path}"]
    if summary.message:
        lines.append(f"  message: {summary.message}")
    if not summary.stages:
        lines.append("  (no stage directories yet)")
    for stage in summary.stages:
        lines.append("")
        head = f"Stage {stage.name}"
        if stage.state:
            head += f" [{stage.state}]"
        if stage.trained:
            head += f"  {stage.epochs} epoch{'s' if stage.epochs != 1 else ''}"
        elif stage.mode == "eval_only":
            head += "  evaluation only"
        lines.append(head)
        if stage.trained:
            direction = "lowest" if stage.metric_mode == "min" else "highest"
            if stage.best_epoch is not None:
                lines.append(f"  best {stage.metric:<16} {_num(stage.best_value)} at epoch "
                             f"{stage.best_epoch} ({direction})")
            else:
                lines.append(f"  best {stage.metric:<16} - (no finished epoch yet)")
            pct = (f", {_num(stage.loss_decrease_pct, 1)}%"
                   if math.isfinite(stage.loss_decrease_pct) else "")
            lines.append(f"  train loss            {_num(stage.first_train_loss)} -> "
                         f"{_num(stage.last_train_loss)}  (decrease {_num(stage.loss_decrease)}"
                         f"{pct})")
            if stage.classifies:
                lines.append(f"  val separation        best {_num(stage.separation_best)}  "
                             f"last {_num(stage.separation_last)}")
            else:
                lines.append("  classifier            not trained (classification weight 0): "
                             "no separation or metrics")
            lines.append(f"  epoch time (median)   {_num(stage.median_epoch_time, 3)} s")
        memory = [f"host RSS {_num(stage.peak_host_rss_mb, 1)} MB"]
        if math.isfinite(stage.peak_gpu_mb):
            memory.append(f"GPU peak {_num(stage.peak_gpu_mb, 1)} MB")
        if math.isfinite(stage.peak_host_rss_mb) or math.isfinite(stage.peak_gpu_mb):
            lines.append(f"  peak memory           {'  '.join(memory)}")
        if stage.evaluation:
            lines.append("  evaluation:")
            lines += format_table(stage.evaluation, indent="    ")
    lines.append("")
    if summary.final_evaluation:
        lines.append(f"Final evaluation ({summary.final_evaluation_stage}):")
        lines += format_table(summary.final_evaluation, indent="  ")
    else:
        lines.append("Final evaluation: none yet")
    return lines
