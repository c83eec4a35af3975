"""What the trainer does on CUDA, checked here without a GPU by standing in for torch's CUDA
and collective calls: bf16 only where the hardware has it, each epoch's own memory peak, and
the stop-signal agreement read once in many steps, not each step."""

from __future__ import annotations

import types

import torch

from hpcrun.track import diagnostics, preemption
from hpcrun.track.distributed import DistContext
from hpcrun.train import loop


def test_auto_amp_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    cfg = types.SimpleNamespace(amp="auto")
    gpu = torch.device("cuda", 0)
    seen = {}

    def supported(including_emulation=True):
        seen["emulation"] = including_emulation
        return including_emulation  # a T4: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert loop._amp_dtype(cfg, gpu) is None and seen == {"emulation": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert loop._amp_dtype(cfg, gpu) is torch.bfloat16


def test_each_memory_row_holds_that_epochs_peak(monkeypatch):
    peaks = iter([900 * 2**20, 300 * 2**20])
    resets = []
    fake = types.SimpleNamespace(
        memory_allocated=lambda d: 100 * 2**20, memory_reserved=lambda d: 200 * 2**20,
        max_memory_allocated=lambda d: next(peaks),
        reset_peak_memory_stats=lambda d: resets.append(d))
    monkeypatch.setattr(diagnostics.torch, "cuda", fake)
    monkeypatch.setattr(diagnostics, "_nvml", lambda device: {})
    ctx = DistContext(device=torch.device("cuda", 0))
    first, second = (diagnostics.memory_row(ctx, e) for e in (1, 2))
    assert (first["peak_mb"], second["peak_mb"]) == (900, 300)
    assert len(resets) == 2  # the counter starts again after each row


def test_the_stop_agreement_is_read_once_in_many_steps(monkeypatch):
    reads = []

    class Flag:
        def __init__(self, value):
            self.value = value

        def item(self):  # on a GPU: a host synchronisation
            reads.append(1)
            return self.value

    started = []

    def all_reduce(flag, op=None, async_op=False):
        started.append(1)
        return types.SimpleNamespace(wait=lambda: None)

    monkeypatch.setattr(preemption.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(preemption.torch, "tensor", lambda values, device=None: Flag(values[0]))
    ctx = types.SimpleNamespace(distributed=True, device="cpu")
    stop = preemption.StopRequest.__new__(preemption.StopRequest)
    stop.ctx, stop.signum, stop._pending, stop._steps = ctx, None, None, 0
    answers = [stop.poll() for _ in range(10 * stop.EVERY)]
    assert not any(answers)
    assert len(started) == 10 and len(reads) == 9  # one collective and one read per EVERY steps
    stop.signum = 10  # SIGUSR1 on this rank
    later = [stop.poll() for _ in range(2 * stop.EVERY)]
    assert later.index(True) < 2 * stop.EVERY  # every rank stops within two agreements
