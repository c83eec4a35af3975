"""``hpcrun.track``: the run directory's diagnostics from any PyTorch training loop.

A few calls give your own loop the files hpcrun's trainer writes (training.csv,
loss_components.csv, gradient_stats.csv, gradient_layers.csv, probability_stats.csv,
gpu_memory.csv, evaluation.csv, predictions.csv, checkpoints, status.json, metadata.json,
failure.json, MANIFEST.sha256), so ``hpcrun monitor``, the red flags, ``fetch``, ``report``
and ``compare`` work on your runs unchanged::

    import hpcrun.track as track

    run = track.init(model, config=vars(args), epochs=args.epochs)
    start = run.resume(model=model, optimizer=optimizer)        # 1, or the epoch after last.pt
    for epoch in range(start, args.epochs + 1):
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)                     # gradient norms before clipping; no host sync
            optimizer.step()
            if run.should_stop():              # SIGUSR1/SIGTERM, agreed across ranks
                run.exit_preempted()           # saves nothing itself: last.pt is the epoch's
        run.observe("val", val_probs, val_labels)
        run.epoch(val_loss=val_loss, metrics={"accuracy": acc},
                  lr=optimizer.param_groups[0]["lr"])
        run.save(epoch, model=model, optimizer=optimizer, best=improved)
    run.evaluate("test", test_probs, test_labels)
    run.finish()

Inside an hpcrun job the run directory is the job's (``HPCRUN_RUN_DIR``); anywhere else
``init`` creates ``runs/<name>/<run-id>/train/``. Under torchrun, call ``init`` after
``init_process_group``: rank 0 writes the shared files and every row is global (sums are
reduced over the ranks once an epoch). docs/track.md has the whole contract.

Nothing here imports torch until ``init`` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Run

__all__ = ["Run", "init", "active", "shutdown"]


def init(model: Any = None, *, name: str | None = None, config: dict[str, Any] | None = None,
         epochs: int | None = None, stage: str | None = None, runs_dir: str = "runs",
         diagnostics: bool = True, per_layer: bool = True) -> Run:
    """Start (or continue) tracking this process's run. ``model`` is what ``step`` takes the
    gradients of (the module you call ``backward`` through; a DDP wrapper is fine)."""
    from .run import Run

    return Run(model, name=name, config=config, epochs=epochs, stage=stage, runs_dir=runs_dir,
               diagnostics=diagnostics, per_layer=per_layer)


def active() -> Run | None:
    """The run ``init`` started in this process, if any (for callbacks and helpers)."""
    from . import run

    return run.ACTIVE


def shutdown(code: int = 0) -> None:
    """End a distributed program without the teardown crash: flush stdout, stderr and
    logging, destroy the default process group, then leave with ``code`` through
    ``os._exit``. gloo's worker threads can abort the process (SIGABRT, "terminate called
    without an active exception") during normal interpreter shutdown after training
    finished; hpcrun's own trainer leaves the same way. Call it last, on every rank."""
    import logging
    import os
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    torch_distributed = sys.modules.get("torch.distributed")
    if torch_distributed is not None and torch_distributed.is_available() and \
            torch_distributed.is_initialized():
        try:
            torch_distributed.destroy_process_group()
        except Exception:  # noqa: BLE001 - teardown must not turn success into failure
            pass
    os._exit(code)
