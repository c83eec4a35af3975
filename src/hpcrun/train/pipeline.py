"""A run: the run directory, its metadata and status, and the pipeline's stages in order."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import ExperimentConfig
from ..errors import EXIT_OK, EXIT_REQUEUE, ConfigError
from ..track import records
from ..track.distributed import DistContext
from ..track.writes import writing
from .data import Dataset, load_data
from .loop import StageRunner, StopRequest

log = logging.getLogger("hpcrun.train")


def find_latest_run(cfg: ExperimentConfig) -> Path:
    """The run of the experiment created last: by when its config.yaml was written (run ids
    have one-second resolution and a random token, so two runs of one second do not sort by
    their names), then by name."""
    root = Path(cfg.runs_dir) / cfg.experiment
    runs = sorted((p for p in root.glob("*") if (p / rundir.CONFIG).exists()),
                  key=lambda p: ((p / rundir.CONFIG).stat().st_mtime_ns, p.name))
    if not runs:
        raise ConfigError(f"--resume: no run of {cfg.experiment!r} under {root} to resume",
                          hint="pass --run-dir DIR")
    return runs[-1]


def choose_run_dir(ctx: DistContext, cfg: ExperimentConfig, run_dir: str | None,
                   resume: bool) -> rundir.RunDir:
    """Rank 0 picks the directory (new, given, or the latest for --resume); all ranks agree."""
    path: str | None = None
    error: str | None = None
    if ctx.is_main:
        try:
            if run_dir:
                path = str(Path(run_dir))
            elif resume:
                path = str(find_latest_run(cfg))
            else:
                run_id = rundir.new_run_id(time.time(), secrets.token_hex(2))
                path = str(Path(cfg.runs_dir) / cfg.experiment / run_id)
        except ConfigError as exc:
            error = str(exc)
    path, error = ctx.broadcast_object((path, error))
    if error:
        raise ConfigError(error)
    return rundir.RunDir(path)


#: the sections that decide what a run computes: every stage of a run must see the same ones
#: (resources, backend, monitor, ... may differ between the jobs of one run)
RUN_CONFIG_KEYS = ("seed", "data", "model", "training", "pipeline")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))  # pipeline stages by index
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(recorded: ExperimentConfig,
                       cfg: ExperimentConfig) -> list[tuple[str, Any, Any]]:
    """(key, value in ``recorded``, value in ``cfg``) for each key of ``RUN_CONFIG_KEYS`` where
    the two configs, as config.yaml writes them, differ."""
    import yaml

    def flat(config: ExperimentConfig) -> dict[str, Any]:
        data = yaml.safe_load(config.to_yaml()) or {}
        return _flat({key: data.get(key) for key in RUN_CONFIG_KEYS})

    old, new = flat(recorded), flat(cfg)
    return [(key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)]


def resume_config(run: rundir.RunDir, overrides: list[str]) -> ExperimentConfig:
    """The config of the run that ``--resume`` continues: its config.yaml, with ``--set``
    applied over it (``check_run_config`` then refuses any that changes it)."""
    from ..config import apply_set, load_config_text, parse_set, safe_load, validate

    text = run.config.read_text()
    if not overrides:
        return load_config_text(text, str(run.config))
    data = safe_load(text, str(run.config))
    if not isinstance(data, dict):
        raise ConfigError(f"{run.config}: a config must be a mapping of sections")
    for expression in overrides:
        parts, value = parse_set(expression)
        apply_set(data, parts, value)
    return validate(data, source=str(run.config))


def check_run_config(ctx: DistContext, cfg: ExperimentConfig, run: rundir.RunDir) -> None:
    """Refuse to run a stage of ``run`` with another config than the run's config.yaml (what
    its earlier stages ran with, and what its report and resumes read): rank 0 compares,
    every rank raises the same ``ConfigError``."""
    from ..config import load_config_text

    error: tuple[str, str] | None = None
    if ctx.is_main and run.config.exists():
        try:
            recorded = load_config_text(run.config.read_text(), str(run.config))
            diffs = config_differences(recorded, cfg)
        except (OSError, ConfigError) as exc:
            diffs, error = [], (f"cannot read the run's {run.config}: {exc}", None)
        if diffs:
            key, was, now = diffs[0]
            more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
            error = (f"{run.root} ran with another config: {key} is {now!r} here but {was!r} "
                     f"in its config.yaml{more}",
                     "every stage of a run uses the run's config.yaml; start a new run for "
                     "other values")
    error = ctx.broadcast_object(error)
    if error:
        raise ConfigError(*error)


class Run(records.RunRecords):
    """Rank 0's view of the run's shared files (metadata.json, status.json), written
    through hpcrun.track's records like any program's."""

    def __init__(self, ctx: DistContext, cfg: ExperimentConfig, run: rundir.RunDir):
        super().__init__(run.root)
        self.ctx, self.cfg = ctx, cfg

    def start(self, hosts: list[str], data: Dataset) -> None:  # type: ignore[override]
        run = self.dir
        with writing(run.root):
            run.root.mkdir(parents=True, exist_ok=True)
            run.logs.mkdir(exist_ok=True)
            records.set_aside_failure(run.root)
        if not run.config.exists():
            with writing(run.config):
                rundir.write_atomic(run.config, self.cfg.to_yaml().encode())
        with writing(run.metadata):
            super().start(self.cfg.experiment, [s.name for s in self.cfg.pipeline],
                          world_size=self.ctx.world_size, hosts=hosts, host=self.ctx.host,
                          extra={"device": str(self.ctx.device),
                                 "dist_backend": self.ctx.backend, "seed": self.cfg.seed,
                                 "data": data.info})

    def write_status(self, **changes: Any) -> None:
        with writing(self.dir.status):
            super().write_status(**changes)

    def finish(self, state: str, message: str | None = None) -> None:
        with writing(self.dir.metadata):
            super().finish(state, message)


mark_failed = records.mark_failed


def write_manifest(run: rundir.RunDir) -> None:
    with writing(run.manifest):
        rundir.write_manifest(run.root)


def pid_file(run: rundir.RunDir, rank: int) -> Path:
    """The rank's pid file (``rundir.rank_pid``)."""
    return run.root / rundir.rank_pid(rank)


