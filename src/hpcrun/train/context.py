"""The distributed context: who am I, which device, and the few collectives the trainer uses.

Ranks come from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE). nccl on CUDA, gloo on
CPU. Without torchrun, or with ``distributed.enabled: false``, the same object describes a
single process and every collective is a no-op, so the training loop has one code path.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from ..config import DistributedConfig
from ..errors import ConfigError
from ..track.distributed import DistContext

log = logging.getLogger("hpcrun.train")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(cfg: DistributedConfig) -> DistContext:
    """Join the process group torchrun prepared, or describe a single process."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    under_launcher = "MASTER_ADDR" in os.environ and "RANK" in os.environ

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    wanted = cfg.enabled
    if wanted is False or not under_launcher or (wanted == "auto" and world_size <= 1):
        if world_size > 1 and wanted is False:
            raise ConfigError(
                f"distributed.enabled is false but {world_size} processes were started; run "
                "one process or enable distributed training"
            )
        return DistContext(device=device)

    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise ConfigError("distributed.backend is nccl but no CUDA device is visible; use gloo "
                          "or auto")
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    try:
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    except Exception as exc:
        if world_size == 1:
            log.warning("distributed init failed on the only device (%s); continuing as a single "
                        "process", exc)
            return DistContext(device=device)
        raise
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                       backend=backend)
