"""``hpcrun.track.Run``: the writer of one stage of a run directory from your own loop.

Long (about 600 lines) because ``Run`` is the whole public API a training loop calls (step,
observe, epoch, save/resume, should_stop, evaluate, finish) and each method keeps its
distributed and crash-safety rules next to it; the files it writes through and the
diagnostics it sums are in ``records`` and ``diagnostics``.
"""

from __future__ import annotations

import atexit
import math
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import rundir
from ..errors import EXIT_REQUEUE, BadInput
from ..formats import STAGE
from . import checkpoint, records
from .diagnostics import GradientTracker, ProbabilitySums, memory_row
from .distributed import DistContext, current
from .preemption import StopRequest
from .writes import CsvLog, writing

#: the run ``init`` started in this process
ACTIVE: Run | None = None

_EPOCH_FILES = (rundir.TRAINING, rundir.LOSS_COMPONENTS, rundir.GRADIENT_STATS,
                rundir.GRADIENT_LAYERS, rundir.PROBABILITY_STATS, rundir.GPU_MEMORY)


def _float(value: Any) -> float:
    """A number from a float, an int or a one-element tensor (read once an epoch)."""
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor):
        return float(value.detach().reshape(-1)[0].item()) if value.numel() else math.nan
    return float(value)


def _unwrap(model: Any) -> Any:
    """The module inside a DDP/FSDP wrapper (its state dict has no ``module.`` prefix)."""
    return getattr(model, "module", model)


