"""Preemption: SIGUSR1 (a scheduler's warning before the time limit, or
``scancel --signal=USR1``) and SIGTERM ask the program to save and stop; every rank must stop
at the same step, so the ranks agree on the request through a collective."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from .distributed import DistContext


class StopRequest:
    """SIGUSR1/SIGTERM set a flag; the ranks agree on it through a collective.

    ``poll()`` runs once per step. Every ``every`` steps it starts an all-reduce of the flag
    and reads it at the next step, so the agreement overlaps with compute and every rank sees
    the same answer at the same step. ``every`` starts at 1; at each epoch boundary
    (``agree``, a synchronous agreement) the ranks set it to about ``AGREE_EVERY_S`` seconds
    of steps: a stop lands within a fraction of a second plus a step, and with fast steps
    the read-back (a host synchronisation on a GPU) happens once in many steps, not each one.
    """

    #: how often (in seconds of steps) the ranks agree once the step time is known
    AGREE_EVERY_S = 0.25
    MAX_EVERY = 64

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        self.signum: int | None = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        self.every = 1
        self._steps = 0  # polls since the last epoch boundary (the same on every rank)
        self._since = time.monotonic()
        # Installed for the rest of the process: a SIGTERM that arrives while a failure is
        # being recorded (torchrun stops the survivors of a dead rank) must not kill the
        # process before failure.json is written.
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def poll(self) -> bool:
        if not self.ctx.distributed:
            return self.requested
        self._steps += 1
        if self._pending is not None:  # started at the step before
            work, flag = self._pending
            work.wait()
            self._pending = None
            if flag.item() > 0:
                return True
        if self._steps % self.every == 0:
            flag = torch.tensor([1.0 if self.requested else 0.0], device=self.ctx.device)
            self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        return False

    def agree(self) -> bool:
        """A synchronous agreement (epoch boundaries): finish any pending poll first; the
        ranks also agree on how often to poll from the steps' measured time."""
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            self._pending = None
            if flag.item() > 0:
                return True
        if not self.ctx.distributed:
            return self.requested
        now = time.monotonic()
        steps, elapsed = self._steps, now - self._since
        self._steps, self._since = 0, now
        wanted = 1
        if steps and elapsed > 0:
            wanted = max(1, min(self.MAX_EVERY, int(self.AGREE_EVERY_S * steps / elapsed)))
        both = torch.tensor([1.0 if self.requested else 0.0, float(wanted)],
                            device=self.ctx.device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        stop, every = both.tolist()
        self.every = int(every)
        return stop > 0
