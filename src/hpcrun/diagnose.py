"""Red flags: what a researcher would want to be told about a run while it trains or after it
failed. Read from the run directory only (pure Python); thresholds come from the run's
``monitor:`` config section.

Flags: nan_loss, nonfinite_gradients, exploding_gradients, vanishing_gradients,
separation_stalled, separation_collapsed, diverging, stalled, memory_growth,
gpu_memory_growth, memory_near_capacity, host_memory_near_capacity, failed (with a known
signature when the log shows one).

A ``Diagnosis`` reads through a ``rundir.RunTables`` and keeps, per check, what it worked out
from the rows seen so far, so a live view that keeps one between refreshes pays only for the
new rows; ``diagnose()`` is the same code over a run directory read whole. Cells that cannot
be read (empty, damaged) count as NaN, and a row whose epoch cannot be read is left out of the
checks that name an epoch.

Long (over 600 lines) because every red flag's check lives here beside its thresholds and its
advice, so adding or changing a flag touches one place (docs/red-flags.md explains each).
"""

from __future__ import annotations

import bisect
import csv
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import rundir

#: how much of a failed job's log is searched for the signatures below
LOG_TAIL_LINES = 200


def log_tail(text: str) -> str:
    """The end of a job's log where failure signatures are looked for."""
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


#: log lines that name a failure's cause; when several appear, the one nearest the end of the
#: text wins (the first error of a failing job is often a symptom, the last its cause)
SIGNATURES = tuple((re.compile(pattern), meaning) for pattern, meaning in (
    (r"CUDA out of memory|OutOfMemoryError",
     "CUDA out of memory: lower the batch size or enable AMP"),
    # NCCL_DEBUG=INFO and ProcessGroupNCCL's start-up lines name NCCL on every line: only its
    # errors and timeouts count ("[E..." is the glog prefix of an error line)
    (r"NCCL (?:error|Error|ERROR|timeout|Timeout)|Watchdog caught collective operation timeout"
     r"|\[E[\d ][^\]\n]*ProcessGroupNCCL|ProcessGroupNCCL[^\n]*\b(?:error|timeout|timed out)\b",
     "NCCL error or timeout: a rank stalled or the network failed"),
    (r"oom-kill|oom_kill event|Out of memory: Killed process|Exceeded job memory limit",
     "killed by the kernel's OOM killer: host memory ran out"),
    (r"DUE TO TIME LIMIT", "the scheduler's time limit was reached"),
    (r"DUE TO PREEMPTION", "preempted by the scheduler"),
    (r"Signal 9 \(SIGKILL\)", "a process was killed with SIGKILL"),
    (r"No space left on device", "the disk of the run directory is full"),
    (r"File too large", "a file-size limit (ulimit -f) was reached"),
    (r"Read-only file system", "the run directory is on a read-only filesystem"),
))


@dataclass(frozen=True)
class Flag:
    code: str
    message: str
    stage: str | None = None
    epoch: int | None = None
    #: the rank a per-rank flag is about (for a host-wide one, the host's first rank)
    rank: int | None = None

    @property
    def advice(self) -> str:
        """One line on what to do about it (docs/red-flags.md says more)."""
        return ADVICE.get(self.code, "see docs/red-flags.md")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "advice": self.advice}


#: what to do about each red flag, in one line (docs/red-flags.md explains each)
ADVICE = {
    "nan_loss": "lower training.lr, keep training.grad_clip on, try training.amp=off, and check "
                "the data for NaN or inf; resume from a checkpoint before the first bad epoch",
    "diverging": "the model is overfitting or the learning rate is too high: stop at the best "
                 "epoch (early stopping), lower training.lr, or add regularisation",
    "exploding_gradients": "set or lower training.grad_clip, lower training.lr or add warmup "
                           "(training.scheduler.warmup_epochs)",
    "nonfinite_gradients": "the optimizer skipped or applied inf/NaN gradients: lower "
                           "training.lr, keep training.grad_clip on, try training.amp=off",
    "vanishing_gradients": "the model is not learning: raise training.lr, check the "
                           "initialisation and activations, or that layers are not frozen",
    "separation_stalled": "predictions for the two classes are not moving apart: check the "
                          "labels, raise training.lr or train longer",
    "separation_collapsed": "the classes' predictions are merging again: stop at the best "
                            "epoch, lower training.lr or add regularisation",
    "memory_growth": "host memory rises every epoch: look for tensors or lists kept across "
                     "steps (losses appended without .item(), caches)",
    "gpu_memory_growth": "GPU memory rises every epoch: look for tensors kept across steps "
                         "(a loss kept with its graph) or growing batches",
    "memory_near_capacity": "close to out of memory: lower training.batch_size (keep the "
                            "global batch with training.grad_accum_steps) or use bf16/fp16",
    "host_memory_near_capacity": "the host is close to out of memory: fewer data workers or "
                                 "processes per node, or a smaller batch",
    "stalled": "no heartbeat: look at `hpcrun logs` (a hang in a collective, a dead rank, a "
               "full disk); cancel and --resume it if it does not move",
    "failed": "read the cause and the log's last lines (`hpcrun status`, `hpcrun logs`), fix "
              "it, then `hpcrun submit --resume JOB`",
    "gpu_idle": "the GPUs wait for data: more data-loader workers, a faster disk or input "
                "pipeline, a larger batch",
}


