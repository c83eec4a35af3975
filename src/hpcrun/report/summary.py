"""What a run directory holds, read into plain data: a :class:`RunSummary` of its stages.

The data model (:class:`StageSummary`, :class:`RunSummary`, :class:`ReportFiles`) and the
reading behind it: ``summarize`` reads a run directory (finished, failed or still running)
through :mod:`hpcrun.rundir`, one stage directory at a time (:class:`_StageData` reads each
CSV once, and only when asked for), and chooses each stage's best epoch by the rule in
:mod:`hpcrun.selection`. Pure Python (CSV columns, plain lists): no pandas, no torch, no
matplotlib, so the CLI and the monitor can summarise a run without paying for plotting.
"""

from __future__ import annotations

import csv
import functools
import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcrun import rundir
from hpcrun.selection import RunConfig, Selection, read_selections

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
    #: rows of evaluation.csv: ``{"split": str, "<metric>": float, ...}`` (none for a stage
    #: that trains no classifier: its metrics would read as failures)
    evaluation: tuple[dict[str, Any], ...] = ()
    #: False for a stage that trains no classifier (``Selection.classifies``)
    classifies: bool = True


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
        evaluation=_evaluation_table(data.evaluation.rows()) if chosen.classifies else (),
        classifies=chosen.classifies)
    if not detail:
        return ranked

    losses = rows.floats("Train Loss")
    first = losses[0] if losses else math.nan
    last = losses[-1] if losses else math.nan
    decrease = first - last
    pct = 100.0 * decrease / first if math.isfinite(decrease) and first != 0 else math.nan

    sep_epochs, seps = _phase_series(data.probabilities, "val", "separation") \
        if chosen.classifies else ([], [])
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
