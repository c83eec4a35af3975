"""One pipeline stage: train (with per-epoch diagnostics, checkpoints, early stopping,
preemption) and/or evaluate, writing the stage's files of the run directory.

Epoch semantics: a checkpoint is taken at the end of every epoch, after that epoch's CSV rows
are durable. A run stopped mid-epoch (preemption or a crash) resumes from the last completed
epoch: the partial epoch is run again from its start, and rows past the checkpoint are dropped
so that no epoch appears twice.

Over 500 lines because one stage's loop is one story (model, data, optimiser, the epoch,
checkpoints, early stopping, evaluation): split, each part would need the others' state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from .. import rundir
from ..config import ExperimentConfig, StageConfig, TrainingConfig
from ..errors import ConfigError
from ..selection import improves
from ..track import checkpoint
from ..track.diagnostics import EpochSums, GradientTracker, memory_row
from ..track.distributed import DistContext
from ..track.metrics import binary_metrics, separation_from_sums, separation_stats
from ..track.preemption import StopRequest
from ..track.writes import CsvLog, writing
from .data import Dataset, Split
from .losses import TrainModule
from .models import build_model, normalize_output

log = logging.getLogger("hpcrun.train")


# --------------------------------------------------------------------------- helpers


@dataclass
class StageResult:
    state: str  # SUCCEEDED | PREEMPTED
    epochs_run: int = 0
    best_epoch: int | None = None
    best_metric: float | None = None
    evaluation: dict[str, dict[str, float]] | None = None


def _amp_dtype(cfg: TrainingConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        if cfg.amp in ("bf16", "fp16") and device.type != "cuda":
            log.info("training.amp=%s applies on CUDA only; running in float32 on %s", cfg.amp,
                     device.type)
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or _native_bf16():
        return torch.bfloat16
    return None


def _native_bf16() -> bool:
    """bf16 in hardware (Ampere and later): T4 and V100 emulate it, slower than fp16; there
    ``amp: auto`` stays in float32 rather than pick an emulated type."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4: no emulation counted there
        return torch.cuda.is_bf16_supported()


