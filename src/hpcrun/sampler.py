"""``python -m hpcrun.sampler --run-dir RUN --watch PID [--interval S]``

The system sampler every job gets, tracked or not: the launcher starts it beside torchrun on
each node. Every ``--interval`` seconds it appends to ``RUN/system.csv`` one row per GPU of
this host (utilisation %, memory used/total, power, from NVML) — one row with empty GPU
columns where there is none — each carrying the CPU % (of one core) and RSS of the watched
process and all its descendants. It ends with the watched process.

Cheap by design: psutil and NVML calls only, Process objects kept between samples so CPU
percentages are deltas, no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from . import rundir

#: how often the watched process is checked between samples (the sampler ends this soon
#: after the job's launcher has, so a scheduler's step is not held open)
_POLL_S = 0.25


class Gpus:
    """NVML's view of this host's GPUs; no GPU (no driver, no library) is an empty list."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                            for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - NVMLError, ImportError: a host without GPUs
            self.handles = []

    def read(self) -> list[dict[str, Any]]:
        rows = []
        for index, handle in enumerate(self.handles):
            row: dict[str, Any] = {"gpu": index}
            with contextlib.suppress(Exception):
                row["gpu_util_pct"] = float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            with contextlib.suppress(Exception):
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                row["gpu_mem_used_mb"] = memory.used / 2**20
                row["gpu_mem_total_mb"] = memory.total / 2**20
            with contextlib.suppress(Exception):
                row["gpu_power_w"] = self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            rows.append(row)
        return rows

    def close(self) -> None:
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()


class Tree:
    """CPU % and RSS of a process and its descendants, as deltas between samples."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.known: dict[int, psutil.Process] = {}

    def sample(self) -> tuple[float, float, int]:
        try:
            members = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            members = []
        me = os.getpid()
        cpu = rss = 0.0
        alive: dict[int, psutil.Process] = {}
        for proc in members:
            if proc.pid == me:
                continue
            proc = self.known.get(proc.pid, proc)
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)  # 0.0 the first time a process is seen
                    rss += proc.memory_info().rss
                alive[proc.pid] = proc
            except psutil.Error:
                continue
        self.known = alive
        return cpu, rss / 2**20, len(alive)


def open_csv(path: Path) -> int:
    """An append-only descriptor for system.csv; the header is written by whichever node
    creates the file (a temp file linked into place, so no row lands before it)."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        tmp.write_text(",".join(rundir.SYSTEM_COLUMNS) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink(missing_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND)


def rows_text(now: float, host: str, gpus: list[dict[str, Any]], cpu: float, rss: float,
              count: int) -> str:
    common = {"time": round(now, 3), "host": host, "cpu_pct": round(cpu, 1),
              "rss_mb": round(rss, 1), "processes": count}
    lines = []
    for gpu in gpus or [{}]:
        row = {**common, **gpu}
        lines.append(",".join(rundir.format_value(row.get(c)) for c in rundir.SYSTEM_COLUMNS))
    return "".join(line + "\n" for line in lines)


def run(root: Path, watch: int, interval: float) -> None:
    tree = Tree(watch)
    gpus = Gpus()
    host = socket.gethostname()
    fd = open_csv(root / rundir.SYSTEM)
    try:
        tree.sample()  # primes the CPU counters
        next_at = time.monotonic() + min(interval, 2.0)  # a first row early in the job
        while True:
            if os.getppid() != watch and not psutil.pid_exists(watch):
                return
            try:
                if tree.root.status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.Error:
                return
            if time.monotonic() >= next_at:
                cpu, rss, count = tree.sample()
                # one write per sample: appends of whole lines from several nodes interleave
                # by line, never inside one
                os.write(fd, rows_text(time.time(), host, gpus.read(), cpu, rss,
                                       count).encode())
                next_at += interval
            time.sleep(min(_POLL_S, max(0.0, next_at - time.monotonic())))
    finally:
        os.close(fd)
        gpus.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcrun.sampler",
                                     description="Append GPU and process samples to "
                                     "RUN/system.csv until the watched process ends.")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--watch", type=int, required=True, help="pid of the job's launcher")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        return 0
    root = Path(args.run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        run(root, args.watch, args.interval)
    except (OSError, psutil.Error):
        return 1  # the job goes on without its samples
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