def failure_cause(text: str) -> str | None:
    """What the known signature found last in ``text`` says (None when there is none)."""
    best: tuple[int, str] | None = None
    for pattern, meaning in SIGNATURES:
        last = None
        for last in pattern.finditer(text):  # noqa: B007 - only the last match is wanted
            pass
        if last is not None and (best is None or last.start() > best[0]):
            best = (last.start(), meaning)
    return best[1] if best else None


class RunningMedian:
    """The median of the values added so far: a sorted list kept with ``bisect.insort``, so
    adding is a binary search (and a memmove) and the median is read in O(1)."""

    def __init__(self) -> None:
        self._values: list[float] = []

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: float) -> None:
        bisect.insort(self._values, value)

    def median(self) -> float:
        values, n = self._values, len(self._values)
        if not n:
            return math.nan
        middle = n // 2
        return values[middle] if n % 2 else (values[middle - 1] + values[middle]) / 2


class _Scan:
    """A check's state over one CSV: ``update`` shows it each row once, in order, and starts
    it again when the file was rewritten (a resume truncates it)."""

    def __init__(self, limits: Any):
        self.limits = limits
        self._generation: int | None = None
        self._seen = 0

    def update(self, tail: rundir.CsvTail) -> None:
        if tail.generation != self._generation:
            self._generation, self._seen = tail.generation, 0
            self.start()
        n = len(tail.rows)
        if n > self._seen:
            self.scan(tail, self._seen, n)
            self._seen = n

    def start(self) -> None:
        raise NotImplementedError

    def scan(self, tail: rundir.CsvTail, begin: int, end: int) -> None:
        raise NotImplementedError


def _epoch(value: float) -> int | None:
    return int(value) if math.isfinite(value) and value.is_integer() else None


class _Training(_Scan):
    """training.csv: the first non-finite loss, the median epoch time, the rows (with a
    readable epoch) the divergence check looks back over."""

    def start(self) -> None:
        self.epochs: list[int] = []
        self.rows: list[int] = []  # rows whose epoch could be read
        self.nonfinite: dict[str, int] = {}
        self.times = RunningMedian()

    def scan(self, tail: rundir.CsvTail, begin: int, end: int) -> None:
        epochs, times = tail.floats("Epoch"), tail.floats("Epoch Time")
        losses = {c: tail.floats(c) for c in ("Train Loss", "Val Loss")}
        for i in range(begin, end):
            if math.isfinite(times[i]) and times[i] > 0:
                self.times.add(times[i])
            epoch = _epoch(epochs[i])
            if epoch is None:
                continue
            self.rows.append(i)
            self.epochs.append(epoch)
            for column, values in losses.items():
                if column not in self.nonfinite and not math.isfinite(values[i]):
                    self.nonfinite[column] = epoch

    def nan_loss(self, stage: str) -> list[Flag]:
        for column in ("Train Loss", "Val Loss"):
            if column in self.nonfinite:
                epoch = self.nonfinite[column]
                return [Flag("nan_loss", f"{column} is not finite from epoch {epoch}", stage,
                             epoch)]
        return []

    def diverging(self, tail: rundir.CsvTail, stage: str) -> list[Flag]:
        """Validation loss rising for ``divergence_patience`` epochs while training loss
        fell over them: only the last rows are looked at."""
        n = self.limits.divergence_patience
        if len(self.rows) <= n:
            return []
        train, val = tail.floats("Train Loss"), tail.floats("Val Loss")
        last = self.rows[-n - 1:]
        rising = all(val[b] > val[a] for a, b in zip(last, last[1:], strict=False))
        if rising and train[last[-1]] < train[last[0]]:
            return [Flag("diverging", f"validation loss rose for {n} epochs while training "
                         "loss fell (overfitting?)", stage, self.epochs[-1])]
        return []


