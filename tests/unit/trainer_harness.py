"""Run hpcrun's trainer in this process on tiny synthetic data, and read back what it wrote.

The trainer is started through its own entry point (``python -m hpcrun.train``'s ``main``)
with an experiment YAML written to a temporary folder, so the tests see what a user's run
would write. ``isolated_trainer`` (each module's ``trainer`` fixture) undoes what a run
leaves behind in the process (``trainer_process_state``): the log handlers it adds and the
level and propagation it sets on the ``hpcrun.train`` logger, the signal handlers it installs,
the global determinism flag and the environment variable that goes with it.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hpcrun.config import load_config
from hpcrun.train.data import load_data
from hpcrun.train.losses import TrainModule
from hpcrun.train.models import build_model

#: small enough that an epoch takes milliseconds: 210 train, 45 val, 45 test rows
TINY: dict[str, Any] = {
    "seed": 1,
    "data": {"rows": 300, "features": 6, "informative": 3},
    "model": {"hidden": [8], "dropout": 0.0},
    "training": {"epochs": 3, "batch_size": 32, "lr": 0.01, "scheduler": {"type": "none"}},
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


class Trainer:
    """Write an experiment, run the trainer on it, read the run directory."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def experiment(self, name: str = "exp", **sections: Any) -> Path:
        data = merged(TINY, sections)
        data["experiment"] = name
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def main(self, *argv: str) -> int:
        from hpcrun.train.__main__ import main

        return main(list(argv))

    def run(self, config: Path, *argv: str, run_dir: Path | None = None,
            expect: int = 0) -> Path:
        """Run the trainer on ``config`` into ``run_dir`` (a new folder by default)."""
        if run_dir is None:
            self.count += 1
            run_dir = self.root / f"run{self.count}"
        code = self.main("--config", str(config), "--run-dir", str(run_dir), *argv)
        assert code == expect, f"trainer exited {code}, expected {expect}"
        return run_dir

    def config(self, config: Path, *overrides: str):
        return load_config(str(config), list(overrides))


#: the signals a trainer run handles in its own process (preemption, and ``ulimit -f``)
TRAINER_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGXFSZ)


@contextlib.contextmanager
def trainer_process_state() -> Iterator[logging.Logger]:
    """Put back what a trainer run (``hpcrun.train``'s ``main``) changes in its process: the
    ``hpcrun.train`` logger's handlers (closing the ones it added), level and propagation, the
    signal handlers it installs, the determinism flag and ``CUBLAS_WORKSPACE_CONFIG`` (both set
    by ``training.deterministic``). Yields the logger."""
    logger = logging.getLogger("hpcrun.train")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    signals = {sig: signal.getsignal(sig) for sig in TRAINER_SIGNALS}
    deterministic = torch.are_deterministic_algorithms_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield logger
    finally:
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
        for sig, handler in signals.items():
            signal.signal(sig, handler)
        torch.use_deterministic_algorithms(deterministic)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def isolated_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Trainer]:
    """The body of each test module's ``trainer`` fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores; also keeps float sums in one order
    monkeypatch.chdir(tmp_path)
    try:
        with trainer_process_state():
            yield Trainer(tmp_path)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- reading


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def column(path: Path, name: str) -> list[float]:
    return [float(row[name]) for row in rows(path)]


def epochs(path: Path, key: str = "Epoch") -> list[int]:
    return [int(row[key]) for row in rows(path)]


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, loaded the way docs/run-directory.md says it loads."""
    return torch.load(path, map_location="cpu", weights_only=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load(path)["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                 atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def stage_module(cfg, state: dict[str, Any] | None = None) -> tuple[TrainModule, Any]:
    """The stage's model + loss as the trainer builds it, with a checkpoint's weights, and
    the data it trained on."""
    data = load_data(cfg.data, cfg.seed)
    loss = cfg.training.loss
    model = build_model(cfg.model, data.n_features,
                        loss.components.get("reconstruction", 0) > 0)
    module = TrainModule(model, loss)
    if state is not None:
        module.load_state_dict(state["module"])
    module.eval()
    return module, data


@torch.no_grad()
def split_loss(cfg, state: dict[str, Any], split: str = "val") -> float:
    """The stage's loss on a whole split with a checkpoint's weights."""
    module, data = stage_module(cfg, state)
    part = data.splits[split]
    total, _, _ = module(part.x, part.y)
    return float(total)
