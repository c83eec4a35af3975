"""File data for hpcrun's trainer: Parquet reads the same rows as CSV, and the ``missing``
policies (mean, zero, drop, error) do what docs/config.md says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from trainer_harness import isolated_trainer, rows

from hpcrun.config import DataConfig
from hpcrun.errors import DataError
from hpcrun.train.data import load_data


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    yield from isolated_trainer(tmp_path, monkeypatch)


def frames(seed: int = 0, n: int = 40, holes: bool = True) -> dict[str, pd.DataFrame]:
    """Three splits with features a, b, c; with ``holes``, b is missing in rows 1 and 5
    and c in row 5 of every split."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, split in enumerate(("train", "val", "test")):
        x = rng.normal(size=(n, 3)) + i
        frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                              "label": (np.arange(n) % 3 == 0).astype(int)})
        if holes:
            frame.loc[[1, 5], "b"] = np.nan
            frame.loc[5, "c"] = np.nan
        out[split] = frame
    return out


def write(folder, tables: dict[str, pd.DataFrame], fmt: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for split, frame in tables.items():
        if fmt == "csv":
            frame.to_csv(folder / f"{split}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{split}.{fmt}", index=False)
    return str(folder)


def files(path: str, **keys) -> DataConfig:
    return DataConfig(source="files", path=path, **keys)


# --------------------------------------------------------------------------- parquet


@pytest.mark.parametrize("missing", ["mean", "zero", "drop"])
@pytest.mark.parametrize("suffix", ["parquet", "pq"])
def test_parquet_reads_the_same_rows_as_csv(tmp_path, missing, suffix):
    tables = frames()
    from_csv = load_data(files(write(tmp_path / "csv", tables, "csv"), missing=missing), 0)
    from_parquet = load_data(files(write(tmp_path / "pq", tables, suffix), missing=missing), 0)
    assert from_parquet.feature_names == from_csv.feature_names == ["a", "b", "c"]
    for split in ("train", "val", "test"):
        a, b = from_csv.splits[split], from_parquet.splits[split]
        assert torch.allclose(a.x, b.x, rtol=1e-6, atol=1e-6), split  # CSV text rounds
        assert torch.equal(a.y, b.y), split
    for key in ("rows", "missing_values", "rows_dropped", "positive_rate"):
        assert from_parquet.info[key] == from_csv.info[key], key


def test_one_parquet_file_with_a_split_column(tmp_path):
    tables = frames(holes=False)
    whole = pd.concat([frame.assign(split=split) for split, frame in tables.items()])
    whole.to_parquet(tmp_path / "all.parquet", index=False)
    data = load_data(files(str(tmp_path / "all.parquet"), standardize=False), 0)
    for split, frame in tables.items():
        expected = torch.tensor(frame[["a", "b", "c"]].to_numpy(), dtype=torch.float32)
        assert torch.equal(data.splits[split].x, expected)
        assert data.splits[split].y.tolist() == frame["label"].astype(float).tolist()


def test_trainer_on_parquet_writes_what_it_writes_on_csv(trainer):
    tables = frames(n=60)
    results = {}
    for fmt in ("csv", "parquet"):
        path = write(trainer.root / f"data-{fmt}", tables, fmt)
        exp = trainer.experiment(fmt, data={"source": "files", "path": path,
                                            "missing": "zero"},
                                 training={"epochs": 2, "batch_size": 16})
        run = trainer.run(exp)
        results[fmt] = [{k: v for k, v in r.items() if k != "Epoch Time"}
                        for r in rows(run / "train" / "training.csv")]
    assert len(results["csv"]) == 2
    for ours, theirs in zip(results["parquet"], results["csv"], strict=True):
        for key, value in theirs.items():
            assert float(ours[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), key


# --------------------------------------------------------------------------- missing


def test_missing_zero_fills_zero_and_keeps_every_row(tmp_path):
    tables = frames()
    data = load_data(files(write(tmp_path, tables, "csv"), missing="zero",
                           standardize=False), 0)
    for split, frame in tables.items():
        x = data.splits[split].x
        assert len(x) == len(frame)
        assert x[1, 1].item() == x[5, 1].item() == x[5, 2].item() == 0.0
        filled = frame[["a", "b", "c"]].fillna(0.0).to_numpy()
        assert np.allclose(x.numpy(), filled, atol=1e-6)
    assert data.info["missing_values"] == {f"{s}:{c}": k for s in ("train", "val", "test")
                                           for c, k in (("b", 2), ("c", 1))}
    assert data.info["rows_dropped"] == 0


def test_missing_mean_fills_every_split_with_the_training_mean(tmp_path):
    tables = frames()
    data = load_data(files(write(tmp_path, tables, "csv"), standardize=False), 0)
    train_mean = tables["train"][["b", "c"]].mean()  # pandas skips the missing values
    for split in ("train", "val", "test"):
        x = data.splits[split].x
        assert x[1, 1].item() == pytest.approx(train_mean["b"], rel=1e-5), split
        assert x[5, 2].item() == pytest.approx(train_mean["c"], rel=1e-5), split


def test_missing_drop_removes_the_incomplete_rows(tmp_path):
    tables = frames()
    data = load_data(files(write(tmp_path, tables, "csv"), missing="drop",
                           standardize=False), 0)
    for split, frame in tables.items():
        complete = frame.dropna()
        assert len(complete) == len(frame) - 2
        assert np.allclose(data.splits[split].x.numpy(),
                           complete[["a", "b", "c"]].to_numpy(), atol=1e-6)
        assert data.splits[split].y.tolist() == complete["label"].astype(float).tolist()
        assert data.info["rows"][split] == len(complete)
    assert data.info["rows_dropped"] == 6


def test_missing_error_refuses_in_one_line_naming_the_column(tmp_path):
    path = write(tmp_path, frames(), "csv")
    with pytest.raises(DataError) as caught:
        load_data(files(path, missing="error"), 0)
    message = str(caught.value)
    assert "'b'" in message and "train.csv" in message and "\n" not in message
    # complete data loads under the same policy
    clean = write(tmp_path / "clean", frames(holes=False), "csv")
    assert len(load_data(files(clean, missing="error"), 0).splits["train"]) == 40


def test_trainer_refuses_missing_values_under_error_with_one_line(trainer, capsys):
    path = write(trainer.root / "data", frames(), "parquet")
    exp = trainer.experiment(data={"source": "files", "path": path, "missing": "error"})
    run_dir = trainer.root / "run"
    assert trainer.main("--config", str(exp), "--run-dir", str(run_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing values" in err[0] and "'b'" in err[0], err
    assert not (run_dir / "train" / "training.csv").exists()