class _Gradients(_Scan):
    """gradient_stats.csv: the first epoch with non-finite norms, the first exploding one
    (over ``grad_norm_max``, or a mean over ``grad_jump_factor`` x the median of the earlier
    epochs' means), and the latest mean for the vanishing check."""

    def start(self) -> None:
        self.nonfinite: int | None = None
        self.exploding: tuple[int, str] | None = None
        self.latest: tuple[int, float] | None = None
        self._means = RunningMedian()

    def scan(self, tail: rundir.CsvTail, begin: int, end: int) -> None:
        limits = self.limits
        epochs, counts = tail.floats("epoch"), tail.floats("nonfinite_steps")
        means, highs = tail.floats("norm_mean"), tail.floats("norm_max")
        for i in range(begin, end):
            epoch = _epoch(epochs[i])
            if epoch is None:
                continue
            mean, high = means[i], highs[i]
            self.latest = (epoch, mean)
            if self.nonfinite is None and counts[i] > 0:
                self.nonfinite = epoch
            if self.exploding is not None:
                continue
            if high > limits.grad_norm_max:  # False for NaN
                self.exploding = (epoch, f"max norm {high:.3g} > {limits.grad_norm_max:g}")
            elif (len(self._means) >= 2 and math.isfinite(mean)
                  and mean > limits.grad_jump_factor * self._means.median()):
                self.exploding = (epoch, f"mean norm {mean:.3g} is over "
                                  f"{limits.grad_jump_factor:g}x the median of earlier epochs")
            if math.isfinite(mean):
                self._means.add(mean)

    def flags(self, stage: str) -> list[Flag]:
        flags = []
        if self.nonfinite is not None:
            flags.append(Flag("nonfinite_gradients", "non-finite gradient norms in epoch "
                              f"{self.nonfinite}", stage, self.nonfinite))
        if self.exploding is not None:
            epoch, why = self.exploding
            flags.append(Flag("exploding_gradients", f"gradients exploding in epoch {epoch}: "
                              f"{why}", stage, epoch))
        if self.latest is not None:
            epoch, mean = self.latest
            if math.isfinite(mean) and mean < self.limits.grad_norm_min:
                flags.append(Flag("vanishing_gradients", f"mean gradient norm {mean:.2e} < "
                                  f"{self.limits.grad_norm_min:g} in epoch {epoch}", stage,
                                  epoch))
        return flags


_VAL = ("phase", "val")


class _Separation(_Scan):
    """probability_stats.csv, validation rows: whether separation stopped improving while
    still low (the best of all but the last ``separation_patience`` epochs, kept as a running
    maximum) or collapsed from its best."""

    def start(self) -> None:
        self.values: list[float] = []
        self.epoch: int | None = None
        self.best = -math.inf  # over every finite value
        self.last = math.nan  # the latest finite value
        self._before = -math.inf  # the best before the last ``separation_patience``
        self._counted = 0  # values in ``_before``
        self._looked = 0  # validation rows looked at

    def scan(self, tail: rundir.CsvTail, begin: int, end: int) -> None:
        epochs, values = tail.floats("epoch", _VAL), tail.floats("separation", _VAL)
        for i in range(self._looked, len(values)):
            epoch = _epoch(epochs[i])
            if epoch is None:
                continue
            self.values.append(values[i])
            self.epoch = epoch
            if math.isfinite(values[i]):
                self.best, self.last = max(self.best, values[i]), values[i]
        self._looked = len(values)
        n = self.limits.separation_patience
        for value in self.values[self._counted:max(self._counted, len(self.values) - n)]:
            if math.isfinite(value):
                self._before = max(self._before, value)
        self._counted = max(self._counted, len(self.values) - n)

    def flags(self, stage: str) -> list[Flag]:
        limits, flags = self.limits, []
        n = limits.separation_patience
        if len(self.values) > n:
            recent = [s for s in self.values[-n:] if math.isfinite(s)]
            if recent and max(recent) <= self._before < limits.separation_min:
                flags.append(Flag("separation_stalled", "validation separation has not "
                                  f"improved for {n} epochs (best {self._before:.3f})", stage,
                                  self.epoch))
        if self.best > limits.separation_collapse_min and \
                self.last < limits.separation_collapse_ratio * self.best:
            flags.append(Flag("separation_collapsed", "validation separation fell from "
                              f"{self.best:.3f} to {self.last:.3f}", stage, self.epoch))
        return flags