def ended_ranks(run: rundir.RunDir, ctx: DistContext, wait: float = 0.0) -> list[dict[str, Any]]:
    """The other ranks on this host whose process has ended (or is a zombie not yet reaped by
    the launcher), waiting up to ``wait`` seconds for one to show.

    A rank killed outright (OOM killer, kill -9) writes nothing; its peers only see a closed
    connection in their next collective, a moment before the kernel has finished the dead
    process, hence the wait. Ranks on other hosts cannot be checked from here.
    """
    import psutil

    started = psutil.Process().create_time()
    local = []
    for rank in range(ctx.world_size):
        path = pid_file(run, rank)
        try:
            host, pid_text = path.read_text().split()
            written = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        # a pid file older than this process is a previous start's: its process is long gone
        if rank != ctx.rank and host == ctx.host and written >= started - 1:
            local.append((rank, host, int(pid_text), written))

    def gone(pid: int, written: float) -> bool:
        try:
            process = psutil.Process(pid)
            # a process started after the pid file was written reuses the pid
            return process.create_time() > written + 1 or \
                process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False

    deadline = time.monotonic() + wait
    while True:
        ended = [{"rank": rank, "host": host, "pid": pid}
                 for rank, host, pid, written in local if gone(pid, written)]
        if ended or time.monotonic() >= deadline:
            return ended
        time.sleep(0.02)