def _numpy(value: Any) -> Any:
    import numpy as np

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Run:
    """One stage of a run directory, written from your training loop. Make it with
    ``hpcrun.track.init``; its methods are listed in docs/track.md."""

    def __init__(self, model: Any = None, *, name: str | None = None,
                 config: Mapping[str, Any] | None = None, epochs: int | None = None,
                 stage: str | None = None, runs_dir: str = "runs", diagnostics: bool = True,
                 per_layer: bool = True):
        global ACTIVE
        self.ctx: DistContext = current()
        self.model = model
        self.diagnostics = diagnostics
        self.per_layer = per_layer
        self.epochs = epochs
        self.wrapped = os.environ.get("HPCRUN_RANK_WRAPPED") == "1"
        root, self.stage, experiment = self._locate(name, stage, runs_dir, config)
        if not STAGE.matches(self.stage) or self.stage.lower() in rundir.RESERVED_STAGE_NAMES:
            raise BadInput(f"hpcrun.track: stage {self.stage!r} must {STAGE.rule}, and not one "
                           f"of {', '.join(rundir.RESERVED_STAGE_NAMES)}")
        self.root = Path(root)
        self.dir = self.root / self.stage
        self.run_dir = rundir.RunDir(self.root)
        self.records = records.RunRecords(self.root)
        self.last_epoch = 0
        #: the checkpoint ``resume`` loaded (its ``extra`` entries included), else None
        self.resumed_from: dict[str, Any] | None = None
        self._tracker: GradientTracker | None = None
        self._params: list[torch.nn.Parameter] = []
        self._components: list[str] | None = None
        self._loss: torch.Tensor | None = None
        self._probs: dict[str, ProbabilitySums] = {}
        self._metrics: list[str] | None = None
        self._logs: dict[str, CsvLog] = {}
        self._stop: StopRequest | None = None
        self._finished = False
        self._failed = False
        self._epoch_began = time.perf_counter()
        with writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
            self.run_dir.logs.mkdir(parents=True, exist_ok=True)
        hosts = sorted(set(self.ctx.gather_objects(self.ctx.host)))
        if self.is_main:
            self._start(experiment, config, hosts)
        pid_file = self.run_dir.root / rundir.rank_pid(self.ctx.rank)
        with writing(pid_file):  # where a job script forwards SIGUSR1 to
            rundir.write_atomic(pid_file, f"{self.ctx.host} {os.getpid()}\n".encode())
        ACTIVE = self
        self._previous_hook = sys.excepthook
        sys.excepthook = self._uncaught
        atexit.register(self._at_exit)

    # -- where ------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def _locate(self, name: str | None, stage: str | None, runs_dir: str,
                config: Mapping[str, Any] | None) -> tuple[str, str, str]:
        """(run directory, stage, experiment): the job's, or a new one under ``runs_dir``."""
        env = os.environ
        if env.get("HPCRUN_RUN_ROOT") and env.get("HPCRUN_STAGE"):
            return (env["HPCRUN_RUN_ROOT"], stage or env["HPCRUN_STAGE"],
                    env.get("HPCRUN_EXPERIMENT") or Path(env["HPCRUN_RUN_ROOT"]).parent.name)
        if env.get("HPCRUN_RUN_DIR"):
            given = Path(env["HPCRUN_RUN_DIR"])
            return str(given.parent), stage or given.name, given.parent.parent.name
        experiment = name or Path(sys.argv[0] or "run").stem or "run"
        if not rundir_name_ok(experiment):
            raise BadInput(f"hpcrun.track: run name {experiment!r} must be letters, digits, "
                           "'_', '-' or '.'")
        stage = stage or "train"
        path = None
        if self.is_main:
            run_id = rundir.new_run_id(time.time(), secrets.token_hex(2))
            path = str(Path(runs_dir) / experiment / run_id)
        if self.ctx.distributed:
            path = self.ctx.broadcast_object(path)
        elif int(env.get("WORLD_SIZE", "1") or 1) > 1:
            raise BadInput("hpcrun.track.init: WORLD_SIZE is over 1 but no process group is "
                           "set up; call torch.distributed.init_process_group first")
        assert path is not None
        if self.is_main:
            self._write_config(Path(path), experiment, stage, config)
        return path, stage, experiment

    @staticmethod
    def _write_config(root: Path, experiment: str, stage: str,
                      config: Mapping[str, Any] | None) -> None:
        """config.yaml of a run made outside hpcrun: its name, your config as ``params``
        and the command that ran, so ``compare`` can tell runs apart."""
        import json

        import yaml

        script = sys.argv[0] if sys.argv and sys.argv[0] else "python"
        # the arguments as they were: braces are literal, not placeholders
        args = [a.replace("{", "{{").replace("}", "}}") for a in sys.argv[1:]]
        run: dict[str, Any] = ({"script": script, "args": args}
                               if script.endswith(".py") else {"command": [script, *args]})
        params = json.loads(json.dumps(dict(config or {}), default=str))
        text = yaml.safe_dump({"experiment": experiment, "pipeline": [{"name": stage}],
                               "run": run, "params": params}, sort_keys=False)
        with writing(root / rundir.CONFIG):
            rundir.write_atomic(root / rundir.CONFIG, text.encode())

    def _start(self, experiment: str, config: Mapping[str, Any] | None,
               hosts: list[str]) -> None:
        extra = {"device": str(self.ctx.device), "dist_backend": self.ctx.backend}
        if config is not None:
            import json

            extra["script_config"] = json.loads(json.dumps(dict(config), default=str))
        with writing(self.run_dir.status):
            if self.wrapped:  # hpcrun.rank started the stage: add what only the program knows
                meta = rundir.read_json(self.run_dir.metadata) or {}
                meta.update(world_size=self.ctx.world_size, hosts=hosts, **extra)
                rundir.write_json(self.run_dir.metadata, meta)
                self.records.load()
                self.records.write_status(epochs=self.epochs)
            else:
                records.set_aside_failure(self.root)
                stages = _pipeline(self.root) or [self.stage]
                self.records.start(experiment, stages, world_size=self.ctx.world_size,
                                   hosts=hosts, extra=extra)
                self.records.begin_stage(self.stage, self.epochs)

    # -- per step ---------------------------------------------------------------------------

    def step(self, loss: Any = None, components: Mapping[str, Any] | None = None,
             clip: float | None = None, gradients: bool = True) -> torch.Tensor | None:
        """Record one optimizer step: call it after ``loss.backward()`` and before
        ``optimizer.step()``. Adds the loss (and named components) to the epoch's training
        loss and the model's gradient norms, total and per layer, to gradient_stats.csv:
        computed on the device, never read back during the epoch. With ``clip``, it clips the
        gradients to that total norm as ``clip_grad_norm_`` would (the norms recorded are
        those before clipping). ``gradients=False`` records the loss only (for a framework
        whose hook that sees the loss comes after the one that sees the gradients). Returns
        the total gradient norm (a tensor), or None."""
        if loss is not None:
            self._add_loss(loss, components)
        if not gradients:
            return None
        if self.model is None or not self.diagnostics:
            if clip and self.model is not None:
                return torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            return None
        if self._tracker is None:
            named = [(n, p) for n, p in _unwrap(self.model).named_parameters()
                     if p.requires_grad]
            self._params = [p for _, p in named]
            self._tracker = GradientTracker([n for n, _ in named], clip, self.ctx.device,
                                            record=True, per_layer=self.per_layer)
        self._tracker.max_norm = clip or None
        return self._tracker.clip(self._params)

    def _add_loss(self, loss: Any, components: Mapping[str, Any] | None) -> None:
        if self._components is None:
            self._components = list(components or {})
        names = self._components
        given = components or {}
        if set(given) != set(names):
            raise ValueError(f"hpcrun.track: step() got loss components {sorted(given)}; the "
                             f"first step had {names} (give the same names every step)")
        device = self.ctx.device
        parts = [torch.ones((), dtype=torch.float64, device=device),
                 torch.as_tensor(loss, device=device).detach().double().reshape(())]
        parts += [torch.as_tensor(given[n], device=device).detach().double().reshape(())
                  for n in names]
        values = torch.stack(parts)
        if self._loss is None:
            self._loss = values
        else:
            self._loss += values

    def observe(self, phase: str, probs: Any, labels: Any) -> None:
        """Add predicted probabilities with their labels to this epoch's separation statistics
        for ``phase`` (``train``, ``val``, ...): binary ``(N,)`` or multiclass ``(N, C)``
        (one-vs-rest, averaged over classes). Kept on the device until ``epoch``."""
        if not self.diagnostics:
            return
        sums = self._probs.setdefault(phase, ProbabilitySums(self.ctx.device))
        sums.add(torch.as_tensor(probs), torch.as_tensor(labels))

    # -- preemption -------------------------------------------------------------------------

    def should_stop(self) -> bool:
        """True once SIGUSR1 or SIGTERM reached any rank (the ranks agree, one step later,
        without a host synchronisation of its own). Call it once per step; the first call
        (or ``resume``) installs the signal handlers."""
        if self._stop is None:
            self._stop = StopRequest(self.ctx)
        return self._stop.poll()

    def exit_preempted(self, message: str | None = None) -> None:
        """Record the stop (status PREEMPTED, the manifest) and exit with code 75: a SLURM job
        requeues itself and the next start resumes from ``last.pt``."""
        self._close_logs()
        if self.is_main:
            self.records.load()
            self.records.preempted(self.stage, message or (
                f"stop requested (SIGUSR1/SIGTERM) during stage {self.stage}; resume continues "
                f"after epoch {self.last_epoch}"))
            rundir.write_manifest(self.root)
        self._finished = True
        sys.stdout.flush()
        raise SystemExit(EXIT_REQUEUE)

    # -- per epoch --------------------------------------------------------------------------

    def epoch(self, epoch: int | None = None, *, train_loss: Any = None, val_loss: Any = None,
              metrics: Mapping[str, Any] | None = None, lr: Any = None,
              val_components: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Write the epoch's rows: training.csv (``Val <metric>`` for each of ``metrics``),
        loss_components.csv, gradient_stats.csv, probability_stats.csv, gpu_memory.csv, and
        the heartbeat in status.json. Every rank calls it; values given per rank are averaged
        over the ranks, the steps' losses and probabilities summed (one all-reduce). The
        training loss defaults to the mean of the losses ``step`` saw. Returns the row."""
        epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        elapsed = time.perf_counter() - self._epoch_began
        metrics = dict(metrics or {})
        if self._metrics is None:
            self._metrics = list(metrics)
        unknown = [m for m in metrics if m not in self._metrics]
        if unknown:
            raise ValueError(f"hpcrun.track: epoch() got metrics {unknown} that the first epoch "
                             f"did not have ({self._metrics}); training.csv keeps its columns")
        components = list(val_components or {})
        if components and self._components is not None and set(components) != set(
                self._components):
            raise ValueError(f"hpcrun.track: val_components {components} differ from the "
                             f"steps' components {self._components}")
        # one all-reduce: [steps, loss sum, component sums] + each phase's probability sums
        # + the values given per rank (averaged)
        k = len(self._components or [])
        loss = self._loss if self._loss is not None else torch.zeros(
            2 + k, dtype=torch.float64, device=self.ctx.device)
        phases = sorted(self._probs)
        probs = [self._probs[p].values for p in phases]
        given = [_float(train_loss), _float(val_loss), _float(lr),
                 *(_float(metrics.get(m)) for m in self._metrics),
                 *(_float((val_components or {}).get(c)) for c in (self._components or []))]
        flat = torch.cat([loss, *(v.reshape(-1) for v in probs if v is not None),
                          torch.tensor(given, dtype=torch.float64, device=self.ctx.device)])
        values = self.ctx.all_reduce_sum(flat).cpu().tolist()
        world = self.ctx.world_size
        steps, loss_sum, comp_sums = values[0], values[1], values[2:2 + k]
        at = 2 + k
        phase_stats = {}
        for phase, tensor in zip(phases, probs, strict=True):
            if tensor is None:
                continue
            size = tensor.numel()
            phase_stats[phase] = ProbabilitySums.stats(values[at:at + size], size // 6)
            at += size
        mine = [v / world for v in values[at:]]
        user_train, user_val, user_lr = mine[0], mine[1], mine[2]
        user_metrics = dict(zip(self._metrics, mine[3:3 + len(self._metrics)], strict=True))
        user_components = mine[3 + len(self._metrics):]
        train_mean = loss_sum / steps if steps else math.nan
        row = {"Epoch": epoch, "Epoch Time": elapsed,
               "Train Loss": user_train if train_loss is not None else train_mean,
               "Val Loss": user_val, "Learning Rate": user_lr}
        for m in self._metrics:
            row[f"Val {rundir.METRIC_LABELS.get(m, m)}"] = user_metrics[m]
        memory = self.ctx.gather_objects(memory_row(self.ctx, epoch)) if self.diagnostics \
            else []
        if self.is_main:
            self._write_epoch(epoch, row, steps, comp_sums, train_mean, user_val,
                              user_components if val_components else None, phase_stats, memory)
        elif self._tracker is not None:
            self._tracker.reset()
        self._loss = None
        self._probs = {}
        self.last_epoch = epoch
        self._epoch_began = time.perf_counter()
        return row

    def _open(self, name: str, columns: Sequence[str]) -> CsvLog:
        if name not in self._logs:
            self._logs[name] = CsvLog(self.dir / name, columns)
        return self._logs[name]

    def _write_epoch(self, epoch: int, row: dict[str, Any], steps: float,
                     comp_sums: list[float], train_mean: float, val_loss: float,
                     val_components: list[float] | None, phase_stats: dict[str, dict],
                     memory: list[dict[str, Any]]) -> None:
        training = self._open(rundir.TRAINING, rundir.training_columns(self._metrics or []))
        training.write(row)
        if self.diagnostics:
            names = self._components or []
            components = self._open(rundir.LOSS_COMPONENTS,
                                    rundir.loss_component_columns(names, False))
            if steps:
                components.write({"epoch": epoch, "phase": "train", "total": train_mean,
                                  **{n: s / steps for n, s in zip(names, comp_sums,
                                                                  strict=True)}})
            if val_components is not None:
                components.write({"epoch": epoch, "phase": "val", "total": val_loss,
                                  **dict(zip(names, val_components, strict=True))})
            if self._tracker is not None:
                grad_row, layer_rows = self._tracker.epoch_rows(epoch)
                self._open(rundir.GRADIENT_STATS, rundir.GRADIENT_COLUMNS).write(grad_row)
                if self.per_layer:
                    layers = self._open(rundir.GRADIENT_LAYERS, rundir.GRADIENT_LAYER_COLUMNS)
                    for layer_row in layer_rows:
                        layers.write(layer_row)
            if phase_stats:
                stats = self._open(rundir.PROBABILITY_STATS, rundir.PROBABILITY_COLUMNS)
                for phase, values in phase_stats.items():
                    stats.write({"epoch": epoch, "phase": phase, **values})
            gpu = self._open(rundir.GPU_MEMORY, rundir.MEMORY_COLUMNS)
            for memory_row_ in memory:
                gpu.write(memory_row_)
        for handle in self._logs.values():
            handle.sync()
        with writing(self.run_dir.status):
            self.records.load()
            self.records.write_status(state="RUNNING", stage=self.stage, epoch=epoch,
                                      epochs=self.epochs)

    # -- checkpoints ------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        """This stage's checkpoint folder (``last.pt``, ``best.pt``, ``epoch_NNNN.pt``)."""
        return self.dir / rundir.CHECKPOINTS

    def save(self, epoch: int | None = None, *, model: Any = None, optimizer: Any = None,
             scheduler: Any = None, scaler: Any = None, best: bool = False,
             every: int | None = None, extra: Mapping[str, Any] | None = None) -> Path:
        """Save ``last.pt`` atomically (and link it as ``best.pt`` when ``best``, and as
        ``epoch_NNNN.pt`` every ``every`` epochs): the model (unwrapped), optimizer,
        scheduler, AMP scaler, the epoch, every rank's RNG states and ``extra`` (plain values
        and tensors). Every rank calls it (the RNG states are gathered); rank 0 writes."""
        epoch = self.last_epoch if epoch is None else int(epoch)
        model = model if model is not None else self.model
        rng = self.ctx.gather_objects(checkpoint.rng_state())
        last = self.checkpoints / rundir.LAST_CKPT
        if self.is_main:
            if not getattr(self, "_cleaned", False):
                checkpoint.remove_partial(self.checkpoints)
                self._cleaned = True
            state: dict[str, Any] = {"epoch": epoch, "rng": rng, "stage": self.stage,
                                     "world_size": self.ctx.world_size}
            for key, thing in (("model", _unwrap(model) if model is not None else None),
                               ("optimizer", optimizer), ("scheduler", scheduler),
                               ("scaler", scaler)):
                if thing is not None:
                    state[key] = thing.state_dict()
            state["extra"] = dict(extra or {})
            checkpoint.save(state, last)
            if best:
                checkpoint.link(last, self.checkpoints / rundir.BEST_CKPT)
            if every and epoch and epoch % every == 0:
                checkpoint.link(last, self.checkpoints / f"epoch_{epoch:04d}.pt")
        return last

    def resume(self, *, model: Any = None, optimizer: Any = None, scheduler: Any = None,
               scaler: Any = None) -> int:
        """Load this stage's ``last.pt`` into what is given, restore this rank's RNG states,
        drop CSV rows past its epoch and return the epoch to continue from (1 when there is
        no checkpoint). Also installs the preemption signal handlers (see ``should_stop``)."""
        if self._stop is None:
            self._stop = StopRequest(self.ctx)
        model = model if model is not None else self.model
        state = checkpoint.load_agreed(self.ctx, self.checkpoints / rundir.LAST_CKPT)
        if state is None:
            self._truncate(0)  # rows of an epoch that a stop cut short
            return 1
        for key, thing in (("model", _unwrap(model) if model is not None else None),
                           ("optimizer", optimizer), ("scheduler", scheduler),
                           ("scaler", scaler)):
            if thing is not None and key in state:
                thing.load_state_dict(state[key])
        rng = state.get("rng") or []
        if len(rng) == self.ctx.world_size:
            checkpoint.set_rng_state(rng[self.ctx.rank])
        completed = int(state.get("epoch", 0))
        self.resumed_from = state
        return self.continue_after(completed)

    def continue_after(self, completed: int) -> int:
        """Continue after epoch ``completed`` (a checkpoint restored some other way, e.g. by
        Lightning): rows past it are dropped so no epoch appears twice. Returns the next
        epoch."""
        self._truncate(completed)
        if self.is_main and completed:
            print(f"hpcrun.track: stage {self.stage}: resuming after epoch {completed}",
                  flush=True)
        self.last_epoch = completed
        self._epoch_began = time.perf_counter()
        return completed + 1

    def _truncate(self, completed: int) -> None:
        if self.is_main:
            for name in _EPOCH_FILES:
                with writing(self.dir / name):
                    rundir.truncate_epochs(self.dir / name, completed)

    # -- at the end -------------------------------------------------------------------------

    def evaluate(self, split: str, probs: Any, labels: Any, *, kind: str | None = None,
                 threshold: float = 0.5, index: Any = None) -> dict[str, float]:
        """The final evaluation of ``split``: metrics as scikit-learn defines them into
        evaluation.csv, each sample into predictions.csv, the separation into
        probability_stats.csv (phase ``eval_<split>``). ``kind``: ``binary`` (probabilities
        ``(N,)``), ``multiclass`` (``(N, C)``, one-vs-rest macro averages) or ``regression``
        (predictions and targets: rmse, mae, r2); by default from the shapes. Every rank
        calls it with its own samples; they are gathered to rank 0."""
        import numpy as np

        from .metrics import binary_metrics, multiclass_metrics, regression_metrics

        p, y = _numpy(probs), _numpy(labels)
        idx = _numpy(index) if index is not None else None
        gathered = self.ctx.gather_objects((p, y, idx))
        if not self.is_main:
            return {}
        p = np.concatenate([g[0] for g in gathered])
        y = np.concatenate([g[1] for g in gathered])
        idx = (np.concatenate([g[2] for g in gathered]) if all(g[2] is not None
                                                                for g in gathered)
               else np.arange(len(y)))
        if kind is None:
            kind = "multiclass" if p.ndim == 2 and p.shape[1] > 1 else "binary"
        finite = bool(np.isfinite(p).all())  # a model that diverged: metrics are NaN
        if kind == "binary":
            p = p.reshape(-1)
            result = binary_metrics(y, p, threshold) if finite else dict.fromkeys(
                rundir.EVALUATION_COLUMNS[1:], math.nan)
            columns, row = rundir.EVALUATION_COLUMNS, [split, *result.values()]
            pred_columns = rundir.PREDICTION_COLUMNS
            predictions = [(split, int(i), int(t), float(q)) for i, t, q in zip(idx, y, p,
                                                                                 strict=True)]
        elif kind == "multiclass":
            result = multiclass_metrics(y, p) if finite else dict.fromkeys(
                rundir.EVALUATION_COLUMNS[1:], math.nan)
            columns, row = rundir.EVALUATION_COLUMNS, [split, *result.values()]
            pred_columns = rundir.MULTICLASS_PREDICTION_COLUMNS
            top = p.argmax(axis=1)
            predictions = [(split, int(i), int(t), float(q[c]), int(c))
                           for i, t, q, c in zip(idx, y, p, top, strict=True)]
        elif kind == "regression":
            result = regression_metrics(y, p) if finite else dict.fromkeys(
                rundir.REGRESSION_COLUMNS[1:], math.nan)
            columns, row = rundir.REGRESSION_COLUMNS, [split, *result.values()]
            pred_columns = rundir.REGRESSION_PREDICTION_COLUMNS
            predictions = [(split, int(i), float(np.ravel(t)[0]), float(np.ravel(q)[0]))
                           for i, t, q in zip(idx, y, p, strict=True)]
        else:
            raise ValueError(f"hpcrun.track: evaluate kind {kind!r}: use binary, multiclass "
                             "or regression")
        _replace_split(self.dir / rundir.EVALUATION, columns, split, [row])
        _replace_split(self.dir / rundir.PREDICTIONS, pred_columns, split, predictions)
        if kind != "regression" and self.diagnostics:
            sums = ProbabilitySums(torch.device("cpu"))
            sums.add(torch.as_tensor(p), torch.as_tensor(y))
            assert sums.values is not None
            stats = ProbabilitySums.stats(sums.values.reshape(-1).tolist(),
                                          sums.values.shape[1])
            handle = self._open(rundir.PROBABILITY_STATS, rundir.PROBABILITY_COLUMNS)
            handle.write({"epoch": self.last_epoch, "phase": f"eval_{split}", **stats})
            handle.sync()
        return result

    def finish(self) -> None:
        """Close the CSVs and write the manifest; outside an hpcrun job also mark the stage
        succeeded (inside one, the job does when the program exits 0). Calling it again
        (after a later ``evaluate``) writes the manifest again."""
        self._close_logs()
        if self.is_main:
            if not self._finished and not self.wrapped:
                with writing(self.run_dir.status):
                    self.records.load()
                    self.records.end_stage(self.stage)
            with writing(self.run_dir.manifest):
                rundir.write_manifest(self.root)
        self._finished = True
        self._release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> None:
        if exc is None:
            self.finish()
        elif not isinstance(exc, (SystemExit, KeyboardInterrupt)):
            self._record_failure(exc)

    def _close_logs(self) -> None:
        for handle in self._logs.values():
            handle.close()
        self._logs = {}

    def _release(self) -> None:
        global ACTIVE
        if ACTIVE is self:
            ACTIVE = None
        if sys.excepthook == self._uncaught:
            sys.excepthook = self._previous_hook

    def _record_failure(self, exc: BaseException) -> None:
        """failure.json (unless another rank's came first), status FAILED, the manifest."""
        if self._failed:
            return
        self._failed = self._finished = True
        for handle in self._logs.values():
            handle.abandon()
        self._logs = {}
        try:
            status = self.records.load()
            epoch = status.get("epoch") if isinstance(status.get("epoch"), int) else None
            info = records.exception_record(exc, rank=self.ctx.rank, stage=self.stage,
                                            epoch=epoch)
            if not records.record_failure(self.root, info):
                first = rundir.read_failure(self.run_dir.failure)
                info["exception"] = (first.exception if first else None) or info["exception"]
            if status.get("state") != "FAILED":
                status.setdefault("stage", self.stage)
                self.records.fail(info["exception"])
            if self.is_main:
                rundir.write_manifest(self.root)
        except OSError as err:
            print(f"hpcrun.track: could not record the failure: {err}", file=sys.stderr)
        self._release()

    def _uncaught(self, kind: Any, exc: BaseException, tb: Any) -> None:
        if not isinstance(exc, KeyboardInterrupt):
            self._record_failure(exc)
        self._previous_hook(kind, exc, tb)

    def _at_exit(self) -> None:
        if not self._finished:  # a program that never called finish: keep its rows
            for handle in self._logs.values():
                handle.abandon()


def rundir_name_ok(name: str) -> bool:
    from ..formats import NAME

    return NAME.matches(name)


def _pipeline(root: Path) -> list[str]:
    """The stage names of the run's config.yaml, in order."""
    try:
        import yaml

        data = yaml.safe_load((root / rundir.CONFIG).read_text())
        return [s["name"] for s in data.get("pipeline") or [] if isinstance(s, dict)]
    except Exception:  # noqa: BLE001 - a run without a readable config has one stage
        return []


def _replace_split(path: Path, columns: Sequence[str], split: str,
                   rows: Sequence[Sequence[Any]]) -> None:
    """Rewrite a per-split CSV with ``split``'s rows replaced (the other splits kept)."""
    kept: list[list[str]] = []
    if path.exists() and rundir.read_header(path) == list(columns):
        kept = [[r[c] for c in columns] for r in rundir.read_rows(path) if r["split"] != split]
    with writing(path):
        rundir.write_csv(path, columns, [*kept, *rows])

