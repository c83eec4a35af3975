"""Runs side by side: ``compare`` ranks run directories by one metric and overlays their curves.

A comparison reads each run (in worker processes when there are many, through
:func:`hpcrun.report.plots._fan_out`) only as far as its ranking needs: the best epoch, the
evaluation table, the validation-loss curve of the last training stage and the flattened
config. It ranks the runs by a metric of ``COMPARE_METRICS`` or one the runs log themselves
(``compare_metric``, ``default_mode``), lists the config keys whose values differ, and draws
the ranked curves on one PNG (``_overlay``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcrun import rundir
from hpcrun.errors import BadInput
from hpcrun.report import plots
from hpcrun.report.summary import RunSummary, _epochs, _finite, _json_safe, _load
from hpcrun.selection import VAL_LOSS, read_config

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
    """Dotted keys to values; a list of named mappings (the pipeline's stages) is keyed by
    their names (``pipeline.finetune.init_checkpoint``), so runs that differ in one stage key
    show that key, not the whole pipeline in one cell. Other lists stay values."""
    if isinstance(data, list) and data and all(
            isinstance(item, dict) and isinstance(item.get("name"), str) for item in data) \
            and len({item["name"] for item in data}) == len(data):
        data = {item["name"]: {k: v for k, v in item.items() if k != "name"} for item in data}
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

    entries = plots._fan_out(_compare_entry, [Path(d) for d in run_dirs],
                              least=plots._FORK_RUNS)
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

    canvas = plots._Canvas()
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
