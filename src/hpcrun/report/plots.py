"""The report's PNGs, the keys that let an unchanged plot be kept, and the worker processes.

Every plot of a training stage (``_PLOTS``: losses, metrics, separation, gradients, memory,
with a band over the ranks when there are many) and the job's system plot are drawn on a
:class:`_Canvas`: matplotlib's ``Figure``, never pyplot, imported only when something is
drawn, so a caller's backend is left alone. Each PNG carries a key (``_plot_key``) of what it
was drawn from, and ``_drawn_before`` hands back one drawn from the same data. ``_fan_out``
spreads CPU-bound work (plots, a comparison's runs) over forked worker processes when there
are enough items and more than one CPU; its settings (``_workers``, ``_MAX_WORKERS``,
``_FORK_PLOTS``, ``_FORK_RUNS``) are read here at call time, so patch them on this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hpcrun import __version__, rundir
from hpcrun.report import summary as reading
from hpcrun.report.summary import StageSummary, _epoch, _epochs, _finite, _phase_series, _StageData
from hpcrun.selection import VAL_LOSS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

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

        low, high = self.ax.get_xlim()
        if self.ax.get_xlabel() == "epoch" and high - low < 2:  # one epoch: whole-epoch ticks
            middle = round((low + high) / 2)  # (not 0.950 ... 1.050 around it)
            self.ax.set_xlim(middle - 1, middle + 1)
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
    key = hashlib.sha256(json.dumps(["system", __version__, _code_stamp(),
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
#: plots of a classifier's probabilities and metrics, left out for a stage that trains none
_CLASSIFIER_PLOTS = ("metrics", "separation")


def stage_plots(stage: StageSummary) -> list[str]:
    """The kinds of plot a stage has (none for a stage that does not train)."""
    if not stage.trained:
        return []
    return [kind for kind in _PLOTS if stage.classifies or kind not in _CLASSIFIER_PLOTS]


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


def _code_stamp() -> list[list[int] | None]:
    """The drawing code: this module and the reading its plots draw from (summary.py)."""
    return [_stamp(Path(__file__)), _stamp(Path(reading.__file__))]


def _plot_key(kind: str, stage: StageSummary, data: _StageData) -> str:
    """What a plot is drawn from: its input files (size and modification time: the CSVs are
    appended to or replaced, never edited in place), the stage's name (its title), the best
    epoch (which the metrics plot marks), and the drawing code (``_code_stamp`` and hpcrun's
    version)."""
    chosen = [stage.metric, stage.best_epoch] if kind == "metrics" else []  # its marker
    parts = [kind, stage.name, chosen, __version__, _code_stamp(),
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