class _Growth:
    """One rank's readings of one memory column: whether they rose every epoch after the
    first (which is warm-up) by more than ``memory_growth_pct`` in all."""

    def __init__(self) -> None:
        self.count, self.second, self.last, self.rising = 0, math.nan, math.nan, True

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.count += 1
        if self.count == 2:
            self.second = value
        elif self.count > 2 and value < self.last:
            self.rising = False
        self.last = value

    def grew(self, pct: float) -> bool:
        return self.count >= 4 and self.rising and self.last > self.second * (1 + pct / 100)


#: GPU memory is watched through torch's peak and, where torch's counters are empty (another
#: framework's process, or an old row), through NVML's view of the device
_GPU_GROWTH = ("peak_mb", "device_used_mb")
_GROWTH = ("host_rss_mb", *_GPU_GROWTH)


class _Rank:
    def __init__(self) -> None:
        self.growth = {column: _Growth() for column in _GROWTH}
        self.latest: int | None = None  # row number of the rank's latest readable row
        self.epoch: int | None = None
        self.seen = 0  # how many of the rank's rows were looked at


class _Memory(_Scan):
    """gpu_memory.csv, per rank: growth of host and GPU memory, and the latest row (GPU
    memory near capacity; host memory of all ranks on one host near the host's total)."""

    def start(self) -> None:
        self.ranks: dict[int, _Rank] = {}

    def scan(self, tail: rundir.CsvTail, begin: int, end: int) -> None:
        epochs = tail.floats("epoch")
        columns = {column: tail.floats(column) for column in _GROWTH}
        for text, rows in tail.index("rank").items():
            rank = rundir.to_int(text)
            if rank is None:
                continue
            state = self.ranks.setdefault(rank, _Rank())
            for i in rows[state.seen:]:
                epoch = _epoch(epochs[i])
                if epoch is None:
                    continue
                state.latest, state.epoch = i, epoch
                for column, values in columns.items():
                    state.growth[column].add(values[i])
            state.seen = len(rows)

    def flags(self, tail: rundir.CsvTail, stage: str) -> list[Flag]:
        limits, flags = self.limits, []
        pct = limits.memory_growth_pct
        used, total = tail.floats("device_used_mb"), tail.floats("device_total_mb")
        hosts: dict[str, list[tuple[int, _Rank]]] = {}
        for rank, state in sorted(self.ranks.items()):
            if state.latest is None:
                continue
            hosts.setdefault(tail.rows[state.latest].get("host") or "?", []).append(
                (rank, state))
            host = state.growth["host_rss_mb"]
            if host.grew(pct):
                flags.append(Flag("memory_growth", f"rank {rank} host memory grew from "
                                  f"{host.second:.0f} to {host.last:.0f} MB", stage,
                                  state.epoch, rank))
            gpu = next((c for c in _GPU_GROWTH if state.growth[c].grew(pct)), None)
            if gpu:
                g = state.growth[gpu]
                flags.append(Flag("gpu_memory_growth", f"rank {rank} GPU memory ({gpu}) grew "
                                  f"from {g.second:.0f} to {g.last:.0f} MB", stage,
                                  state.epoch, rank))
            u, t = used[state.latest], total[state.latest]
            if t > 0 and 100 * u / t > limits.memory_near_capacity_pct:  # False for NaN
                flags.append(Flag("memory_near_capacity", f"rank {rank} GPU memory at "
                                  f"{100 * u / t:.0f}% of {t:.0f} MB", stage, state.epoch,
                                  rank))
        flags.extend(self._hosts(tail, stage, hosts))
        return flags

    def _hosts(self, tail: rundir.CsvTail, stage: str,
               hosts: dict[str, list[tuple[int, _Rank]]]) -> list[Flag]:
        """Host memory near capacity: the RSS of the ranks on one host (their latest rows)
        against the host's total (empty in files written before it was recorded)."""
        rss, capacity = tail.floats("host_rss_mb"), tail.floats("host_total_mb")
        flags = []
        for host, members in hosts.items():
            rows = [state.latest for _, state in members if state.latest is not None]
            total = max((capacity[i] for i in rows if capacity[i] > 0), default=math.nan)
            held = math.fsum(rss[i] for i in rows if math.isfinite(rss[i]))
            if total > 0 and 100 * held / total > self.limits.memory_near_capacity_pct:
                ranks = ", ".join(str(rank) for rank, _ in members)
                flags.append(Flag(
                    "host_memory_near_capacity", f"host {host} memory at "
                    f"{100 * held / total:.0f}% of {total:.0f} MB ({held:.0f} MB RSS of "
                    f"rank{'s' if len(members) > 1 else ''} {ranks})", stage,
                    max(state.epoch or 0 for _, state in members), members[0][0]))
        return flags


