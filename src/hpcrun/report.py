"""Summaries and reports of one run directory: text for the terminal, PNGs and one HTML page.

``summarize`` reads a run directory (finished, failed or still running) through
:mod:`hpcrun.rundir` and returns a :class:`RunSummary`; ``format_summary`` turns it into plain
text lines; ``write_report`` adds per-stage plots and a self-contained ``report.html``.

Reading is pure Python (CSV columns, plain lists): no pandas, no torch. matplotlib is imported
only to draw (its ``Figure`` objects, never pyplot, so a caller's backend is left alone), so
importing this module stays cheap for the CLI. A report's plots and a comparison's runs are
spread over forked worker processes when there are enough of them and more than one CPU.
"""

from __future__ import annotations

import base64
import csv
import difflib
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import signal
import statistics
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcrun import __version__, rundir
from hpcrun.errors import BadInput
from hpcrun.selection import VAL_LOSS, RunConfig, Selection, read_config, read_selections

REPORT_DIR = rundir.REPORT
REPORT_HTML = "report.html"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: files whose presence makes a directory of the run a stage directory
_STAGE_FILES = (rundir.TRAINING, rundir.LOSS_COMPONENTS, rundir.GRADIENT_STATS,
                rundir.PROBABILITY_STATS, rundir.GPU_MEMORY, rundir.EVALUATION,
                rundir.PREDICTIONS, rundir.CHECKPOINTS)


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class StageSummary:
    """One pipeline stage. Floats are ``nan`` where the run has no data for them."""

    name: str
    state: str | None = None
    #: the stage's run mode from config.yaml (``train_only``, ``eval_only``, ...), if known
    mode: str | None = None
    #: whether the stage trains (has a training.csv)
    trained: bool = False
    epochs: int = 0
    #: training.csv column the best epoch is chosen on, e.g. ``Val AUROC``
    metric: str | None = None
    metric_mode: str = "min"
    best_epoch: int | None = None
    best_value: float = math.nan
    first_train_loss: float = math.nan
    last_train_loss: float = math.nan
    #: first minus last Train Loss (positive when the loss went down) and that as % of first
    loss_decrease: float = math.nan
    loss_decrease_pct: float = math.nan
    #: validation separation (pos_mean - neg_mean) at the best and at the last epoch
    separation_best: float = math.nan
    separation_last: float = math.nan
    median_epoch_time: float = math.nan
    peak_host_rss_mb: float = math.nan
    peak_gpu_mb: float = math.nan
    #: rows of evaluation.csv: ``{"split": str, "<metric>": float, ...}``
    evaluation: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class RunSummary:
    path: str
    run_id: str
    experiment: str
    state: str
    message: str | None = None
    stages: tuple[StageSummary, ...] = ()
    #: the evaluation table of the last stage that has one, and that stage's name
    final_evaluation: tuple[dict[str, Any], ...] = ()
    final_evaluation_stage: str | None = None

    def stage(self, name: str) -> StageSummary:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data: tuples become lists, NaN and infinities become ``None``."""
        return _json_safe(asdict(self))


@dataclass
class ReportFiles:
    pngs: list[Path]
    html: Path
    #: what the page shows: the run's summary and red flags
    summary: RunSummary | None = None
    flags: list[Any] = field(default_factory=list)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- reading


class _StageData:
    """The CSVs of one stage directory, each read once and only when asked for."""

    def __init__(self, directory: Path):
        self.dir = directory

    def _read(self, name: str) -> rundir.Table:
        try:
            return rundir.read_table(self.dir / name)
        except (OSError, UnicodeDecodeError, ValueError, csv.Error):
            return rundir.Table([], [])

    @functools.cached_property
    def has_training(self) -> bool:
        return (self.dir / rundir.TRAINING).is_file()

    @functools.cached_property
    def training(self) -> rundir.Table:
        return self._read(rundir.TRAINING)

    @functools.cached_property
    def loss_components(self) -> rundir.Table:
        return self._read(rundir.LOSS_COMPONENTS)

    @functools.cached_property
    def gradients(self) -> rundir.Table:
        return self._read(rundir.GRADIENT_STATS)

    @functools.cached_property
    def probabilities(self) -> rundir.Table:
        return self._read(rundir.PROBABILITY_STATS)

    @functools.cached_property
    def memory(self) -> rundir.Table:
        return self._read(rundir.GPU_MEMORY)

    @functools.cached_property
    def evaluation(self) -> rundir.Table:
        return self._read(rundir.EVALUATION)


def _epoch(text: str | None) -> int | None:
    value = rundir.to_float(text)
    return int(value) if math.isfinite(value) else None


def _epochs(table: rundir.Table, column: str = "Epoch") -> list[int | None]:
    return [_epoch(text) for text in table.column(column)]


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _max(values: Iterable[float]) -> float:
    finite = _finite(values)
    return max(finite) if finite else math.nan


def _phase_series(table: rundir.Table, phase: str,
                  column: str) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for epoch_text, row_phase, text in zip(table.column("epoch"), table.column("phase"),
                                           table.column(column), strict=True):
        if row_phase == phase:
            epoch = _epoch(epoch_text)
            if epoch is not None:
                epochs.append(epoch)
                values.append(rundir.to_float(text))
    return epochs, values


def _evaluation_table(rows: Iterable[dict[str, str]]) -> tuple[dict[str, Any], ...]:
    table = []
    for row in rows:
        entry: dict[str, Any] = {"split": row.get("split") or ""}
        for key, text in row.items():
            if key is not None and key != "split":
                entry[key] = rundir.to_float(text)
        table.append(entry)
    return tuple(table)


def _summarize_stage(name: str, data: _StageData, state: str | None,
                     selection: Selection | None, detail: bool = True) -> StageSummary:
    """``detail=False`` stops at the best epoch and the evaluation table (separation and
    memory CSVs are not read, losses and times not converted): what a comparison of
    hundreds of runs ranks on, at a fraction of the reading."""
    rows = data.training
    header = set(rows.header)
    chosen = selection or Selection()
    if chosen.column not in header:  # metric not logged (or no config): lowest Val Loss
        chosen = Selection(stage_mode=chosen.stage_mode)
    epochs = _epochs(rows)
    best_epoch, best_value = chosen.best(epochs, rows.floats(chosen.column))
    ranked = StageSummary(
        name=name, state=state, mode=chosen.stage_mode, trained=data.has_training,
        epochs=len(rows), metric=chosen.column if data.has_training else None,
        metric_mode=chosen.mode, best_epoch=best_epoch, best_value=best_value,
        evaluation=_evaluation_table(data.evaluation.rows()))
    if not detail:
        return ranked

    losses = rows.floats("Train Loss")
    first = losses[0] if losses else math.nan
    last = losses[-1] if losses else math.nan
    decrease = first - last
    pct = 100.0 * decrease / first if math.isfinite(decrease) and first != 0 else math.nan

    sep_epochs, seps = _phase_series(data.probabilities, "val", "separation")
    by_epoch = dict(zip(sep_epochs, seps, strict=True))
    sep_best = by_epoch.get(best_epoch, math.nan) if best_epoch is not None else math.nan
    last_epoch = next((e for e in reversed(epochs) if e is not None), None)
    if last_epoch is not None and last_epoch in by_epoch:
        sep_last = by_epoch[last_epoch]
    else:
        sep_last = seps[-1] if seps else math.nan

    times = _finite(rows.floats("Epoch Time"))
    return replace(
        ranked, first_train_loss=first, last_train_loss=last, loss_decrease=decrease,
        loss_decrease_pct=pct, separation_best=sep_best, separation_last=sep_last,
        median_epoch_time=statistics.median(times) if times else math.nan,
        peak_host_rss_mb=_max(data.memory.floats("host_rss_mb")),
        peak_gpu_mb=_max(data.memory.floats("peak_mb")))


def _stage_names(run: rundir.RunDir, status: rundir.Status, metadata: rundir.Metadata,
                 selections: dict[str, Selection]) -> list[str]:
    """Stage directories in pipeline order; other directories (e.g. report/) are left out."""
    known = [*status.stages, *metadata.pipeline, *selections]
    order = {name: i for i, name in reversed(list(enumerate(known)))}
    names = []
    for position, name in enumerate(run.stages()):
        directory = run.stage(name)
        if name in order or any((directory / f).exists() for f in _STAGE_FILES):
            names.append((order.get(name, len(order) + position), name))
    return [name for _, name in sorted(names)]


def _load(run_dir: Path, config: RunConfig | None = None, detail: bool = True
          ) -> tuple[RunSummary, dict[str, _StageData]]:
    run = rundir.RunDir(run_dir)
    status = rundir.read_status(run.status)
    metadata = rundir.read_metadata(run.metadata)
    selections = read_selections(run, config)
    stage_states = status.stages
    data: dict[str, _StageData] = {}
    stages = []
    for name in _stage_names(run, status, metadata, selections):
        data[name] = _StageData(run.stage(name))
        state = stage_states.get(name)
        stages.append(_summarize_stage(name, data[name], None if state is None else str(state),
                                       selections.get(name), detail))
    final = next((s for s in reversed(stages) if s.evaluation), None)
    summary = RunSummary(
        path=str(run.root),
        run_id=status.run_id or metadata.run_id or run.root.resolve().name,
        experiment=status.experiment or metadata.experiment or run.root.resolve().parent.name,
        state=status.state or metadata.state or "UNKNOWN",
        message=status.message,
        stages=tuple(stages),
        final_evaluation=final.evaluation if final else (),
        final_evaluation_stage=final.name if final else None,
    )
    return summary, data


def summarize(run_dir: Path) -> RunSummary:
    """Summarise one run directory; copes with missing files and runs still in progress."""
    return _load(Path(run_dir))[0]


# --------------------------------------------------------------------------- text


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
            lines.append(f"  val separation        best {_num(stage.separation_best)}  last "
                         f"{_num(stage.separation_last)}")
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


# --------------------------------------------------------------------------- plots


_FIGSIZE = (6.4, 3.4)
_DPI = 80


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "stage"


class _Canvas:
    """One figure (not pyplot's: no global state, no backend switched for the caller's
    process) with one labelled axes, drawn on again for each plot of a batch. Building a
    figure, its ticks and its renderer costs about as much as drawing the lines; a plot drawn
    on a reused canvas is the same PNG, byte for byte, as one drawn on a fresh canvas."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
        self.agg = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_subplot()
        self.fig.subplots_adjust(left=0.12, right=0.98, top=0.91, bottom=0.14)  # no layout
        self.ax.set_xlabel("epoch", fontsize=9)                                # engine: fast
        self.ax.tick_params(labelsize=8)
        self.ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax.grid(True, alpha=0.3)
        self._used = False

    def axes(self, title: str, ylabel: str) -> Any:
        """The axes, emptied of the previous plot and titled for the next one."""
        ax = self.ax
        if self._used:
            for artist in [*ax.lines, *ax.collections, *ax.patches, *ax.texts]:
                artist.remove()
            if ax.legend_ is not None:
                ax.legend_.remove()
            ax.set_yscale("linear")  # back to the linear scale's own locators and formatters
            ax.relim()
            ax.ignore_existing_data_limits = True
            ax.set_autoscale_on(True)
            ax.set_prop_cycle(None)  # colours start again at C0
        self._used = True
        # a fixed title position: nothing is drawn above the axes, and working out whether
        # something is costs a layout pass of the tick labels on every draw
        ax.set_title(title, fontsize=10, y=1.0)
        ax.set_ylabel(ylabel, fontsize=9)
        return ax

    def png(self) -> bytes:
        """The plot as an RGB PNG: the figure is opaque, so an alpha channel would only make
        the file bigger and slower to compress; zlib level 3 is most of level 6's size at
        about half the time."""
        import PIL.Image
        from matplotlib.text import Text

        handles = self.ax.get_legend_handles_labels()[0]
        if handles:
            self.ax.legend(fontsize=7, loc="best", ncols=2 if len(handles) > 4 else 1,
                           framealpha=0.7)
        for text in self.fig.findobj(Text):  # names from CSVs are text: `$x$` is no math
            text.set_parse_math(False)
        self.agg.draw()
        width, height = self.agg.get_width_height()
        image = PIL.Image.frombuffer("RGBA", (width, height), self.agg.buffer_rgba(), "raw",
                                     "RGBA", 0, 1).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=3)
        return buffer.getvalue()