def _optimizer(cfg: TrainingConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainingConfig, optimizer: torch.optim.Optimizer) -> Any:
    sched = cfg.scheduler
    if sched.type == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=sched.gamma, patience=sched.patience,
            min_lr=sched.min_lr)
    warmup, total = sched.warmup_epochs, cfg.epochs
    floor = sched.min_lr / cfg.lr

    def factor(epoch_index: int) -> float:
        # epoch_index counts completed scheduler steps: 0 during the first epoch
        if warmup and epoch_index < warmup:
            return (epoch_index + 1) / (warmup + 1)
        if sched.type == "cosine":
            span = max(total - warmup, 1)
            progress = min((epoch_index - warmup) / span, 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if sched.type == "step":
            return max(sched.gamma ** ((epoch_index - warmup) // sched.step_size), floor)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _layer_names(module: torch.nn.Module) -> list[str]:
    return [name.removeprefix("model.") for name, p in module.named_parameters()
            if p.requires_grad]


def unreachable_parameters(module: TrainModule, x: torch.Tensor) -> list[str]:
    """The trainable parameters of ``module.model`` (named as in ``module``) that feed only
    model outputs the loss ignores: the logits when classification has weight 0, a
    reconstruction when reconstruction has, an ``aux`` term that is not a component.

    It follows the autograd graph from each output of one forward pass on ``x``: a parameter
    that feeds an output the loss uses is never listed, and one that a batch happens not to
    reach (a gated branch, an expert) is not listed either. The pass runs in eval mode with
    the RNG and the buffers (batch-norm statistics) left as they were.
    """
    model = module.model
    components = set(module.components)
    params = [(f"model.{name}", p) for name, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            out = normalize_output(model(x))
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    outputs = [(out["logits"], "classification" in components)]
    if out["reconstruction"] is not None:
        outputs.append((out["reconstruction"], "reconstruction" in components))
    outputs += [(value, name in components) for name, value in out["aux"].items()]

    def reached(tensors: list[torch.Tensor]) -> set[str]:
        tensors = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
        if not tensors or not params:
            return set()
        grads = torch.autograd.grad([t.float().sum() for t in tensors], [p for _, p in params],
                                    allow_unused=True, retain_graph=True)
        return {name for (name, _), g in zip(params, grads, strict=True) if g is not None}

    used = reached([t for t, wanted in outputs if wanted])
    ignored = reached([t for t, wanted in outputs if not wanted])
    return [name for name, _ in params if name in ignored and name not in used]


def early_stopping_message(stage: str, epoch: int, metric: str, best: float | None,
                           best_epoch: int | None) -> str:
    """The log line when early stopping fires; ``best`` is None on ranks other than 0."""
    best_text = "n/a" if best is None else f"{best:.5f}"
    epoch_text = "n/a" if best_epoch is None else str(best_epoch)
    return (f"[{stage}] early stopping after epoch {epoch} (best {metric}={best_text} at epoch "
            f"{epoch_text})")


# --------------------------------------------------------------------------- the stage


class StageRunner:
    def __init__(self, ctx: DistContext, cfg: ExperimentConfig, stage: StageConfig,
                 run: rundir.RunDir, data: Dataset, stop: StopRequest,
                 on_epoch: Any = None):
        self.ctx = ctx
        self.cfg = cfg
        self.stage = stage
        self.run = run
        self.data = data
        self.stop = stop
        self.on_epoch = on_epoch or (lambda **_: None)
        self.tcfg = cfg.training
        self.dir = run.stage(stage.name)
        self.ckpt_dir = run.checkpoints(stage.name)
        self.metrics = list(self.tcfg.logging.validation_metrics)
        self.diagnostics = self.tcfg.logging.diagnostics
        self.device = ctx.device
        self.amp_dtype = _amp_dtype(self.tcfg, self.device)

    # -- setup -----------------------------------------------------------------------------

    def _build(self) -> None:
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        loss_cfg = self.tcfg.loss
        reconstruction = loss_cfg.components.get("reconstruction", 0) > 0
        model = build_model(self.cfg.model, self.data.n_features, reconstruction)
        self.module = TrainModule(model, loss_cfg).to(self.device)
        self.components = self.module.components
        if self.stage.init_from is not None:
            self._initialise_from(self.stage.init_from)
        # dropout and other randomness differ per rank
        seed = self.cfg.seed + 1000 * self.ctx.rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        import random

        random.seed(seed)

    def _init_path(self, ref: str) -> Path:
        if ref.endswith(".pt"):
            return Path(ref).expanduser()
        return self.run.checkpoint(ref, self.stage.init_checkpoint)

    def _initialise_from(self, ref: str) -> None:
        path = self._init_path(ref)
        state = checkpoint.load_agreed(self.ctx, path)
        if state is None:
            raise ConfigError(
                f"stage {self.stage.name!r}: init_from {ref!r} has no checkpoint at {path}",
                hint="run the earlier stage first, or point init_from at a .pt file")
        weights = state.get("model", state)
        result = self.module.model.load_state_dict(weights, strict=False)
        loaded = len(weights) - len(result.unexpected_keys)
        if loaded == 0:
            raise ConfigError(f"stage {self.stage.name!r}: {path} shares no weights with this "
                              "model")
        if result.missing_keys or result.unexpected_keys:
            log.info("init from %s: %d tensors loaded; new: %s; unused: %s", path, loaded,
                     ", ".join(result.missing_keys) or "none",
                     ", ".join(result.unexpected_keys) or "none")
        self.init_epoch = int(state.get("epoch", 0))
        if self.stage.mode == "eval_only" and self.module.log_vars is not None:
            self._load_loss_weights(state, path)

    def _load_loss_weights(self, state: dict[str, Any], path: Path) -> None:
        """An evaluation stage's learned loss weights are those of the checkpoint it
        evaluates (its ``module`` holds them), not fresh ones."""
        saved = (state.get("module") or {}).get("log_vars")
        names = state.get("components")
        target = self.module.log_vars
        if saved is None:
            log.warning("[%s] %s holds no learned loss weights: evaluating with the configured "
                        "weights", self.stage.name, path)
            return
        if tuple(saved.shape) != tuple(target.shape) or (
                names is not None and list(names) != self.components):
            log.warning("[%s] %s holds learned loss weights for other components (%s) than this "
                        "stage's loss (%s): evaluating with the configured weights",
                        self.stage.name, path, ", ".join(names) if names else
                        f"{saved.numel()} of them", ", ".join(self.components))
            return
        with torch.no_grad():
            target.copy_(saved.to(target.device, target.dtype))

    def _freeze_unreachable(self, split: Split) -> None:
        """Under DDP, freeze the parameters the stage's loss cannot reach (e.g. the classifier
        head while pretraining on reconstruction alone): DDP requires every trainable
        parameter to get a gradient. One process needs no such thing and freezes nothing."""
        if not self.ctx.distributed:
            return
        rows = torch.arange(min(len(split), 8))
        unused = set(unreachable_parameters(self.module, split.x[rows].to(self.device)))
        for name, p in self.module.named_parameters():
            if name in unused:
                p.requires_grad_(False)
        if unused:
            log.info("[%s] not trained in this stage (the loss does not use them): %s",
                     self.stage.name, ", ".join(n.removeprefix("model.") for n, _ in
                                                self.module.named_parameters() if n in unused))

    def _sampler(self, split: Split, shuffle: bool) -> DistributedSampler:
        return DistributedSampler(range(len(split)), num_replicas=self.ctx.world_size,
                                  rank=self.ctx.rank, shuffle=shuffle, seed=self.cfg.seed,
                                  drop_last=False)

    # -- entry points ----------------------------------------------------------------------

    def execute(self) -> StageResult:
        self.init_epoch = 0
        self._build()
        if self.stage.mode == "eval_only":
            evaluation = self._final_evaluation(self.init_epoch)
            return StageResult("SUCCEEDED", evaluation=evaluation)
        result = self._train()
        if result.state == "SUCCEEDED":
            state = checkpoint.load_agreed(self.ctx, self.ckpt_dir / rundir.BEST_CKPT,
                                           self.ckpt_dir / rundir.LAST_CKPT)
            if state is None:
                raise FileNotFoundError(f"{self.ckpt_dir / rundir.LAST_CKPT}: the stage "
                                        "ended without a checkpoint")
            self.module.load_state_dict(state["module"])
            result.evaluation = self._final_evaluation(int(state["epoch"]))
        return result

    # -- training --------------------------------------------------------------------------

    def _open_logs(self) -> dict[str, CsvLog]:
        learned = self.tcfg.loss.learned_weights
        files = {rundir.TRAINING: rundir.training_columns(self.metrics)}
        if self.diagnostics:
            files.update({
                rundir.LOSS_COMPONENTS: rundir.loss_component_columns(self.components, learned),
                rundir.GRADIENT_STATS: rundir.GRADIENT_COLUMNS,
                rundir.PROBABILITY_STATS: rundir.PROBABILITY_COLUMNS,
                rundir.GPU_MEMORY: rundir.MEMORY_COLUMNS,
            })
            if self.tcfg.logging.per_layer_gradients:
                files[rundir.GRADIENT_LAYERS] = rundir.GRADIENT_LAYER_COLUMNS
        return {name: CsvLog(self.dir / name, columns) for name, columns in files.items()}

    def _train(self) -> StageResult:
        tcfg, ctx = self.tcfg, self.ctx
        train, val = self.data.splits["train"], self.data.splits["val"]
        per_step = ctx.world_size * tcfg.grad_accum_steps
        if tcfg.batch_size % per_step:
            raise ConfigError(
                f"training.batch_size ({tcfg.batch_size}) must be divisible by world size "
                f"({ctx.world_size}) x grad_accum_steps ({tcfg.grad_accum_steps})")
        micro = tcfg.batch_size // per_step

        self._freeze_unreachable(train)
        module: torch.nn.Module = self.module
        if ctx.distributed:
            module = DistributedDataParallel(
                self.module, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=tcfg.find_unused_parameters)
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = _optimizer(tcfg, params)
        scheduler = _scheduler(tcfg, optimizer)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        tracker = GradientTracker(_layer_names(self.module), tcfg.grad_clip, self.device,
                                  record=self.diagnostics,
                                  per_layer=tcfg.logging.per_layer_gradients)
        es = tcfg.early_stopping
        mode = es.resolved_mode
        best_metric: float | None = None
        best_epoch: int | None = None
        stale = 0
        start = 1

        last = self.ckpt_dir / rundir.LAST_CKPT
        if ctx.is_main:
            checkpoint.remove_partial(self.ckpt_dir)
        resumed = checkpoint.load_agreed(ctx, last)  # rank 0's, whatever the others' disks hold
        if resumed is not None:
            self.module.load_state_dict(resumed["module"])
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            scaler.load_state_dict(resumed["scaler"])
            start = int(resumed["epoch"]) + 1
            best_metric, best_epoch = resumed["best_metric"], resumed["best_epoch"]
            stale = int(resumed["stale_epochs"])
            rng = resumed["rng"]
            if len(rng) == ctx.world_size:
                checkpoint.set_rng_state(rng[ctx.rank])
            else:
                log.warning("resuming with %d ranks from a %d-rank checkpoint: RNG streams "
                            "restart", ctx.world_size, len(rng))
            if resumed.get("stopped_early"):
                start = tcfg.epochs + 1
            log.info("stage %s: resuming after epoch %d", self.stage.name, start - 1)
        completed = start - 1
        logs: dict[str, CsvLog] = {}
        if ctx.is_main:
            for name in (rundir.TRAINING, rundir.LOSS_COMPONENTS, rundir.GRADIENT_STATS,
                         rundir.GRADIENT_LAYERS, rundir.PROBABILITY_STATS, rundir.GPU_MEMORY):
                with writing(self.dir / name):
                    dropped = rundir.truncate_epochs(self.dir / name, completed)
                if dropped:
                    log.info("%s: dropped %d rows past epoch %d", name, dropped, completed)
            logs = self._open_logs()

        def save(epoch: int, improved: bool, stopped_early: bool) -> None:
            rng = ctx.gather_objects(checkpoint.rng_state())
            if not ctx.is_main:
                return
            state = {
                "module": self.module.state_dict(), "model": self.module.model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "best_metric": best_metric,
                "best_epoch": best_epoch, "stale_epochs": stale, "rng": rng,
                "stopped_early": stopped_early, "stage": self.stage.name,
                "components": list(self.components),
                "world_size": ctx.world_size,
            }
            checkpoint.save(state, last)
            if improved:
                checkpoint.link(last, self.ckpt_dir / rundir.BEST_CKPT)
            if tcfg.checkpoint_every and epoch and epoch % tcfg.checkpoint_every == 0:
                checkpoint.link(last, self.ckpt_dir / f"epoch_{epoch:04d}.pt")

        if resumed is None:
            save(0, improved=False, stopped_early=False)  # so a stop in epoch 1 can resume

        train_sampler = self._sampler(train, shuffle=True)
        k = len(self.components)
        state_name = "SUCCEEDED"
        epoch = completed
        try:
            for epoch in range(start, tcfg.epochs + 1):
                began = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                train_sampler.set_epoch(epoch)
                indices = torch.tensor(list(train_sampler), dtype=torch.long)
                sums = EpochSums(k, self.device, probabilities=self.diagnostics)
                module.train()
                if self._train_epoch(module, train, indices, micro, optimizer, scaler,
                                     tracker, params, sums):
                    state_name = "PREEMPTED"
                    epoch -= 1
                    break
                train_values = sums.reduced(ctx)
                val_eval = self._evaluate(val)
                elapsed = time.perf_counter() - began

                decision = torch.zeros(2, device=self.device)
                if ctx.is_main:
                    metric = (self._selection_loss(val_eval) if es.metric == "val_loss"
                              else val_eval["metrics"][es.metric.removeprefix("val_")])
                    improved = improves(metric, best_metric, mode, es.min_delta)
                    if improved:
                        best_metric, best_epoch, stale = metric, epoch, 0
                    else:
                        stale += 1
                    stop_now = es.enabled and stale >= es.patience
                    decision[0], decision[1] = float(improved), float(stop_now)
                    self._write_epoch(logs, epoch, elapsed, lr, train_values, val_eval, tracker)
                if ctx.distributed:
                    dist.broadcast(decision, src=0)
                improved, stop_now = bool(decision[0].item()), bool(decision[1].item())
                if not ctx.is_main and self.diagnostics:
                    tracker.reset()
                if self.diagnostics:
                    rows = ctx.gather_objects(memory_row(ctx, epoch))
                    if ctx.is_main:
                        for row in rows:
                            logs[rundir.GPU_MEMORY].write(row)
                        logs[rundir.GPU_MEMORY].sync()
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    # reduced over ranks: equal everywhere
                    scheduler.step(self._selection_loss(val_eval))
                else:
                    scheduler.step()
                save(epoch, improved, stopped_early=stop_now)
                self.on_epoch(stage=self.stage.name, epoch=epoch, epochs=tcfg.epochs)
                if ctx.is_main:
                    log.info("[%s] epoch %d/%d  train %.4f  val %.4f  %s  %.2fs", self.stage.name,
                             epoch, tcfg.epochs, train_values[1] / max(train_values[0], 1),
                             val_eval["loss"], self._metric_text(val_eval["metrics"]), elapsed)
                if self.stop.agree():
                    state_name = "PREEMPTED"
                    break
                if stop_now:  # only rank 0 knows the best metric; the others say n/a
                    log.info("%s", early_stopping_message(self.stage.name, epoch, es.metric,
                                                          best_metric, best_epoch))
                    break
        except BaseException:
            for handle in logs.values():
                handle.abandon()  # a second error from a failing disk must not hide the first
            raise
        for handle in logs.values():
            handle.close()
        return StageResult(state_name, epochs_run=epoch, best_epoch=best_epoch,
                           best_metric=best_metric)

    def _selection_loss(self, evaluation: dict[str, Any]) -> float:
        """The validation loss that early stopping, best.pt and the plateau scheduler follow.
        With learned weights it is the loss under the configured weights, sum w_c L_c: the
        trained total also holds the learned weighting and its log-variance terms, which
        fall while the model gets no better."""
        if self.module.log_vars is None:
            return evaluation["loss"]
        weights = self.module.weights.detach().cpu().tolist()
        return float(sum(w * c for w, c in zip(weights, evaluation["components"], strict=True)))

    def _metric_text(self, metrics: dict[str, float]) -> str:
        return "  ".join(f"{m} {metrics[m]:.4f}" for m in self.metrics[:3])

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _train_epoch(self, module: torch.nn.Module, split: Split, indices: torch.Tensor,
                     micro: int, optimizer: torch.optim.Optimizer, scaler: Any,
                     tracker: GradientTracker, params: list[torch.nn.Parameter],
                     sums: EpochSums) -> bool:
        """One pass over this rank's shard. Returns True when the ranks agreed to stop."""
        accum = self.tcfg.grad_accum_steps
        x_all, y_all = split.x, split.y
        batches = list(torch.split(indices, micro))
        n_steps = math.ceil(len(batches) / accum)
        for step in range(n_steps):
            group = batches[step * accum:(step + 1) * accum]
            optimizer.zero_grad(set_to_none=True)
            group_n = sum(len(b) for b in group)
            for i, batch in enumerate(group):
                x = x_all[batch].to(self.device, non_blocking=True)
                y = y_all[batch].to(self.device, non_blocking=True)
                final = i == len(group) - 1
                sync = (contextlib.nullcontext() if final or not isinstance(
                    module, DistributedDataParallel) else module.no_sync())
                with sync:
                    with self._autocast():
                        total, components, logits = module(x, y)
                    # micro-batches of one step are averaged by their share of the step
                    scaler.scale(total * (len(batch) / group_n)).backward()
                sums.add(total, components, logits, y)
            scaler.unscale_(optimizer)
            tracker.clip(params)
            scaler.step(optimizer)
            scaler.update()
            if self.stop.poll():
                return True
        return False

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, split: Split) -> dict[str, Any]:
        """Loss, probabilities and metrics over every sample of ``split`` exactly once.

        Each rank takes rows rank, rank+world, ... (no padding); the shards are gathered with
        -1 marking the slots that pad the shorter shards, which rank 0 drops. It runs the
        unwrapped module: no DDP collectives, so unequal shards cannot hang. In float32 even
        when training uses AMP: the saved probabilities and metrics are not rounded to bf16.
        """
        ctx = self.ctx
        module = self.module
        module.eval()
        n = len(split)
        own = torch.arange(ctx.rank, n, ctx.world_size)
        width = math.ceil(n / ctx.world_size)
        k = len(self.components)
        sums = EpochSums(k, self.device, probabilities=False)
        probs = []
        batch = max(self.tcfg.batch_size, 1024)
        for chunk in torch.split(own, batch):
            x = split.x[chunk].to(self.device)
            y = split.y[chunk].to(self.device)
            total, components, logits = module(x, y)
            sums.add(total, components, logits, y)
            probs.append(torch.sigmoid(logits.float()).double())
        p = torch.cat(probs) if probs else torch.zeros(0, dtype=torch.float64, device=self.device)
        table = torch.full((width, 3), -1.0, dtype=torch.float64, device=self.device)
        table[: len(own), 0] = own.double().to(self.device)
        table[: len(own), 1] = split.y[own].double().to(self.device)
        table[: len(own), 2] = p
        gathered = ctx.all_gather(table)
        values = sums.reduced(ctx)
        count, loss, components_mean, _ = EpochSums.split(values, k)
        result: dict[str, Any] = {"loss": loss, "components": components_mean}
        if ctx.is_main:
            rows = gathered[gathered[:, 0] >= 0].cpu().numpy()
            rows = rows[np.argsort(rows[:, 0], kind="stable")]
            assert len(rows) == n and int(count) == n
            index, labels, prob = rows[:, 0].astype(np.int64), rows[:, 1], rows[:, 2]
            result.update(index=index, labels=labels, probs=prob,
                          metrics=binary_metrics(labels, prob, self.tcfg.threshold),
                          separation=separation_stats(labels, prob))
        return result

    def _write_epoch(self, logs: dict[str, CsvLog], epoch: int, elapsed: float, lr: float,
                     train_values: list[float], val_eval: dict[str, Any],
                     tracker: GradientTracker) -> None:
        k = len(self.components)
        _, train_loss, train_components, prob_sums = EpochSums.split(train_values, k)
        row = {"Epoch": epoch, "Epoch Time": elapsed, "Train Loss": train_loss,
               "Val Loss": val_eval["loss"], "Learning Rate": lr}
        for m in self.metrics:
            row[f"Val {rundir.METRIC_LABELS[m]}"] = val_eval["metrics"][m]
        logs[rundir.TRAINING].write(row)
        if self.diagnostics:
            learned = self.module.effective_weights()
            for phase, comps, total in (("train", train_components, train_loss),
                                        ("val", val_eval["components"], val_eval["loss"])):
                logs[rundir.LOSS_COMPONENTS].write(
                    self._component_row(epoch, phase, comps, total, learned))
            grad_row, layer_rows = tracker.epoch_rows(epoch)
            logs[rundir.GRADIENT_STATS].write(grad_row)
            if rundir.GRADIENT_LAYERS in logs:
                for layer_row in layer_rows:
                    logs[rundir.GRADIENT_LAYERS].write(layer_row)
            logs[rundir.PROBABILITY_STATS].write(
                {"epoch": epoch, "phase": "train", **separation_from_sums(*prob_sums)})
            logs[rundir.PROBABILITY_STATS].write(
                {"epoch": epoch, "phase": "val", **val_eval["separation"]})
        for handle in logs.values():
            if handle.path.name != rundir.GPU_MEMORY:
                handle.sync()

    def _component_row(self, epoch: int, phase: str, comps: list[float], total: float,
                       learned: tuple[list[float], list[float]] | None) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": epoch, "phase": phase, "total": total}
        row.update(zip(self.components, comps, strict=True))
        if learned is not None:
            weights, sigmas = learned
            row.update({f"weight_{c}": w for c, w in zip(self.components, weights, strict=True)})
            row.update({f"sigma_{c}": s for c, s in zip(self.components, sigmas, strict=True)})
        return row

    def _final_evaluation(self, epoch: int) -> dict[str, dict[str, float]]:
        """Evaluate the stage's model on its splits: evaluation.csv, predictions.csv and the
        eval rows of probability_stats.csv / loss_components.csv."""
        results: dict[str, dict[str, float]] = {}
        evaluations = {split: self._evaluate(self.data.splits[split])
                       for split in self.stage.splits}
        eval_only = self.stage.mode == "eval_only"
        memory_rows = []
        if self.diagnostics and eval_only:
            memory_rows = self.ctx.gather_objects(memory_row(self.ctx, epoch))
        if not self.ctx.is_main:
            return results
        eval_rows, prediction_rows = [], []
        for split, ev in evaluations.items():
            results[split] = ev["metrics"]
            eval_rows.append([split, *(ev["metrics"][c] for c in rundir.EVALUATION_COLUMNS[1:])])
            prediction_rows.extend(
                (split, int(i), int(label), float(p))
                for i, label, p in zip(ev["index"], ev["labels"], ev["probs"], strict=True))
        with writing(self.dir / rundir.EVALUATION):
            rundir.write_csv(self.dir / rundir.EVALUATION, rundir.EVALUATION_COLUMNS, eval_rows)
        with writing(self.dir / rundir.PREDICTIONS):
            rundir.write_csv(self.dir / rundir.PREDICTIONS, rundir.PREDICTION_COLUMNS,
                             prediction_rows)
        if not self.diagnostics:
            return results
        learned = self.module.effective_weights()
        files = {
            rundir.PROBABILITY_STATS: (rundir.PROBABILITY_COLUMNS, [
                {"epoch": epoch, "phase": f"eval_{s}", **ev["separation"]}
                for s, ev in evaluations.items()]),
            rundir.LOSS_COMPONENTS: (
                rundir.loss_component_columns(self.components, learned is not None), [
                    self._component_row(epoch, f"eval_{s}", ev["components"], ev["loss"], learned)
                    for s, ev in evaluations.items()]),
        }
        if eval_only:
            files[rundir.GPU_MEMORY] = (rundir.MEMORY_COLUMNS, memory_rows)
        for name, (columns, rows) in files.items():
            path = self.dir / name
            with writing(path):
                if eval_only:
                    path.unlink(missing_ok=True)  # an evaluation stage's files are its alone
                else:  # a stage resumed after its final evaluation writes those rows again
                    rundir.filter_rows(path, lambda row: not row[1].startswith("eval_"))
            handle = CsvLog(path, columns)
            for row in rows:
                handle.write(row)
            handle.close()
        return results