class _Stage:
    """Every check of one stage, over the stage's CSVs."""

    def __init__(self, folder: Path, limits: Any):
        self.folder = folder
        self.training = _Training(limits)
        self.gradients = _Gradients(limits)
        self.separation = _Separation(limits)
        self.memory = _Memory(limits)

    def flags(self, tables: rundir.RunTables, stage: str) -> list[Flag]:
        folder = self.folder
        training = tables.tail(folder / rundir.TRAINING)
        if not training.rows:
            return []
        self.training.update(training)
        flags = self.training.nan_loss(stage)
        self.gradients.update(tables.tail(folder / rundir.GRADIENT_STATS))
        flags += self.gradients.flags(stage)
        if _classifier(folder):  # separation means nothing without a classifier loss
            self.separation.update(tables.tail(folder / rundir.PROBABILITY_STATS))
            flags += self.separation.flags(stage)
        flags += self.training.diverging(training, stage)
        memory = tables.tail(folder / rundir.GPU_MEMORY)
        self.memory.update(memory)
        return flags + self.memory.flags(memory, stage)


def _classifier(folder: Path) -> bool:
    try:
        return "classification" in rundir.read_header(folder / rundir.LOSS_COMPONENTS)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


class Diagnosis:
    """The red flags of one run directory, read through ``tables``. Kept between refreshes
    (as ``hpcrun monitor`` does) each ``flags()`` call looks only at the rows added since the
    previous one; a fresh one reads the run whole (``diagnose``)."""

    def __init__(self, run_dir: str | Path, tables: rundir.RunTables | None = None):
        self.run = rundir.RunDir(run_dir)
        self.tables = tables if tables is not None else rundir.RunTables()
        self._stages: dict[str, _Stage] = {}
        self._config: tuple[str | None, Any] = (None, None)
        self._idle = _GpuIdle()

    def limits(self) -> Any:
        """The run's ``monitor:`` thresholds (the defaults when its config cannot be read),
        validated again only when config.yaml changed."""
        from .config import MonitorConfig, load_config_text

        try:
            text: str | None = self.run.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
        if self._config[1] is None or text != self._config[0]:
            try:
                limits = load_config_text(text or "", str(self.run.config)).monitor
            except Exception:  # noqa: BLE001 - an unreadable config keeps the defaults
                limits = MonitorConfig()
            if limits != self._config[1]:
                self._stages.clear()  # what the checks worked out used the old thresholds
            self._config = (text, limits)
        return self._config[1]

    def _stage(self, name: str) -> _Stage:
        stage = self._stages.get(name)
        if stage is None:
            limits = self._config[1] if self._config[1] is not None else self.limits()
            stage = self._stages[name] = _Stage(self.run.stage(name), limits)
        return stage

    def epoch_time(self, stage: str) -> float | None:
        """The median epoch time of ``stage`` so far (None before its first epoch)."""
        scan = self._stage(stage).training
        scan.update(self.tables.tail(self.run.stage(stage) / rundir.TRAINING))
        return scan.times.median() if len(scan.times) else None

    def flags(self, *, job_state: str | None = None, log_text: str | None = None,
              now: float | None = None) -> list[Flag]:
        """Every red flag of the run (every stage), given what is known about the job."""
        limits = self.limits()
        status = rundir.read_status(self.run.status)
        flags: list[Flag] = []
        for stage in self.run.stages():
            flags.extend(self._stage(stage).flags(self.tables, stage))
        flags.extend(self._idle.flags(self.tables.tail(self.run.root / rundir.SYSTEM), limits))

        state = job_state or status.state
        stage = status.stage
        updated = status.updated_at if status.updated_at is not None else math.nan
        if state == "RUNNING" and math.isfinite(updated) and stage:
            median = self.epoch_time(stage)
            if median is not None:
                limit = max(limits.stall_factor * median, limits.stall_min_s)
                quiet = (now or time.time()) - updated
                if quiet > limit:
                    flags.append(Flag("stalled", f"no heartbeat for {quiet:.0f} s (over "
                                      f"{limit:.0f} s: {limits.stall_factor:g}x the median "
                                      f"epoch time, at least {limits.stall_min_s:g} s)", stage,
                                      status.epoch))

        failure = rundir.read_failure(self.run.failure)
        if state == "FAILED" or failure is not None:
            flags.append(self._failed(status, failure, log_text, stage))
        return flags

    @staticmethod
    def _failed(status: rundir.Status, failure: rundir.Failure | None, log_text: str | None,
                stage: str | None) -> Flag:
        parts = []
        texts = []
        if failure is not None:
            parts.append(f"{failure.who()}: {failure.exception}")
            texts += failure.traceback
            texts.append(failure.exception or "")
        # the job's log last: what the scheduler wrote after the trainer died is nearest
        # the cause (the time limit, the OOM killer)
        texts.append(log_text or "")
        cause = failure_cause("\n".join(texts))
        if cause:
            parts.append(cause)
        if not parts:
            parts.append(status.message or "the job failed")
        return Flag("failed", "; ".join(parts), failure.stage if failure else stage,
                    failure.epoch if failure else None)


