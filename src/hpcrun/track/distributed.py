"""Who this process is in a distributed job (rank, world size, device) and the few
collectives hpcrun's writers use. Without a process group every collective is a no-op, so the
same code serves one process and many."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("hpcrun.track")


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    host: str = field(default_factory=socket.gethostname)

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """The one answer to "am I rank 0": rank 0 writes every shared file."""
        return self.rank == 0

    # -- collectives (no-ops when single process) ------------------------------------------

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally-shaped tensors from every rank along dim 0."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's value, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (a synchronous agreement)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as exc:  # teardown must never turn success into failure
                log.debug("destroy_process_group: %s", exc)
        self.backend = None


def current(device: torch.device | None = None) -> DistContext:
    """The process as the process group the program set up sees it (torchrun's ``RANK``
    and ``WORLD_SIZE`` name it before that; one process without either)."""
    if device is None:
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0") or 0)
            device = torch.device("cuda", torch.cuda.current_device()
                                  if torch.cuda.is_initialized() else
                                  local % max(torch.cuda.device_count(), 1))
        else:
            device = torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), local_rank=local_rank,
                           world_size=dist.get_world_size(), device=device,
                           backend=str(dist.get_backend()))
    return DistContext(rank=int(os.environ.get("RANK", "0") or 0), local_rank=local_rank,
                       world_size=1, device=device)