def _setup_file_logging(ctx: DistContext, run: rundir.RunDir) -> None:
    path = run.root / rundir.rank_log(ctx.rank)
    with writing(path):
        run.logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [rank %(rank)s] %(message)s"))
    handler.addFilter(_RankFilter(ctx.rank))
    log.addHandler(handler)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def run_pipeline(ctx: DistContext, cfg: ExperimentConfig, stage_arg: str, run: rundir.RunDir,
                 holder: dict[str, Any]) -> int:
    """Run the requested stages; return the process exit code. ``holder`` receives the
    ``Run`` once the directory exists, so a failure can be recorded in it."""
    names = [s.name for s in cfg.pipeline] if stage_arg == "all" else [cfg.stage(stage_arg).name]
    stage_cfgs = {name: cfg.for_stage(name) for name in names}
    datasets: dict[str, Dataset] = {}
    for name, scfg in stage_cfgs.items():
        holder["stage"] = name  # what a failure from here on is recorded against
        key = scfg.data.model_dump_json() + f"/{scfg.seed}"
        if key not in datasets:
            datasets[key] = load_data(scfg.data, scfg.seed)
        datasets[name] = datasets[key]

    holder["stage"] = names[0]
    hosts = sorted(set(ctx.gather_objects(ctx.host)))
    state = Run(ctx, cfg, run)
    if ctx.is_main:
        state.start(hosts, datasets[names[0]])
        holder["run"] = state
    ctx.barrier()
    holder["started"] = True  # a failure.json from here on is this run's
    _setup_file_logging(ctx, run)
    # where a job script finds this rank to forward a preemption signal (signal-trainer.sh)
    with writing(pid_file(run, ctx.rank)):
        rundir.write_atomic(pid_file(run, ctx.rank), f"{ctx.host} {os.getpid()}\n".encode())
    done = ctx.broadcast_object(state.status.get("stages", {}))

    stop = StopRequest(ctx)
    results = {}
    for name in names:
        if done.get(name) == "SUCCEEDED":
            log.info("stage %s already finished; skipping", name)
            continue
        stage = cfg.stage(name)
        scfg = stage_cfgs[name]
        holder["stage"] = name
        if ctx.is_main:
            state.status["stages"][name] = "RUNNING"
            state.write_status(stage=name, epoch=0, epochs=scfg.training.epochs
                               if stage.mode != "eval_only" else 0)

        def heartbeat(stage: str, epoch: int, epochs: int) -> None:
            if ctx.is_main:
                state.write_status(stage=stage, epoch=epoch, epochs=epochs)

        runner = StageRunner(ctx, scfg, stage, run, datasets[name], stop, heartbeat)
        result = runner.execute()
        if result.state == "PREEMPTED":
            if ctx.is_main:
                state.status["stages"][name] = "PREEMPTED"
                state.finish("PREEMPTED", f"stop requested (SIGUSR1/SIGTERM) during stage "
                             f"{name}; resume continues after epoch {result.epochs_run}")
                write_manifest(run)
            log.warning("preempted during stage %s: checkpoint saved, exiting with %d",
                        name, EXIT_REQUEUE)
            return EXIT_REQUEUE
        results[name] = result
        if ctx.is_main:
            state.status["stages"][name] = "SUCCEEDED"
            state.write_status()

    if ctx.is_main:
        remaining = [s.name for s in cfg.pipeline if state.status["stages"].get(s.name)
                     != "SUCCEEDED"]
        if remaining:
            state.finish("PENDING", f"waiting for stage {remaining[0]}")
        else:
            state.finish("SUCCEEDED")
        write_manifest(run)
        _print_summary(run, results)
    return EXIT_OK


def _print_summary(run: rundir.RunDir, results: dict[str, Any]) -> None:
    lines = [f"Run directory: {run.root}"]
    evaluated = [(name, r) for name, r in results.items() if r.evaluation]
    for name, result in evaluated[-1:]:
        lines.append(f"Final evaluation (stage {name}):")
        header = rundir.EVALUATION_COLUMNS
        lines.append("  " + "  ".join(f"{h:>11}" for h in header))
        for split, metrics in result.evaluation.items():
            cells = [f"{split:>11}"] + [f"{metrics[c]:>11.4f}" for c in header[1:]]
            lines.append("  " + "  ".join(cells))
    print("\n".join(lines), flush=True)
    sys.stdout.flush()