class _GpuIdle:
    """``gpu_idle``: every GPU of a host below ``gpu_idle_pct`` utilisation in consecutive
    samples of system.csv spanning more than ``gpu_idle_s`` (the sampler writes only while
    the job runs). Each row is looked at once; the longest such stretch per host is kept."""

    def __init__(self) -> None:
        self.generation = -1
        self.limits: tuple[float, float] | None = None
        self._reset()

    def _reset(self) -> None:
        self.seen = 0
        #: per host: (time of the sample being gathered, its GPUs all idle so far)
        self.pending: dict[str, tuple[float, bool]] = {}
        #: per host: when the current idle stretch began, and the longest (start, end)
        self.since: dict[str, float | None] = {}
        self.longest: dict[str, tuple[float, float]] = {}

    def _sample(self, host: str, when: float, idle: bool) -> None:
        start = self.since.get(host)
        if not idle:
            self.since[host] = None
            return
        if start is None:
            self.since[host] = start = when
        best = self.longest.get(host)
        if best is None or when - start > best[1] - best[0]:
            self.longest[host] = (start, when)

    def flags(self, tail: rundir.CsvTail, limits: Any) -> list[Flag]:
        key = (limits.gpu_idle_pct, limits.gpu_idle_s)
        if tail.generation != self.generation or key != self.limits:
            self._reset()
            self.generation, self.limits = tail.generation, key
        rows = tail.rows
        times, utils = tail.floats("time"), tail.floats("gpu_util_pct")
        for i in range(self.seen, len(rows)):
            host, when, util = rows[i].get("host") or "", times[i], utils[i]
            if not math.isfinite(when) or not math.isfinite(util):
                continue  # no GPU on this host
            current = self.pending.get(host)
            if current is not None and current[0] != when:  # the previous sample is whole
                self._sample(host, *current)
                current = None
            idle = util < limits.gpu_idle_pct
            self.pending[host] = (when, idle if current is None else current[1] and idle)
        self.seen = len(rows)
        out = []
        for host in sorted({*self.longest, *self.pending}):
            longest = self.longest.get(host)
            pending = self.pending.get(host)
            start = self.since.get(host)
            if pending is not None and pending[1] and start is not None and (
                    longest is None or pending[0] - start > longest[1] - longest[0]):
                longest = (start, pending[0])  # the sample still being gathered counts too
            if longest is not None and longest[1] - longest[0] > limits.gpu_idle_s:
                took = longest[1] - longest[0]
                out.append(Flag("gpu_idle", f"the GPUs of {host} sat below "
                                f"{limits.gpu_idle_pct:g}% utilisation for {took:.0f} s (over "
                                f"{limits.gpu_idle_s:g} s) while the job ran"))
        return out


def failed_flag(run_dir: Path, log_text: str | None = None) -> Flag:
    """The ``failed`` flag of a run that failed (its cause from failure.json and the log),
    without reading its CSVs."""
    run = rundir.RunDir(run_dir)
    status = rundir.read_status(run.status)
    return Diagnosis._failed(status, rundir.read_failure(run.failure), log_text, status.stage)


def diagnose(run_dir: Path, *, job_state: str | None = None, log_text: str | None = None,
             now: float | None = None, tables: rundir.RunTables | None = None) -> list[Flag]:
    """Every red flag of a run directory (every stage), given what is known about the job,
    read whole (or through ``tables``, which a caller may have read already)."""
    return Diagnosis(run_dir, tables).flags(job_state=job_state, log_text=log_text, now=now)
