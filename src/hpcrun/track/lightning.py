"""``hpcrun.track.lightning.HpcrunCallback``: hpcrun's run directory from a Lightning Trainer.

::

    from hpcrun.track.lightning import HpcrunCallback, last_checkpoint

    trainer = L.Trainer(max_epochs=10, callbacks=[HpcrunCallback(config=vars(args))])
    trainer.fit(module, datamodule, ckpt_path=last_checkpoint())   # resumes after a requeue
    trainer.test(module, datamodule)

What it writes, from Lightning's hooks (every rank runs them; rank 0 writes):

- per optimizer step (``on_before_optimizer_step``, before Lightning clips): the gradient
  norms, total and per layer; the loss from ``training_step``'s output (``on_train_batch_end``);
- per epoch (``on_train_epoch_end``, after validation): training.csv from the trainer's
  logged metrics: ``val_loss`` (or ``val_loss_key``) is Val Loss, every other ``val_<name>`` a
  ``Val <name>`` column; the learning rate of the first optimizer; gpu_memory.csv; status;
- probabilities: a ``validation_step`` or ``test_step`` that returns
  ``{"probs": ..., "labels": ...}`` (binary ``(N,)`` or multiclass ``(N, C)``) feeds
  probability_stats.csv, and ``trainer.test`` evaluation.csv and predictions.csv;
- ``checkpoints/last.ckpt`` at every epoch's end and on preemption (SIGUSR1/SIGTERM, agreed
  across ranks, then exit code 75); ``last_checkpoint()`` gives it to ``fit(ckpt_path=...)``;
- failure.json when the Trainer raises.

Needs the ``lightning`` package: hpcrun's ``lightning`` extra (``pip install -e
'.[lightning]'`` in hpcrun's checkout), or ``pip install lightning``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from .. import rundir
from .run import Run

LAST = "last.ckpt"


def last_checkpoint(stage: str | None = None) -> str | None:
    """This job's ``last.ckpt`` when there is one (a resumed or requeued job), for
    ``Trainer.fit(ckpt_path=...)``; None otherwise (and outside an hpcrun job)."""
    root = os.environ.get("HPCRUN_RUN_ROOT")
    stage = stage or os.environ.get("HPCRUN_STAGE")
    if root and stage:
        folder = Path(root) / stage / rundir.CHECKPOINTS
    elif os.environ.get("HPCRUN_RUN_DIR"):
        folder = Path(os.environ["HPCRUN_RUN_DIR"]) / rundir.CHECKPOINTS
    else:
        return None
    path = folder / LAST
    return str(path) if path.exists() else None


def _outputs(outputs: Any) -> tuple[Any, Any] | None:
    if isinstance(outputs, dict) and "probs" in outputs and "labels" in outputs:
        return outputs["probs"], outputs["labels"]
    return None


class HpcrunCallback(Callback):
    """Writes the run directory of hpcrun's trainer from a Lightning Trainer (see the module's
    documentation for what comes from which hook)."""

    def __init__(self, *, name: str | None = None, config: dict[str, Any] | None = None,
                 val_loss_key: str = "val_loss", save_last: bool = True,
                 diagnostics: bool = True, per_layer: bool = True):
        super().__init__()
        self.name, self.config = name, config
        self.val_loss_key = val_loss_key
        self.save_last = save_last
        self.diagnostics, self.per_layer = diagnostics, per_layer
        self.run: Run | None = None
        self._test: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- start ------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.run is None:  # the process group is up by now: rank 0 writes
            self.run = Run(pl_module, name=self.name, config=self.config,
                           epochs=trainer.max_epochs if trainer.max_epochs and
                           trainer.max_epochs > 0 else None,
                           diagnostics=self.diagnostics, per_layer=self.per_layer)
            self.run.should_stop()  # installs the SIGUSR1/SIGTERM handlers

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        assert self.run is not None
        self.run.continue_after(int(trainer.current_epoch))  # restored from ckpt_path

    # -- steps ------------------------------------------------------------------------------

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.run is not None:  # the gradients, before Lightning clips them
            clip = trainer.gradient_clip_val if trainer.gradient_clip_algorithm in (
                None, "norm") else None
            self.run.step(None, clip=float(clip) if clip else None)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.run is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.run.step(loss, gradients=False)
        pair = _outputs(outputs)
        if pair is not None:
            self.run.observe("train", *pair)
        if self.run.should_stop():
            self._preempted(trainer)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        pair = _outputs(outputs)
        if self.run is not None and pair is not None and not trainer.sanity_checking:
            self.run.observe("val", *pair)

    # -- epochs -----------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None:
            return
        logged = {k: v for k, v in trainer.callback_metrics.items()
                  if isinstance(v, (torch.Tensor, float, int))}
        val_loss = logged.get(self.val_loss_key)
        metrics = {k.removeprefix("val_"): v for k, v in sorted(logged.items())
                   if k.startswith("val_") and k != self.val_loss_key}
        lr = None
        if trainer.optimizers:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.run.epoch(trainer.current_epoch + 1, val_loss=val_loss, metrics=metrics, lr=lr)
        if self.save_last:
            trainer.save_checkpoint(str(self.run.checkpoints / LAST))

    def _preempted(self, trainer: Any) -> None:
        assert self.run is not None
        if self.save_last:  # the epoch in progress is run again from its start on resume
            trainer.save_checkpoint(str(self.run.checkpoints / LAST))
        self.run.exit_preempted()

    # -- test -------------------------------------------------------------------------------

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        pair = _outputs(outputs)
        if pair is not None:
            self._test.append((pair[0].detach().cpu(), pair[1].detach().cpu()))

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None or not self._test:
            return
        probs = torch.cat([p for p, _ in self._test])
        labels = torch.cat([y for _, y in self._test])
        self._test = []
        self.run.evaluate("test", probs, labels)

    # -- end --------------------------------------------------------------------------------

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.run is not None and not self.run._failed:
            self.run.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.run is not None and not isinstance(exception, (SystemExit, KeyboardInterrupt)):
            self.run._record_failure(exception)
