"""Training data: the built-in synthetic generator and a CSV/Parquet loader.

Both return in-memory float tensors per split; the loop batches them by indexing (for tabular
data this is ~1.6x faster per epoch than a row-by-row DataLoader collate).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    splits: dict[str, Split]
    feature_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.source == "synthetic":
        return synthetic(cfg, seed)
    return from_files(cfg)


# --------------------------------------------------------------------------- synthetic


def synthetic(cfg: DataConfig, seed: int) -> Dataset:
    """Binary classification with ``informative`` useful features, deterministic in ``seed``.

    The logit is a linear score on the informative features plus one pairwise interaction
    (so a hidden layer helps), plus Gaussian noise of scale ``noise``; the label threshold is
    set so that ``positive_rate`` of rows are positive.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg.rows, cfg.features)).astype(np.float32)
    informative = rng.choice(cfg.features, size=cfg.informative, replace=False)
    weights = rng.normal(0.0, 1.0, size=cfg.informative)
    score = x[:, informative] @ weights * (2.0 / math.sqrt(cfg.informative))
    if cfg.informative >= 2:
        score = score + 0.75 * x[:, informative[0]] * x[:, informative[1]]
    score = score + cfg.noise * rng.standard_normal(cfg.rows)
    threshold = np.quantile(score, 1.0 - cfg.positive_rate)
    y = (score > threshold).astype(np.float32)

    order = rng.permutation(cfg.rows)
    n_test = int(round(cfg.rows * cfg.test_fraction))
    n_val = int(round(cfg.rows * cfg.val_fraction))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
             "train": order[n_test + n_val:]}
    for name, idx in parts.items():
        if len(idx) == 0:  # train keeps >10% of the rows (config), so val or test
            raise DataError(
                f"data: the synthetic {name} split is empty: data.rows {cfg.rows} x "
                f"data.{name}_fraction {getattr(cfg, f'{name}_fraction')} rounds to 0 rows",
                hint=f"raise data.rows or data.{name}_fraction")
    arrays = {name: (x[idx], y[idx]) for name, idx in parts.items()}
    names = [f"f{i:03d}" for i in range(cfg.features)]
    info = {"source": "synthetic", "informative_features": sorted(int(i) for i in informative)}
    return _finish(arrays, names, cfg, info)


# --------------------------------------------------------------------------- files


def _read_table(path: Path, fmt: str) -> Any:
    import pandas as pd

    kind = fmt if fmt != "auto" else ("parquet" if path.suffix in (".parquet", ".pq") else "csv")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as {kind}: {first}") from None


