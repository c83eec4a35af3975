"""Red flags: what a researcher would want to be told about a run while it trains or after it
failed. Read from the run directory only (pure Python); thresholds come from the run's
``monitor:`` config section.

Flags: nan_loss, nonfinite_gradients, exploding_gradients, vanishing_gradients,
separation_stalled, separation_collapsed, diverging, stalled, memory_growth,
memory_near_capacity, failed (with a known signature when the log shows one).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import rundir

Reader = Callable[[Path], list[dict[str, str]]]

#: log lines that name a failure's cause, in the order they are tried
SIGNATURES = (
    ("CUDA out of memory", "CUDA out of memory: lower the batch size or enable AMP"),
    ("OutOfMemoryError", "CUDA out of memory: lower the batch size or enable AMP"),
    ("NCCL", "NCCL error or timeout: a rank stalled or the network failed"),
    ("oom-kill", "killed by the kernel's OOM killer: host memory ran out"),
    ("Out of memory: Killed process", "killed by the kernel's OOM killer: host memory ran out"),
    ("DUE TO TIME LIMIT", "the scheduler's time limit was reached"),
    ("DUE TO PREEMPTION", "preempted by the scheduler"),
    ("Signal 9 (SIGKILL)", "a process was killed with SIGKILL"),
    ("No space left on device", "the disk of the run directory is full"),
    ("File too large", "a file-size limit (ulimit -f) was reached"),
    ("Read-only file system", "the run directory is on a read-only filesystem"),
)


@dataclass(frozen=True)
class Flag:
    code: str
    message: str
    stage: str | None = None
    epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floats(rows: list[dict[str, str]], column: str) -> list[float]:
    return [rundir.to_float(r.get(column)) for r in rows]


def _thresholds(run: rundir.RunDir) -> Any:
    from .config import MonitorConfig, load_config_text

    try:
        return load_config_text(run.config.read_text(), str(run.config)).monitor
    except Exception:  # a run without a readable config still gets the default thresholds
        return MonitorConfig()


def _stage_flags(run: rundir.RunDir, stage: str, limits: Any, read: Reader) -> list[Flag]:
    folder = run.stage(stage)
    training = read(folder / rundir.TRAINING)
    flags: list[Flag] = []
    if not training:
        return flags
    epochs = [int(r["Epoch"]) for r in training]
    for column in ("Train Loss", "Val Loss"):
        bad = [e for e, v in zip(epochs, _floats(training, column), strict=True)
               if not math.isfinite(v)]
        if bad:
            flags.append(Flag("nan_loss", f"{column} is not finite from epoch {bad[0]}",
                              stage, bad[0]))
            break

    grads = read(folder / rundir.GRADIENT_STATS)
    if grads:
        nonfinite = [int(r["epoch"]) for r in grads if int(r.get("nonfinite_steps") or 0)]
        if nonfinite:
            flags.append(Flag("nonfinite_gradients", f"non-finite gradient norms in epoch "
                              f"{nonfinite[0]}", stage, nonfinite[0]))
        means = _floats(grads, "norm_mean")
        highs = _floats(grads, "norm_max")
        for i, row in enumerate(grads):
            epoch = int(row["epoch"])
            earlier = [m for m in means[:i] if math.isfinite(m)]
            jump = (len(earlier) >= 2 and math.isfinite(means[i])
                    and means[i] > limits.grad_jump_factor * statistics.median(earlier))
            if (math.isfinite(highs[i]) and highs[i] > limits.grad_norm_max) or jump:
                why = (f"max norm {highs[i]:.3g} > {limits.grad_norm_max:g}"
                       if highs[i] > limits.grad_norm_max else
                       f"mean norm {means[i]:.3g} is over {limits.grad_jump_factor:g}x the "
                       "median of earlier epochs")
                flags.append(Flag("exploding_gradients", f"gradients exploding in epoch "
                                  f"{epoch}: {why}", stage, epoch))
                break
        last = means[-1]
        if math.isfinite(last) and last < limits.grad_norm_min:
            flags.append(Flag("vanishing_gradients", f"mean gradient norm {last:.2e} < "
                              f"{limits.grad_norm_min:g} in epoch {grads[-1]['epoch']}",
                              stage, int(grads[-1]["epoch"])))

    components = rundir.read_header(folder / rundir.LOSS_COMPONENTS) \
        if (folder / rundir.LOSS_COMPONENTS).exists() else []
    if "classification" in components:  # separation means nothing without a classifier loss
        probs = [r for r in read(folder / rundir.PROBABILITY_STATS)
                 if r.get("phase") == "val"]
        seps = _floats(probs, "separation")
        n = limits.separation_patience
        if len(seps) > n:
            best_before = max(s for s in seps[:-n] if math.isfinite(s)) if any(
                math.isfinite(s) for s in seps[:-n]) else -math.inf
            recent = [s for s in seps[-n:] if math.isfinite(s)]
            if recent and max(recent) <= best_before and best_before < limits.separation_min:
                flags.append(Flag("separation_stalled", f"validation separation has not "
                                  f"improved for {n} epochs (best {best_before:.3f})", stage,
                                  int(probs[-1]["epoch"])))
        finite = [s for s in seps if math.isfinite(s)]
        if finite and max(finite) > 0.1 and finite[-1] < 0.5 * max(finite):
            flags.append(Flag("separation_collapsed", f"validation separation fell from "
                              f"{max(finite):.3f} to {finite[-1]:.3f}", stage,
                              int(probs[-1]["epoch"])))

    train, val = _floats(training, "Train Loss"), _floats(training, "Val Loss")
    n = limits.divergence_patience
    if len(val) > n:
        rising = all(val[i] > val[i - 1] for i in range(len(val) - n, len(val)))
        falling = train[-1] < train[-n - 1]
        if rising and falling:
            flags.append(Flag("diverging", f"validation loss rose for {n} epochs while training "
                              "loss fell (overfitting?)", stage, epochs[-1]))

    memory = read(folder / rundir.GPU_MEMORY)
    by_rank: dict[str, list[dict[str, str]]] = {}
    for row in memory:
        by_rank.setdefault(row.get("rank", "0"), []).append(row)
    for rank, rows in by_rank.items():
        rss = [v for v in _floats(rows, "host_rss_mb") if math.isfinite(v)]
        if len(rss) >= 4 and rss[-1] > rss[1] * (1 + limits.memory_growth_pct / 100) and all(
                b >= a for a, b in zip(rss[1:], rss[2:], strict=False)):
            flags.append(Flag("memory_growth", f"rank {rank} host memory grew from "
                              f"{rss[1]:.0f} to {rss[-1]:.0f} MB", stage,
                              int(rows[-1]["epoch"])))
        used, total = rundir.to_float(rows[-1].get("device_used_mb")), rundir.to_float(
            rows[-1].get("device_total_mb"))
        if math.isfinite(used) and math.isfinite(total) and total > 0 and \
                100 * used / total > limits.memory_near_capacity_pct:
            flags.append(Flag("memory_near_capacity", f"rank {rank} GPU memory at "
                              f"{100 * used / total:.0f}% of {total:.0f} MB", stage,
                              int(rows[-1]["epoch"])))
    return flags


def diagnose(run_dir: Path, *, job_state: str | None = None, log_text: str | None = None,
             now: float | None = None, tables: rundir.RunTables | None = None) -> list[Flag]:
    """Every red flag of a run directory (every stage), given what is known about the job.
    A live view passes its ``tables`` so a refresh reads only the rows added since the last."""
    run = rundir.RunDir(run_dir)
    read: Reader = tables.rows if tables is not None else rundir.read_rows
    limits = _thresholds(run)
    status = rundir.read_json(run.status) or {}
    flags: list[Flag] = []
    for stage in run.stages():
        flags.extend(_stage_flags(run, stage, limits, read))

    state = job_state or status.get("state")
    stage = status.get("stage")
    if state == "RUNNING" and status.get("updated_at") and stage:
        times = [t for t in _floats(read(run.stage(stage) / rundir.TRAINING),
                                    "Epoch Time") if math.isfinite(t)]
        if times:
            limit = max(limits.stall_factor * statistics.median(times), 60.0)
            quiet = (now or time.time()) - float(status["updated_at"])
            if quiet > limit:
                flags.append(Flag("stalled", f"no heartbeat for {quiet:.0f} s (over "
                                  f"{limit:.0f} s: {limits.stall_factor:g}x the median epoch "
                                  "time)", stage, status.get("epoch")))

    failure = rundir.read_json(run.failure)
    if state == "FAILED" or failure:
        parts = []
        if failure:
            parts.append(f"rank {failure.get('rank')} on {failure.get('host')}: "
                         f"{failure.get('exception')}")
        text = (log_text or "") + "\n" + "\n".join((failure or {}).get("traceback") or [])
        for needle, meaning in SIGNATURES:
            if needle in text:
                parts.append(meaning)
                break
        if not parts:
            parts.append(status.get("message") or "the job failed")
        flags.append(Flag("failed", "; ".join(parts), failure.get("stage") if failure
                          else stage, failure.get("epoch") if failure else None))
    return flags
