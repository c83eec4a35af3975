"""Per-epoch diagnostics, accumulated on the device and read back once per epoch.

Nothing here synchronises with the host inside a training step: gradient norms reuse the
per-parameter norms that clipping computes anyway (``torch._foreach_norm`` then one stack), and
loss/probability sums are added into one device tensor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from .distributed import DistContext


class GradientTracker:
    """Clips gradients like ``clip_grad_norm_`` and records the norms it computed.

    ``clip(params)`` returns the same total norm ``clip_grad_norm_`` returns for those
    gradients. When ``record`` is off it is plain ``clip_grad_norm_``.
    """

    def __init__(self, names: Sequence[str], max_norm: float | None, device: torch.device,
                 record: bool = True, per_layer: bool = True):
        self.names = list(names)
        self.max_norm = max_norm if max_norm else None
        self.record = record
        self.per_layer = per_layer and record
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        # steps, sum, sum of squares, min, max, last, clipped, non-finite
        self._stats = torch.stack([zero, zero, zero, zero + math.inf, zero - math.inf, zero,
                                   zero, zero])
        n = len(self.names)
        self._layer_sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._layer_max = torch.zeros(n, dtype=torch.float64, device=self.device)

    def clip(self, params: Sequence[torch.nn.Parameter]) -> torch.Tensor | None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return None
        if not self.record:
            if self.max_norm is None:
                return None
            return torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        norms = torch.stack(torch._foreach_norm(grads, 2.0))
        total = torch.linalg.vector_norm(norms, 2.0)
        if self.max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, total)
        total64 = total.detach().double()
        finite = torch.isfinite(total64)
        clipped = (total64 > self.max_norm) if self.max_norm is not None else torch.zeros_like(
            finite)
        s = self._stats
        safe = torch.where(finite, total64, torch.zeros_like(total64))
        self._stats = torch.stack([
            s[0] + 1, s[1] + safe, s[2] + safe * safe,
            torch.where(finite, torch.minimum(s[3], total64), s[3]),
            torch.where(finite, torch.maximum(s[4], total64), s[4]),
            total64, s[6] + clipped.double(), s[7] + (~finite).double(),
        ])
        if self.per_layer and len(params) == len(self.names):
            # a parameter without a gradient in this step (a branch the batch did not take)
            # counts as norm 0
            layer = torch.zeros(len(params), dtype=torch.float64, device=self.device)
            present = [i for i, p in enumerate(params) if p.grad is not None]
            layer[present] = norms.detach().double().to(self.device)
            self._layer_sum += layer
            self._layer_max = torch.maximum(self._layer_max, layer)
        return total

    def epoch_rows(self, epoch: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(gradient_stats row, gradient_layers rows) for the epoch; then reset."""
        steps, total, squares, low, high, last, clipped, nonfinite = self._stats.cpu().tolist()
        finite_steps = steps - nonfinite
        mean = total / finite_steps if finite_steps else math.nan
        std = (math.sqrt(max(squares / finite_steps - mean * mean, 0.0)) if finite_steps
               else math.nan)
        row = {
            "epoch": epoch, "steps": int(steps), "norm_mean": mean, "norm_std": std,
            "norm_min": low if finite_steps else math.nan,
            "norm_max": high if finite_steps else math.nan, "norm_last": last,
            "clipped_fraction": clipped / steps if steps else math.nan,
            "nonfinite_steps": int(nonfinite),
        }
        layers = []
        if self.per_layer and steps:
            sums = self._layer_sum.cpu().tolist()
            maxes = self._layer_max.cpu().tolist()
            layers = [{"epoch": epoch, "layer": name, "norm_mean": s / steps, "norm_max": m}
                      for name, s, m in zip(self.names, sums, maxes, strict=True)]
        self.reset()
        return row, layers