def _find_split_file(folder: Path, split: str, fmt: str) -> Path | None:
    suffixes = {"csv": [".csv"], "parquet": [".parquet", ".pq"]}.get(fmt, [".csv", ".parquet",
                                                                           ".pq"])
    names = [split] + [alias for alias, canon in _SPLIT_ALIASES.items()
                       if canon == split and alias != split]
    for name in names:
        for suffix in suffixes:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def from_files(cfg: DataConfig) -> Dataset:
    path = Path(str(cfg.path)).expanduser()
    if not path.is_absolute():  # relative to the project (or its synced data on a remote)
        path = Path(os.environ.get("HPCRUN_DATA_DIR", ".")) / path
    if not path.exists():
        raise DataError(f"data.path {str(path)!r} does not exist")
    frames: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path.is_dir():
        for split in SPLIT_NAMES:
            found = _find_split_file(path, split, cfg.format)
            if found is None:
                raise DataError(f"data.path {str(path)!r} has no {split} file (expected "
                                f"{split}.csv or {split}.parquet)")
            frames[split] = _read_table(found, cfg.format)
            sources[split] = str(found)
    else:
        table = _read_table(path, cfg.format)
        column = cfg.split_column or "split"
        if column not in table.columns:
            raise DataError(f"{path}: no split column {column!r}; set data.split_column, or give "
                            "a directory with train/val/test files")
        canon = table[column].astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
        unknown = table[column][canon.isna()]
        if len(unknown):
            raise DataError(f"{path}: split column {column!r} has value {unknown.iloc[0]!r}; "
                            "expected train, val or test")
        for split in SPLIT_NAMES:
            part = table[canon == split].drop(columns=[column])
            if part.empty:
                raise DataError(f"{path}: split column {column!r} has no {split!r} rows")
            frames[split] = part.reset_index(drop=True)
            sources[split] = str(path)

    label = cfg.label_column
    for split, frame in frames.items():
        if label not in frame.columns:
            raise DataError(f"{sources[split]}: label column {label!r} not found (columns: "
                            f"{', '.join(map(str, frame.columns[:12]))}); set data.label_column")
    if cfg.feature_columns:
        features = list(cfg.feature_columns)
        for split, frame in frames.items():
            missing = [c for c in features if c not in frame.columns]
            if missing:
                raise DataError(f"{sources[split]}: feature column {missing[0]!r} not found")
    else:
        exclude = {label, cfg.split_column or "split"}
        features = [str(c) for c in frames["train"].columns if c not in exclude]
    if not features:
        raise DataError(f"{sources['train']}: no feature columns besides the label")

    import pandas as pd

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    missing_counts: dict[str, int] = {}
    rows_dropped = 0
    train_means: np.ndarray | None = None
    for split in SPLIT_NAMES:
        frame = frames[split]
        for column in features:
            series = frame[column]
            if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
                converted = pd.to_numeric(series, errors="coerce")
                bad = series[converted.isna() & series.notna()]
                if len(bad):
                    raise DataError(f"{sources[split]}: feature column {column!r} is not "
                                    f"numeric (value {bad.iloc[0]!r}); drop it or list "
                                    "data.feature_columns")
        labels = frame[label]
        if labels.isna().any():
            raise DataError(f"{sources[split]}: label column {label!r} has "
                            f"{int(labels.isna().sum())} missing values")
        y = _binary_labels(labels, sources[split], label)
        x = frame[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        nan_mask = np.isnan(x)
        for j, column in enumerate(features):
            count = int(nan_mask[:, j].sum())
            if count:
                missing_counts[f"{split}:{column}"] = count
        if nan_mask.any():
            if cfg.missing == "error":
                first = features[int(np.where(nan_mask.any(axis=0))[0][0])]
                raise DataError(f"{sources[split]}: column {first!r} has missing values and "
                                "data.missing is 'error'; use mean, zero or drop")
            if cfg.missing == "drop":
                keep = ~nan_mask.any(axis=1)
                rows_dropped += int((~keep).sum())
                x, y = x[keep], y[keep]
            else:
                if split == "train" or train_means is None:
                    train_means = np.nan_to_num(np.nanmean(np.where(nan_mask, np.nan, x), axis=0))
                fill = train_means if cfg.missing == "mean" else np.zeros(x.shape[1])
                x = np.where(nan_mask, fill[None, :], x)
        elif split == "train":
            train_means = x.mean(axis=0)
        if len(y) == 0:
            raise DataError(f"{sources[split]}: no usable rows in the {split} split")
        arrays[split] = (x.astype(np.float32), y.astype(np.float32))
    info = {"source": "files", "files": sources, "missing_values": missing_counts,
            "missing_policy": cfg.missing, "rows_dropped": rows_dropped}
    return _finish(arrays, features, cfg, info)


def _binary_labels(labels: Any, source: str, column: str) -> np.ndarray:
    values = labels.to_numpy()
    if values.dtype == bool:
        return values.astype(np.float32)
    try:
        numeric = values.astype(np.float64)
    except (TypeError, ValueError):
        lowered = labels.astype(str).str.strip().str.lower()
        mapping = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "1": 1.0, "0": 0.0}
        mapped = lowered.map(mapping)
        if mapped.isna().any():
            raise DataError(f"{source}: label column {column!r} must be binary (0/1); found "
                            f"{labels[mapped.isna()].iloc[0]!r}") from None
        return mapped.to_numpy(dtype=np.float32)
    bad = ~np.isin(numeric, (0.0, 1.0))
    if bad.any():
        raise DataError(f"{source}: label column {column!r} must be binary (0/1); found "
                        f"{values[bad][0]!r}")
    return numeric.astype(np.float32)


def _finish(arrays: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str],
            cfg: DataConfig, info: dict[str, Any]) -> Dataset:
    if cfg.standardize:
        train_x = arrays["train"][0]
        mean = train_x.mean(axis=0)
        std = train_x.std(axis=0)
        std[std == 0] = 1.0
        arrays = {k: ((x - mean) / std, y) for k, (x, y) in arrays.items()}
    splits = {k: Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                       torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)))
              for k, (x, y) in arrays.items()}
    info = {**info, "rows": {k: len(v) for k, v in splits.items()},
            "positive_rate": {k: round(float(v.y.mean()), 6) for k, v in splits.items()},
            "features": len(names)}
    return Dataset(splits=splits, feature_names=names, info=info)
