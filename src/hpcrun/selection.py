"""Which epoch is a stage's best: one rule for the trainer (``best.pt``, early stopping, the
plateau the scheduler sees), monitor's best row and the report. A value improves on the best
so far when it is finite and beats it by more than ``min_delta`` (lower in ``min`` mode,
higher in ``max``); of equal values the earlier epoch stays best. The column and mode come
from the stage's ``training.early_stopping`` in the run's config.yaml. Pure Python: monitor
and the CLI import this without matplotlib or torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import rundir

VAL_LOSS = "Val Loss"


def improves(value: float | None, best: float | None, mode: str = "min",
             min_delta: float = 0.0) -> bool:
    """Whether ``value`` is a new best after ``best`` (None: nothing finite seen yet)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


@dataclass(frozen=True)
class Selection:
    """How a stage's best epoch is chosen: a training.csv column, its mode, the margin."""

    column: str = VAL_LOSS
    mode: str = "min"
    min_delta: float = 0.0
    #: the stage's pipeline mode (``train``, ``eval_only``, ...) where the config says
    stage_mode: str | None = None
    #: whether the stage trains a classifier: False for hpcrun's trainer with a
    #: classification weight of 0 (pretraining on reconstruction alone), whose probabilities,
    #: separation and evaluation metrics mean nothing
    classifies: bool = True

    def improves(self, value: float | None, best: float | None) -> bool:
        return improves(value, best, self.mode, self.min_delta)

    def best(self, epochs: Sequence[int | None], values: Sequence[float]
             ) -> tuple[int | None, float]:
        """(best epoch, its value) over a whole column; (None, nan) when none is finite."""
        best_epoch, best = None, math.nan
        for epoch, value in zip(epochs, values, strict=True):
            if epoch is not None and self.improves(value, None if best_epoch is None else best):
                best_epoch, best = epoch, value
        return best_epoch, best


class BestRow:
    """The best row of a growing training.csv by one selection, kept up to date as rows
    arrive (a resume that rewrites the file starts it again)."""

    def __init__(self, selection: Selection):
        self.selection = selection
        self.generation: int | None = None
        self.seen, self.row, self.value = 0, None, math.nan

    def update(self, tail: rundir.CsvTail) -> dict[str, str] | None:
        if tail.generation != self.generation:
            self.generation, self.seen, self.row, self.value = tail.generation, 0, None, math.nan
        values = tail.floats(self.selection.column)
        for i in range(self.seen, len(values)):
            if self.selection.improves(values[i], None if self.row is None else self.value):
                self.row, self.value = i, values[i]
        self.seen = len(values)
        return tail.rows[self.row] if self.row is not None else None


def column_of(metric: str) -> str:
    """training.csv's column for an early-stopping metric (``val_loss``, ``val_auroc``)."""
    name = metric.removeprefix("val_")
    return VAL_LOSS if name == "loss" else f"Val {rundir.METRIC_LABELS.get(name, name)}"


def _from_config(config_text: str) -> dict[str, Selection]:
    """Per stage name, from a run's config.yaml text (empty when it cannot be read)."""
    from .config import load_config_text  # pydantic + yaml: only when needed

    try:
        config = load_config_text(config_text, source=rundir.CONFIG)
        out = {}
        for stage in config.pipeline:
            training = config.for_stage(stage.name).training
            es = training.early_stopping
            classifies = config.run is not None \
                or training.loss.components.get("classification", 0) > 0
            out[stage.name] = Selection(column_of(es.metric), es.resolved_mode, es.min_delta,
                                        stage.mode, classifies)
        return out
    except Exception:  # noqa: BLE001 - a damaged config only costs the metric choice
        return {}


#: a run's config.yaml: its text, and its data (None when it is not readable YAML)
RunConfig = tuple[str, Any]

#: selections by what decides them (``_key``): a sweep's runs share one validation
_CACHE: dict[str, dict[str, Selection]] = {}


def read_config(run: rundir.RunDir) -> RunConfig | None:
    """A run's config.yaml, read and parsed once (through the capped YAML loader: a run
    directory's config is not trusted more than any other YAML)."""
    from .config import safe_load

    try:
        text = run.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return text, safe_load(text, str(run.config))
    except Exception:  # noqa: BLE001 - malformed or capped YAML: validation says why
        return text, None


def _key(text: str, data: Any) -> str:
    """What decides the selection: early stopping, the loss components, whether it runs
    an own script and the pipeline (stage modes and their overrides). A sweep's runs differ
    elsewhere (lr, dropout, seed)."""
    if isinstance(data, dict) and isinstance(data.get("training") or {}, dict):
        training = data.get("training") or {}
        return json.dumps([training.get("early_stopping"), training.get("loss"),
                           data.get("run") is not None, data.get("pipeline")],
                          sort_keys=True, default=str)
    return text


def read_selections(run: rundir.RunDir, config: RunConfig | None = None
                    ) -> dict[str, Selection]:
    """Each stage's selection, from the run's config.yaml (empty when it cannot be read)."""
    config = config or read_config(run)
    if config is None:
        return {}
    text, data = config
    key = _key(text, data)
    if key not in _CACHE:
        if len(_CACHE) >= 256:
            _CACHE.clear()
        _CACHE[key] = _from_config(text)
    return _CACHE[key]
