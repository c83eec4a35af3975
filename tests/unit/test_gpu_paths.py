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


def _stop_request(monkeypatch) -> tuple[preemption.StopRequest, list, list]:
    """A StopRequest of one of several ranks, its collectives answered here (a MAX over one
    rank is its own value)."""
    reads, started = [], []

    class Flag:
        def __init__(self, values):
            self.values = list(values)

        def item(self):  # on a GPU: a host synchronisation
            reads.append(1)
            return self.values[0]

        def tolist(self):
            reads.append(1)
            return self.values

    def all_reduce(flag, op=None, async_op=False):
        started.append(1)
        return types.SimpleNamespace(wait=lambda: None)

    monkeypatch.setattr(preemption.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(preemption.torch, "tensor", lambda values, device=None: Flag(values))
    ctx = types.SimpleNamespace(distributed=True, device="cpu")
    monkeypatch.setattr(preemption.signal, "signal", lambda *args: None)
    return preemption.StopRequest(ctx), reads, started


def test_the_ranks_agree_each_step_until_they_know_the_step_time(monkeypatch):
    stop, reads, started = _stop_request(monkeypatch)
    assert not any(stop.poll() for _ in range(10))
    assert len(started) == 10 and len(reads) == 9  # each step: started, read at the next
    stop.signum = 10  # SIGUSR1 here
    assert [stop.poll(), stop.poll()] == [False, True]  # agreed the step after


def test_fast_steps_are_polled_every_quarter_second_and_read_once_in_many(monkeypatch):
    stop, reads, started = _stop_request(monkeypatch)
    clock = iter([101.0])  # the epoch's 1,000 steps took a second
    monkeypatch.setattr(preemption.time, "monotonic", lambda: next(clock))
    stop._since = 100.0
    for _ in range(1000):
        stop.poll()
    reads.clear(), started.clear()
    assert stop.agree() is False and stop.every == 64  # 250 steps a quarter second: capped
    polls = [stop.poll() for _ in range(640)]
    assert not any(polls) and len(started) == 11 and len(reads) == 11  # agree's, then 10
    stop.signum = 10
    later = [stop.poll() for _ in range(2 * stop.every)]
    assert later.index(True) <= stop.every  # within one interval and a step


def test_slow_steps_keep_the_ranks_agreeing_every_step(monkeypatch):
    stop, _, _ = _stop_request(monkeypatch)
    clock = iter([140.0])  # 10 steps of 4 s
    monkeypatch.setattr(preemption.time, "monotonic", lambda: next(clock))
    stop._since = 100.0
    for _ in range(10):
        stop.poll()
    assert stop.agree() is False and stop.every == 1