class EpochSums:
    """Running sums for one phase of one epoch, in one device tensor.

    Layout: [n, total*n, component_i*n ..., n_pos, sum_p_pos, sumsq_p_pos, n_neg, sum_p_neg,
    sumsq_p_neg]. One all-reduce per epoch sums it over ranks.
    """

    def __init__(self, n_components: int, device: torch.device, probabilities: bool = True):
        self.k = n_components
        self.probabilities = probabilities
        self.device = device
        self.values = torch.zeros(2 + n_components + 6, dtype=torch.float64, device=device)

    def add(self, total: torch.Tensor, components: torch.Tensor, logits: torch.Tensor,
            targets: torch.Tensor) -> None:
        n = float(targets.shape[0])
        parts = [torch.tensor([n], dtype=torch.float64, device=self.device),
                 (total.detach().double() * n).reshape(1), components.double() * n]
        if self.probabilities:
            p = torch.sigmoid(logits.detach().double())
            pos = (targets > 0.5).double()
            neg = 1.0 - pos
            parts.append(torch.stack([pos.sum(), (p * pos).sum(), (p * p * pos).sum(),
                                      neg.sum(), (p * neg).sum(), (p * p * neg).sum()]))
        else:
            parts.append(torch.zeros(6, dtype=torch.float64, device=self.device))
        self.values += torch.cat(parts)

    def reduced(self, ctx: DistContext) -> list[float]:
        return ctx.all_reduce_sum(self.values.clone()).cpu().tolist()

    @staticmethod
    def split(values: list[float], k: int) -> tuple[float, float, list[float], list[float]]:
        """-> (n, mean total, mean components, the six probability sums)."""
        n = values[0] or math.nan
        return n, values[1] / n, [v / n for v in values[2:2 + k]], values[2 + k:]


def memory_row(ctx: DistContext, epoch: int) -> dict[str, Any]:
    """This rank's memory: torch CUDA counters, NVML device totals, host RSS and the host's
    total memory (psutil; the reader sums the RSS of a host's ranks against it)."""
    import psutil

    row: dict[str, Any] = {
        "epoch": epoch, "rank": ctx.rank, "host": ctx.host, "device": str(ctx.device),
        "allocated_mb": None, "reserved_mb": None, "peak_mb": None, "device_used_mb": None,
        "device_total_mb": None, "utilization_pct": None,
        "host_rss_mb": psutil.Process(os.getpid()).memory_info().rss / 2**20,
        "host_total_mb": psutil.virtual_memory().total / 2**20,
    }
    if ctx.device.type == "cuda":
        mb = 2**20
        row["allocated_mb"] = torch.cuda.memory_allocated(ctx.device) / mb
        row["reserved_mb"] = torch.cuda.memory_reserved(ctx.device) / mb
        row["peak_mb"] = torch.cuda.max_memory_allocated(ctx.device) / mb
        torch.cuda.reset_peak_memory_stats(ctx.device)  # the next row: that epoch's peak
        row.update(_nvml(ctx.device))
    return row


def _nvml(device: torch.device) -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        try:
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            handle = pynvml.nvmlDeviceGetHandleByUUID(
                uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            return {"device_used_mb": info.used / 2**20, "device_total_mb": info.total / 2**20,
                    "utilization_pct": float(util.gpu)}
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return {}
    except (AttributeError, RuntimeError):
        return {}


class ProbabilitySums:
    """Per-class running sums of predicted probabilities for one phase of one epoch, on the
    device: for each class c (one-vs-rest), the count, sum and sum of squares of the
    probability of c over the samples of class c and over the others. Binary probabilities
    ``(N,)`` are the one class "positive"; multiclass ``(N, C)`` has C."""

    def __init__(self, device: torch.device):
        self.device = device
        self.values: torch.Tensor | None = None

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        p = probs.detach().to(self.device, torch.float64)
        y = labels.detach().to(self.device)
        if p.dim() == 1:
            p = p[:, None]
            member = (y.reshape(-1) > 0.5).double()[:, None]
        else:
            member = torch.nn.functional.one_hot(y.reshape(-1).long(), p.shape[1]).double()
        other = 1.0 - member
        sums = torch.stack([member.sum(0), (p * member).sum(0), (p * p * member).sum(0),
                            other.sum(0), (p * other).sum(0), (p * p * other).sum(0)])
        if self.values is None or self.values.shape != sums.shape:
            self.values = sums
        else:
            self.values += sums

    @staticmethod
    def stats(values: list[float], classes: int) -> dict[str, float]:
        """probability_stats.csv's columns from the reduced sums, averaged over the classes
        where a class's statistic is defined."""
        from .metrics import separation_from_sums

        per_class = [separation_from_sums(*(values[row * classes + c] for row in range(6)))
                     for c in range(classes)]
        out = {}
        for key in ("pos_mean", "pos_std", "neg_mean", "neg_std", "separation"):
            finite = [s[key] for s in per_class if math.isfinite(s[key])]
            out[key] = sum(finite) / len(finite) if finite else math.nan
        return out
