"""Preemption: SIGUSR1 (a scheduler's warning before the time limit, or
``scancel --signal=USR1``) and SIGTERM ask the program to save and stop; every rank must stop
at the same step, so the ranks agree on the request through a collective."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as dist

from .distributed import DistContext


class StopRequest:
    """SIGUSR1/SIGTERM set a flag; the ranks agree on it through a collective.

    ``poll()`` runs once per step and communicates every ``EVERY`` steps: it reads the
    result of the all-reduce started ``EVERY`` steps before and starts the next one, so the
    agreement overlaps with compute, and the read (a host synchronisation on a GPU) happens
    once in ``EVERY`` steps, not each step. Every rank polls the same steps and sees the same
    answer at the same step.
    """

    #: steps between two agreements (a stop waits at most twice this many steps)
    EVERY = 16

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        self.signum: int | None = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._steps = 0
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
        if self._steps % self.EVERY:
            return False
        agreed = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            agreed = bool(flag.item() > 0)
            self._pending = None
        if agreed:
            return True
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.ctx.device)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        return False

    def agree(self) -> bool:
        """A synchronous agreement (epoch boundaries): finish any pending poll first."""
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            self._pending = None
            if flag.item() > 0:
                return True
        return self.ctx.any_flag(self.requested)
