"""The report's one self-contained HTML page, and ``write_report``, which writes it with the PNGs.

``render_html`` fills ``templates/report.html.j2`` (autoescape on, found through
:func:`hpcrun.resources.templates_dir`) with a run's summary, red flags and plots as data
URIs. ``write_report`` reads the run, keeps the PNGs drawn before from the same data, draws
the others (in worker processes when there are enough) and writes ``report.html`` next to
them, by default into ``<run>/report``.
"""

from __future__ import annotations

import base64
import errno
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcrun import rundir
from hpcrun.report.plots import (
    _PLOTS,
    _draw_all,
    _drawn_before,
    _plot_key,
    _safe_name,
    _system_png,
    _with_key,
    stage_plots,
)
from hpcrun.report.summary import ReportFiles, RunSummary, StageSummary, _load
from hpcrun.report.text import _cell, _num, _table_columns

REPORT_DIR = rundir.REPORT
REPORT_HTML = "report.html"

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
    tasks = [(kind, stage, data[stage.name]) for stage in summary.stages
             for kind in stage_plots(stage)]
    for stage in summary.stages:  # plots an earlier report drew that no longer apply
        for kind in set(_PLOTS) - set(stage_plots(stage)):
            (out_dir / f"{_safe_name(stage.name)}_{kind}.png").unlink(missing_ok=True)
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