def _has_data(values: Iterable[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def _plot_losses(summary: StageSummary, data: _StageData, canvas: _Canvas) -> bytes | None:
    rows = data.training
    epochs = _epochs(rows)
    train, val = rows.floats("Train Loss"), rows.floats(VAL_LOSS)
    components = []
    if data.loss_components:
        components = [c for c in data.loss_components.header if c not in
                      ("epoch", "phase", "total") and not c.startswith(("weight_", "sigma_"))]
    series = []
    for phase in ("train", "val"):
        totals = dict(zip(*_phase_series(data.loss_components, phase, "total"), strict=True))
        for component in components:
            xs, ys = _phase_series(data.loss_components, phase, component)
            # a lone component equal to the total would only hide the total's line
            if len(components) == 1 and all(totals.get(x) == y for x, y in zip(xs, ys,
                                                                               strict=True)):
                continue
            series.append((f"{phase} {component}", xs, ys, "-" if phase == "train" else "--",
                           f"C{2 + components.index(component) % 8}"))
    if not (_has_data(train) or _has_data(val) or any(_has_data(s[2]) for s in series)):
        return None
    ax = canvas.axes(f"{summary.name}: loss", "loss")
    ax.plot(epochs, train, color="C0", linewidth=2, marker=".", label="train loss")
    ax.plot(epochs, val, color="C1", linewidth=2, marker=".", label="val loss")
    for label, xs, ys, style, colour in series:
        ax.plot(xs, ys, linestyle=style, linewidth=0.9, color=colour, label=label)
    return canvas.png()


def _plot_metrics(summary: StageSummary, data: _StageData, canvas: _Canvas) -> bytes | None:
    rows = data.training
    columns = [c for c in rows.header if c.startswith("Val ") and c != VAL_LOSS]
    epochs = _epochs(rows)
    curves = [(c, rows.floats(c)) for c in columns]
    curves = [(c, ys) for c, ys in curves if _has_data(ys)]
    if not curves:
        return None
    ax = canvas.axes(f"{summary.name}: validation metrics", "value")
    for column, ys in curves:
        width = 2 if column == summary.metric else 1.2
        ax.plot(epochs, ys, linewidth=width, marker=".", label=column.removeprefix("Val "))
    if summary.best_epoch is not None:
        ax.axvline(summary.best_epoch, color="grey", linestyle=":", linewidth=1,
                   label=f"best epoch {summary.best_epoch} ({summary.metric})")
    return canvas.png()


def _plot_separation(summary: StageSummary, data: _StageData, canvas: _Canvas) -> bytes | None:
    train = _phase_series(data.probabilities, "train", "separation")
    val = _phase_series(data.probabilities, "val", "separation")
    if not (_has_data(train[1]) or _has_data(val[1])):
        return None
    ax = canvas.axes(f"{summary.name}: separation (pos mean - neg mean)", "separation")
    ax.plot(*train, marker=".", label="train")
    ax.plot(*val, marker=".", label="val")
    ax.axhline(0, color="grey", linewidth=0.8)
    return canvas.png()


def _plot_gradients(summary: StageSummary, data: _StageData, canvas: _Canvas) -> bytes | None:
    rows = data.gradients
    epochs = _epochs(rows, "epoch")
    mean, low, high = (rows.floats(c) for c in ("norm_mean", "norm_min", "norm_max"))
    if not (_has_data(mean) or _has_data(high)):
        return None
    ax = canvas.axes(f"{summary.name}: gradient norm", "total gradient norm")
    ax.fill_between(epochs, low, high, alpha=0.2, color="C0", label="min-max")
    ax.plot(epochs, mean, color="C0", marker=".", label="mean")
    ax.plot(epochs, high, color="C3", linewidth=1, linestyle="--", label="max")
    values = _finite(mean + low + high)
    if values and min(values) > 0:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")  # labelled 0.2, 0.3, ... rather than 2x10^-1 when the span is short
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if max(values) / min(values) < 100:
            def minor(v: float, _: Any) -> str:
                return f"{v:g}" if f"{v:.0e}"[0] in "235" else ""

            ax.yaxis.set_minor_formatter(FuncFormatter(minor))
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
    return canvas.png()


def _plot_memory(summary: StageSummary, data: _StageData, canvas: _Canvas) -> bytes | None:
    table = data.memory
    ranks: dict[str, list[int]] = {}
    for index, rank in enumerate(table.column("rank")):
        ranks.setdefault(rank or "?", []).append(index)
    all_epochs = table.column("epoch")
    values = {column: table.floats(column) for column in ("host_rss_mb", "peak_mb")}
    curves = []
    for rank, indices in sorted(ranks.items(), key=lambda item: rundir.to_float(item[0])):
        epochs = [_epoch(all_epochs[i]) for i in indices]
        for column, label in (("host_rss_mb", "host RSS"), ("peak_mb", "GPU peak")):
            ys = [values[column][i] for i in indices]
            if _has_data(ys):
                curves.append((f"{label} rank {rank}", epochs, ys, column == "peak_mb"))
    if not curves:
        return None
    ax = canvas.axes(f"{summary.name}: memory", "MB")
    if len(ranks) > BAND_RANKS:  # a line per rank would hide the chart under its legend
        _memory_bands(ax, table, values, len(ranks))
        return canvas.png()
    for label, epochs, ys, gpu in curves:
        ax.plot(epochs, ys, marker=".", linestyle="--" if gpu else "-", label=label)
    return canvas.png()


#: above this many ranks the memory plot draws a band over the ranks instead of one line each
BAND_RANKS = 8


def _memory_bands(ax: Any, table: Any, values: dict[str, list[float]], count: int) -> None:
    """Per epoch the min-max band and the median over the ranks, and the rank that holds the
    most memory at the last epoch, named."""
    import statistics

    epochs, ranks = table.column("epoch"), table.column("rank")
    for column, label, style in (("host_rss_mb", "host RSS", "-"), ("peak_mb", "GPU peak", "--")):
        seen: dict[int, list[tuple[float, str]]] = {}
        for epoch, rank, value in zip(epochs, ranks, values[column], strict=True):
            x = _epoch(epoch)
            if x is not None and math.isfinite(value):
                seen.setdefault(x, []).append((value, rank or "?"))
        if not seen:
            continue
        xs = sorted(seen)
        low = [min(v for v, _ in seen[x]) for x in xs]
        high = [max(v for v, _ in seen[x]) for x in xs]
        middle = [statistics.median(v for v, _ in seen[x]) for x in xs]
        ax.fill_between(xs, low, high, alpha=0.2, label=f"{label}: min-max of {count} ranks")
        ax.plot(xs, middle, marker=".", linestyle=style, label=f"{label}: median")
        value, rank = max(seen[xs[-1]])
        ax.plot([xs[-1]], [value], marker="o", linestyle="none",
                label=f"{label}: most, rank {rank} ({value:,.0f} MB)")


def system_series(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """system.csv as curves over the job's time in minutes: ``GPU <n> util % (host)`` per
    GPU, and ``CPU % (host)``: the job's processes on each host, in % of one core."""
    table = rundir.read_table(path)
    times = table.floats("time")
    finite = [t for t in times if math.isfinite(t)]
    if not finite:
        return {}
    start = min(finite)
    hosts, gpus = table.column("host"), table.column("gpu")
    utils, cpus = table.floats("gpu_util_pct"), table.floats("cpu_pct")
    curves: dict[str, tuple[list[float], list[float]]] = {}
    seen_cpu: set[tuple[str, float]] = set()
    for i, when in enumerate(times):
        if not math.isfinite(when):
            continue
        minute = (when - start) / 60
        if math.isfinite(utils[i]):
            xs, ys = curves.setdefault(f"GPU {gpus[i]} util % ({hosts[i]})", ([], []))
            xs.append(minute)
            ys.append(utils[i])
        if math.isfinite(cpus[i]) and (hosts[i], when) not in seen_cpu:  # once per sample
            seen_cpu.add((hosts[i], when))
            xs, ys = curves.setdefault(f"CPU % ({hosts[i]})", ([], []))
            xs.append(minute)
            ys.append(cpus[i])
    return curves


def _plot_system(path: Path) -> bytes | None:
    curves = system_series(path)
    if not curves:
        return None
    canvas = _Canvas()
    ax = canvas.axes("GPU utilisation and CPU of the job's processes", "%")
    ax.set_xlabel("minutes since the job started", fontsize=9)
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, linestyle="--" if label.startswith("CPU") else "-", label=label)
    return canvas.png()


def _system_png(run_dir: Path, out_dir: Path) -> tuple[Path, bytes] | None:
    """``system.png`` from the run's system.csv (redrawn only when the file changed)."""
    source = run_dir / rundir.SYSTEM
    if not source.is_file():
        return None
    path = out_dir / "system.png"
    key = hashlib.sha256(json.dumps(["system", __version__, _stamp(Path(__file__)),
                                     _stamp(source)]).encode()).hexdigest()[:32]
    png = _drawn_before(path, key)
    if png is None:
        drawn = _plot_system(source)
        if drawn is None:
            return None
        png = _with_key(drawn, key)
        rundir.write_atomic(path, png)
    return path, png


#: the plots of a training stage: kind (its file name), caption, and what draws it
_PLOTS: dict[str, tuple[str, Callable[[StageSummary, _StageData, _Canvas], bytes | None]]] = {
    "losses": ("Loss per epoch", _plot_losses),
    "metrics": ("Validation metrics", _plot_metrics),
    "separation": ("Separation", _plot_separation),
    "gradients": ("Gradient norms", _plot_gradients),
    "memory": ("Memory", _plot_memory),
}
#: the files of its stage each plot is drawn from (besides the stage's name, and for the
#: metrics the best epoch it marks)
_PLOT_INPUTS = {
    "losses": (rundir.TRAINING, rundir.LOSS_COMPONENTS),
    "metrics": (rundir.TRAINING,),
    "separation": (rundir.PROBABILITY_STATS,),
    "gradients": (rundir.GRADIENT_STATS,),
    "memory": (rundir.GPU_MEMORY,),
}
#: the PNG text chunk that records what a plot was drawn from
_PNG_KEY = b"hpcrun-plot"


def _stamp(path: Path) -> list[int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _plot_key(kind: str, stage: StageSummary, data: _StageData) -> str:
    """What a plot is drawn from: its input files (size and modification time: the CSVs are
    appended to or replaced, never edited in place), the stage's name (its title), the best
    epoch (which the metrics plot marks), and the drawing code (this file and hpcrun's
    version)."""
    chosen = [stage.metric, stage.best_epoch] if kind == "metrics" else []  # its marker
    parts = [kind, stage.name, chosen, __version__, _stamp(Path(__file__)),
             [_stamp(data.dir / name) for name in _PLOT_INPUTS[kind]]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _with_key(png: bytes, key: str) -> bytes:
    """``png`` with a tEXt chunk holding ``key``, right after its header chunk."""
    body = b"tEXt" + _PNG_KEY + b"\0" + key.encode("ascii")
    chunk = (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    header_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    return png[:header_end] + chunk + png[header_end:]


def _key_of(png: bytes) -> str | None:
    """The key ``_with_key`` put into a PNG (None for any other file)."""
    if not png.startswith(PNG_SIGNATURE):
        return None
    at = 8
    while at + 8 <= len(png):
        length, kind = int.from_bytes(png[at:at + 4], "big"), png[at + 4:at + 8]
        if kind == b"IDAT":
            return None
        keyword, _, value = png[at + 8:at + 8 + length].partition(b"\0")
        if kind == b"tEXt" and keyword == _PNG_KEY:
            return value.decode("ascii", "replace")
        at += 12 + length
    return None


def _drawn_before(path: Path, key: str) -> bytes | None:
    """The PNG at ``path`` when it was drawn from what ``key`` describes."""
    try:
        png = path.read_bytes()
    except OSError:
        return None
    return png if _key_of(png) == key else None


_Plot = tuple[str, StageSummary, _StageData]


def _draw(tasks: Sequence[_Plot]) -> list[bytes | None]:
    """The PNGs of a batch of plots (None for a plot without data), on one canvas."""
    canvas = _Canvas()
    return [_PLOTS[kind][1](summary, data, canvas) for kind, summary, data in tasks]


def _draw_all(tasks: Sequence[_Plot]) -> list[bytes | None]:
    """``_draw(tasks)``, in one batch per worker process when there are enough plots."""
    if not tasks:
        return []
    batches = min(_workers(), _MAX_WORKERS) if len(tasks) >= _FORK_PLOTS else 1
    size = -(-len(tasks) // max(1, batches))
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    return [png for chunk in _fan_out(_draw, chunks, least=2) for png in chunk]


def _workers() -> int:
    """CPUs this process may use (a batch job's allocation, not the whole node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return 1


def _fan_out(work: Callable[[Any], Any], items: Sequence[Any], least: int) -> list[Any]:
    """``[work(item) for item in items]``, spread over forked worker processes when there
    are at least ``least`` items and more than one CPU (plots and CSV parsing are CPU-bound
    Python, which threads would not speed up). Serial where forking is unsafe: another
    thread is running (a notebook's), or the platform has no fork."""
    workers = min(_workers(), len(items), _MAX_WORKERS)
    if workers < 2 or len(items) < least or threading.active_count() > 1:
        return [work(item) for item in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    for stream in (sys.stdout, sys.stderr):  # a worker would print their buffers again
        if stream is not None:
            stream.flush()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_ignore_interrupts) as pool:
            return list(pool.map(work, items, chunksize=max(1, len(items) // (workers * 4))))
    except (BrokenProcessPool, OSError, ImportError, NotImplementedError):
        # a worker died (killed for memory), or none could start (a process limit, no
        # /dev/shm for the pool's semaphores): do the work here instead
        return [work(item) for item in items]


def _ignore_interrupts() -> None:
    """In a worker: Ctrl-C is the parent's to handle (one line), not every worker's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: ceiling on the worker processes of one report or comparison, and how many plots or runs
#: it takes before forking them pays for itself
_MAX_WORKERS = 8
_FORK_PLOTS = 4
_FORK_RUNS = 32


# --------------------------------------------------------------------------- html


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222;
max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em}th{background:#f3f3f3;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.plots{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0}figcaption{font-size:.85em;color:#555}
img{border:1px solid #eee;max-width:100%}
.state{font-weight:bold}
.flag{color:#a00;font-weight:bold}.healthy{color:#555}
"""


def _cells(values: Sequence[Any]) -> list[dict[str, Any]]:
    """A table row for the page: floats right-aligned in the report's number format."""
    return [{"text": _cell(v), "numeric": True} if isinstance(v, float)
            else {"text": "" if v is None else str(v), "numeric": False} for v in values]


def _table_data(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    return {"header": list(header), "rows": [_cells(row) for row in rows]}


def _evaluation_data(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    columns = _table_columns(rows)
    return _table_data(columns, [[row.get(c, "") for c in columns] for row in rows])


def _stage_row(stage: StageSummary) -> list[Any]:
    def num(value: float, digits: int = 4) -> str:
        return _num(value, digits)

    return [stage.name, stage.state or "", stage.mode or "", stage.epochs if stage.trained
            else "", stage.metric or "", "" if stage.best_epoch is None else stage.best_epoch,
            num(stage.best_value), f"{num(stage.first_train_loss)} → {num(stage.last_train_loss)}"
            if stage.trained else "", num(stage.loss_decrease), num(stage.loss_decrease_pct, 1),
            num(stage.separation_best), num(stage.separation_last),
            num(stage.median_epoch_time, 3), num(stage.peak_host_rss_mb, 1),
            num(stage.peak_gpu_mb, 1)]


_STAGE_HEADER = ["stage", "state", "mode", "epochs", "selection metric", "best epoch",
                 "best value", "train loss first → last", "loss decrease", "decrease %",
                 "val separation (best)", "val separation (last)", "median epoch time (s)",
                 "peak host RSS (MB)", "peak GPU (MB)"]


@functools.cache
def _page_template() -> Any:
    """templates/report.html.j2 in an environment of its own: autoescape on, so no value
    reaches the page unescaped by omission (the job scripts' environment quotes for a
    shell instead)."""
    import jinja2

    from hpcrun.resources import templates_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    return env.get_template("report.html.j2")


def _figure(label: str, png: bytes) -> dict[str, str]:
    return {"label": label, "data": base64.b64encode(png).decode("ascii")}


def render_html(summary: RunSummary,
                images: dict[str, list[tuple[str, str, bytes]]] | None = None,
                flags: Sequence[Any] = (), system: bytes | None = None) -> str:
    """One self-contained page: inline style, images as data URIs, every value escaped.
    ``flags`` are the run's red flags (``diagnose.Flag``: code, message, stage, epoch)."""
    from markupsafe import Markup

    images = images or {}
    final = None
    if summary.final_evaluation:
        final = {"stage": summary.final_evaluation_stage,
                 **_evaluation_data(summary.final_evaluation)}
    return _page_template().render(
        title=f"{summary.experiment} / {summary.run_id}", style=Markup(_STYLE),
        run={"run_id": summary.run_id, **_table_data(
            ["experiment", "run id", "state", "path"],
            [[summary.experiment, summary.run_id, summary.state, summary.path]])},
        message=summary.message, flags=list(flags), final=final,
        stages=_table_data(_STAGE_HEADER, [_stage_row(s) for s in summary.stages])
        if summary.stages else None,
        per_stage=[{"name": stage.name,
                    "evaluation": _evaluation_data(stage.evaluation) if stage.evaluation
                    else None,
                    "plots": [_figure(f"{stage.name}: {caption}", png)
                              for _, caption, png in images.get(stage.name) or []]}
                   for stage in summary.stages],
        system=_figure("GPU utilisation and CPU over the job (system.csv)", system)
        if system is not None else None)


def write_report(run_dir: Path, out_dir: Path | None = None,
                 flags: Sequence[Any] | None = None) -> ReportFiles:
    """Write ``<stage>_<kind>.png`` per training stage and ``report.html`` into ``out_dir``
    (default ``run_dir/report``). Plots without data are skipped; a plot whose PNG there was
    drawn from the same data (a finished stage of a running pipeline, a report after
    ``fetch``) is kept rather than drawn again. ``flags`` are the run's red flags when the
    caller knows more than the run directory tells (the job's state, its log); by default
    they come from the run directory alone. Returns the PNGs and the page, with the summary
    and flags the page shows."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise OSError(errno.EEXIST, "is a symbolic link or not a folder: the report is "
                      "written only into a real folder", str(out_dir))
    if flags is None:
        from hpcrun.diagnose import diagnose

        flags = diagnose(run_dir)
    summary, data = _load(run_dir)
    files = ReportFiles(pngs=[], html=out_dir / REPORT_HTML, summary=summary, flags=list(flags))
    tasks = [(kind, stage, data[stage.name]) for stage in summary.stages if stage.trained
             for kind in _PLOTS]
    paths = [out_dir / f"{_safe_name(stage.name)}_{kind}.png" for kind, stage, _ in tasks]
    keys = [_plot_key(*task) for task in tasks]
    pngs = [_drawn_before(path, key) for path, key in zip(paths, keys, strict=True)]
    stale = [i for i, png in enumerate(pngs) if png is None]
    if stale:
        import matplotlib.backends.backend_agg  # noqa: F401 - imported once, before any fork
        import matplotlib.figure  # noqa: F401

        for i, png in zip(stale, _draw_all([tasks[i] for i in stale]), strict=True):
            if png is not None:
                pngs[i] = _with_key(png, keys[i])
                rundir.write_atomic(paths[i], pngs[i])
    images: dict[str, list[tuple[str, str, bytes]]] = {}
    for (kind, stage, _), path, png in zip(tasks, paths, pngs, strict=True):
        plots = images.setdefault(stage.name, [])
        if png is not None:
            plots.append((kind, _PLOTS[kind][0], png))
            files.pngs.append(path)
    system = _system_png(run_dir, out_dir)
    if system is not None:
        files.pngs.append(system[0])
    rundir.write_atomic(files.html, render_html(summary, images, files.flags,
                                                system[1] if system else None).encode("utf-8"))
    return files


# --------------------------------------------------------------------------- compare


#: what ``compare`` ranks by: a column of evaluation.csv, or ``loss``: the lowest validation
#: loss of the last training stage (the curve the overlay draws)
COMPARE_METRICS = (*rundir.EVALUATION_COLUMNS[1:], "loss")


def compare_metric(name: str, known: Sequence[str] = COMPARE_METRICS) -> str:
    """``name`` as ``compare`` knows it (case does not matter), or ``BadInput`` naming the
    valid ones: ranking by a metric no run has would print a table of blanks. ``known``
    adds the runs' own metrics (their ``Val <metric>`` columns and evaluation columns)."""
    metric = name.strip().lower()
    if metric in known:
        return metric
    close = difflib.get_close_matches(metric, known, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadInput(f"--metric {name!r}: unknown metric{guess}; choose one of "
                   f"{', '.join(known)}")


#: metrics where lower is better (besides the losses)
_LOWER_IS_BETTER = ("loss", "rmse", "mae", "error", "perplexity")


def default_mode(metric: str) -> str:
    """Lower is better for a loss or an error, higher for every other metric."""
    return "min" if metric.endswith(_LOWER_IS_BETTER) else "max"


@dataclass
class Comparison:
    metric: str
    split: str | None
    rows: list[dict[str, Any]]  # ranked: run, run_dir, value, and each differing key
    differing: list[str]
    png: Path | None
    mode: str = "max"
    #: paths given that are not run directories, each with why it was left out
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "split": self.split, "mode": self.mode,
                "differing": self.differing, "rows": _json_safe(self.rows),
                "png": str(self.png) if self.png else None, "skipped": self.skipped}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _metric_value(summary: RunSummary, metric: str, curve: _Curve | None,
                  own: dict[str, list[float]] | None = None,
                  mode: str = "max") -> tuple[float, str | None]:
    """The metric from the final evaluation (test split first), else the best validation
    value of the last training stage that tracks it (its early-stopping metric, else its
    ``Val <metric>`` column in ``own``). ``loss`` is the lowest of ``curve``."""
    if metric == "loss":
        lowest = min(_finite(curve[1]), default=math.nan) if curve else math.nan
        return lowest, "val"
    table = {row.get("split"): row for row in summary.final_evaluation}
    for split in ("test", "val"):
        if split in table and metric in table[split]:
            return float(table[split][metric]), split
    for stage in reversed(summary.stages):
        if stage.metric and stage.metric.lower().endswith(metric.lower()):
            return stage.best_value, None
    values = (own or {}).get(metric) or []
    if values:
        return (max(values) if mode == "max" else min(values)), "val"
    return math.nan, None


def compare(run_dirs: Sequence[Path], metric: str = "auroc", mode: str | None = None,
            out: Path | None = None) -> Comparison:
    """Rank runs by ``metric`` (one of ``COMPARE_METRICS``; ``mode`` max or min, by default
    min for ``loss`` and max otherwise), list the config keys whose values differ between
    them, and draw their validation-loss curves on one PNG."""
    if mode not in (None, "max", "min"):
        raise BadInput(f"--mode {mode!r}: use max (higher is better) or min")
    from hpcrun.config import load_config_text  # noqa: F401 - imported before any fork

    entries = _fan_out(_compare_entry, [Path(d) for d in run_dirs], least=_FORK_RUNS)
    own_metrics = [m for entry in entries for m in [*entry[3], *entry[4]]
                   if m not in COMPARE_METRICS]
    metric = compare_metric(metric, [*COMPARE_METRICS, *dict.fromkeys(own_metrics)])
    mode = mode or default_mode(metric)
    configs = [config for _, config, _, _, _ in entries]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    rows = []
    split = None
    for run_dir, (summary, config, curve, own, _) in zip(run_dirs, entries, strict=True):
        value, where = _metric_value(summary, metric, curve, own, mode)
        split = split or where
        rows.append({"run": summary.run_id, "run_dir": str(run_dir), "value": value,
                     **{k: config.get(k) for k in differing}})
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (math.isnan(r["value"]), sign * (0 if math.isnan(r["value"])
                                                             else r["value"])))
    curves = {str(d): (summary.run_id, curve)
              for d, (summary, _, curve, _, _) in zip(run_dirs, entries, strict=True)}
    png = _overlay([curves[r["run_dir"]] for r in rows], out) if out is not None else None
    return Comparison(metric, split, rows, differing, png, mode)


#: a run's validation-loss curve (epochs, values) in its last training stage
_Curve = tuple[list[int | None], list[float]]


def _compare_entry(run_dir: Path) -> tuple[RunSummary, dict[str, Any], _Curve | None,
                                           dict[str, list[float]], list[str]]:
    """What a comparison needs of one run: its summary, its flattened config, the curve the
    overlay draws, the finite values of each ``Val <metric>`` column of its last training
    stage (by lower-case metric name) and the metrics of its final evaluation."""
    config = read_config(rundir.RunDir(run_dir))
    summary, data = _load(run_dir, config, detail=False)
    trained = [s for s in summary.stages if s.trained]
    curve = None
    own: dict[str, list[float]] = {}
    if trained:
        rows = data[trained[-1].name].training  # already read for the summary
        curve = _epochs(rows), rows.floats(VAL_LOSS)
        for column in rows.header or []:
            if column.startswith("Val ") and column != VAL_LOSS:
                own[column.removeprefix("Val ").lower()] = _finite(rows.floats(column))
    evaluated = [k for row in summary.final_evaluation for k in row if k != "split"]
    flat = _flatten(config[1]) if config and isinstance(config[1], dict) else {}
    return summary, flat, curve, own, list(dict.fromkeys(evaluated))


#: how many of the ranked runs an overlay names; the rest are drawn thin and grey
OVERLAY_LABELLED = 10


def _overlay(ranked: Sequence[tuple[str, _Curve | None]], out: Path) -> Path:
    """Validation-loss curves of the last training stage of each run, best ranked first: the
    top runs in colour with a legend, the others as a grey background (one line collection,
    so hundreds of runs stay cheap and readable)."""
    from matplotlib.collections import LineCollection

    canvas = _Canvas()
    ax = canvas.axes("validation loss", "loss")
    background = []
    for rank, (run_id, curve) in enumerate(ranked):
        if curve is None:
            continue
        epochs, values = curve
        if rank < OVERLAY_LABELLED:
            ax.plot(epochs, values, label=f"#{rank + 1} {run_id}", linewidth=1.2, zorder=3)
        else:
            background.append(list(zip(epochs, values, strict=True)))
    if background:
        ax.add_collection(LineCollection(background, colors="0.75", linewidths=0.6,
                                         zorder=1, label=f"{len(background)} more runs"))
        ax.autoscale_view()
    data = canvas.png()
    rundir.write_atomic(out, data)
    return out
