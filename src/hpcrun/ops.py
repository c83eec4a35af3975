"""The use cases behind each command. They return values and raise ``HpcrunError``s; they
never print. The CLI renders what they return."""

from __future__ import annotations

import itertools
import json
import os
import posixpath
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from . import rundir
from .backends import backend_for, get_backend
from .bundle import Bundle, describe
from .config import ExperimentConfig, load_config
from .errors import BadInput, HpcrunError, OperationFailed
from .job import JobInfo, JobRecord, JobStatus, State, combine, is_terminal
from .render import JobSpec, SubmitPlan
from .shell import LocalRunner
from .store import JobStore

if TYPE_CHECKING:  # the monitor is imported by the commands that watch or check a run
    from .monitor import Event, Monitor

# --------------------------------------------------------------------------- config


def config_show(name: str, overrides: Sequence[str] = (), project_dir: Path | None = None,
                script_args: Sequence[str] = ()) -> str:
    return load_config(name, overrides, project_dir=project_dir,
                       script_args=script_args).to_yaml()


# --------------------------------------------------------------------------- submit


@dataclass
class SubmitResult:
    jobs: list[JobRecord]
    plans: list[SubmitPlan]
    dry_run: bool
    bundle: Bundle
    group: JobRecord | None = None
    #: what making the remote run this hpcrun did (provision.SetupResult), for remote jobs
    setup: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "setup": self.setup.to_dict() if self.setup else None,
            "jobs": [j.to_dict() for j in self.jobs],
            "group": self.group.to_dict() if self.group else None,
            "plans": [{"job_id": p.job_id, "stage": p.stage, "kind": p.kind,
                       "command": p.command(), "script_path": p.script_path,
                       "script": p.script} for p in self.plans],
            "bundle": {"hash": self.bundle.hash, "files": len(self.bundle.files),
                       "bytes": self.bundle.size, "held_back": self.bundle.held_back,
                       "path": str(self.bundle.path) if self.bundle.path else None,
                       "git": self.bundle.git.as_dict()},
        }


#: sweep points one submit may create (each is validated, given a run directory and a record)
MAX_SWEEP_POINTS = 10_000


def parse_sweep(expression: str) -> tuple[str, list[str]]:
    """``key=v1,v2,...`` -> (key, [v1, v2, ...])."""
    key, sep, values = expression.partition("=")
    items = [v.strip() for v in values.split(",")] if sep else []
    if not key.strip() or not items or any(v == "" for v in items):
        raise BadInput(f"--sweep {expression!r}: expected KEY=V1,V2,... e.g. "
                       "training.lr=0.001,0.01")
    return key.strip(), items


def sweep_points(cfg: ExperimentConfig, sweeps: Sequence[str]) -> list[dict[str, str]]:
    """The cartesian grid of the config's ``sweep:`` section and ``--sweep`` options."""
    grid: dict[str, list[str]] = {
        key: [yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")
              for v in values] for key, values in cfg.sweep.items()}
    for expression in sweeps:
        key, values = parse_sweep(expression)
        grid[key] = values
    if not grid:
        return [{}]
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > MAX_SWEEP_POINTS:
        shape = " x ".join(str(len(v)) for v in grid.values())
        raise BadInput(f"the sweep has {size:,} points ({shape}); at most "
                       f"{MAX_SWEEP_POINTS:,} are submitted at once",
                       hint="split it into several submits, or sweep fewer values")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _new_id() -> str:
    """48 random bits: a 100,000-point sweep collides with odds of about 1 in 60,000 (and a
    collision is drawn again, see ``_new_ids``)."""
    return secrets.token_hex(6)


def _new_ids(count: int, store: JobStore | None) -> list[str]:
    """``count`` ids, distinct from each other and from every job in the store."""
    ids: list[str] = []
    while len(ids) < count:
        fresh = [i for i in dict.fromkeys(_new_id() for _ in range(count - len(ids)))
                 if i not in ids]
        taken = store.taken(fresh) if store is not None else set()
        ids += [i for i in fresh if i not in taken]
    return ids


#: the scheduler clients backend ``auto`` looks for, in order of preference
SCHEDULERS = (("sbatch", "slurm"), ("qsub", "pbs"))


def _usable(runner: LocalRunner, tool: str) -> bool:
    """``tool`` is on PATH and answers ``--version`` (sbatch without a SLURM configuration
    is installed but cannot submit anything)."""
    if runner.which(tool) is None:
        return False
    result = runner.run([tool, "--version"], check=False, timeout=20)
    return result.returncode == 0 and bool(re.search(r"\d+\.\d+", result.stdout + result.stderr))


def _resolve_backend(name: str | None, cfg: ExperimentConfig, runner: LocalRunner,
                     remote: str | None = None, project_dir: Path | None = None) -> str:
    """``auto``: with a remote, the scheduler whose client works there (else pod); here,
    slurm if sbatch works, pbs if qsub does, else local."""
    choice = name or cfg.backend
    if choice != "auto":
        return choice
    if remote:
        return _remote_scheduler(remote, project_dir)
    return next((backend for tool, backend in SCHEDULERS if _usable(runner, tool)), "local")


def _remote_scheduler(name: str, project_dir: Path | None) -> str:
    from .config import load_remote
    from .provision import run_probe
    from .shell import SshRunner

    ssh = SshRunner(load_remote(name, project_dir))
    try:
        found, error = run_probe(ssh, "python3", {"tools": [t for t, _ in SCHEDULERS]})
        if found is None:  # no python3 on PATH there: ask the shell
            return next((backend for tool, backend in SCHEDULERS
                         if ssh.run(["sh", "-c", f"{tool} --version"], check=False)
                         .returncode == 0), "pod")
        tools = found.get("tools") or {}
        return next((backend for tool, backend in SCHEDULERS
                     if (tools.get(tool) or {}).get("usable")), "pod")
    finally:
        ssh.close()


def _data_paths(configs: Sequence[ExperimentConfig], project_dir: Path) -> list[str]:
    """Every data path the jobs read, each relative to the project (normalised) or
    absolute; one that climbs out of the project is refused."""
    paths: list[str] = []
    for cfg in configs:
        for path in cfg.data_paths():
            if posixpath.isabs(path) or path.startswith("~"):
                paths.append(path)
                continue
            clean = posixpath.normpath(path)
            if clean == ".." or clean.startswith("../") or clean == ".":
                raise BadInput(f"data path {path!r} is not inside the project {project_dir}",
                               hint="give an absolute path (read as is on every machine), "
                               "or put the data (or a link to it) inside the project")
            paths.append(clean)
    return list(dict.fromkeys(paths))


def _check_data(paths: Sequence[str], project_dir: Path, remote: Any, remote_name: str | None,
                ssh: Any, config: str) -> None:
    """The data is where the job will read it: here, or (one round trip) on the remote."""
    if remote is None:
        for path in paths:
            where = Path(path).expanduser()
            where = where if where.is_absolute() else project_dir / path
            if not where.exists():
                raise BadInput(f"data path {path!r} does not exist (looked for {where})",
                               hint="fix data.path or sync.data in the config")
        return
    from .sync import missing_remote_paths

    placed = {(p if posixpath.isabs(p) else posixpath.join(remote.data_dir, p)): p
              for p in paths if not p.startswith("~")}
    missing = missing_remote_paths(ssh, list(placed))
    if missing:
        path = placed.get(missing[0], missing[0])
        synced = not posixpath.isabs(path)
        raise BadInput(f"data path {path!r} is not on remote {remote_name} (looked for "
                       f"{missing[0]})",
                       hint=f"hpcrun sync --remote {remote_name} --config {config} ships it"
                       if synced else "put it there, or fix the config")


def _in_bundle(bundle: Bundle, path: str) -> bool:
    """``path`` is one of the bundle's files or a folder holding some of them."""
    return path in bundle.digests or any(f.startswith(path + "/") for f in bundle.files)


def _check_program(cfg: ExperimentConfig, bundle: Bundle) -> None:
    """Each stage's script exists in the project and travels in the bundle."""
    for stage in cfg.pipeline:
        run = cfg.stage_run(stage.name)
        if run is None or run.script is None:
            continue
        path = (bundle.project_dir / run.script).resolve()
        try:
            relative = path.relative_to(bundle.project_dir.resolve()).as_posix()
        except ValueError:
            raise BadInput(f"stage {stage.name}: script {run.script!r} lies outside the project "
                           f"{bundle.project_dir}") from None
        if not path.is_file():
            raise BadInput(f"stage {stage.name}: script {run.script!r} not found (looked for "
                           f"{path})")
        if relative not in bundle.files:
            raise BadInput(f"stage {stage.name}: script {run.script!r} is not in the bundle "
                           "(git-ignored, excluded by bundle: or held back as a secret)",
                           hint="add it to git, or to bundle.include")


def submit(name: str, *, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
           parallel: int | None = None, backend: str | None = None, dry_run: bool = False,
           allow: Sequence[str] = (), remote: str | None = None, project_dir: Path,
           script_args: Sequence[str] = (), notice: Any = None,
           store: JobStore | None = None, runner: LocalRunner | None = None) -> SubmitResult:
    """Submit an experiment config, or a script with ``script_args`` (``submit train.py --
    ARGS``): one job, or one per sweep point."""
    runner = runner or LocalRunner()
    project_dir = project_dir.resolve()
    if parallel is not None and parallel < 1:
        raise BadInput(f"--parallel must be at least 1 (got {parallel})")
    # the first value of each --sweep: a param that only the sweep gives is known
    first = [f"{key}={values[0]}" for key, values in map(parse_sweep, sweeps)]
    base = load_config(name, [*overrides, *first], project_dir=project_dir,
                       script_args=script_args)
    points = sweep_points(base, sweeps)
    configs = []
    for point in points:  # every point is validated before anything is written
        sets = [*overrides, *(f"{k}={v}" for k, v in point.items())]
        configs.append(load_config(name, sets, project_dir=project_dir, script_args=script_args)
                       if point else base)
    remote_name = remote or base.remote
    backend_name = _resolve_backend(backend, base, runner, remote_name, project_dir)
    impl = get_backend(backend_name, remote=remote_name, project_dir=project_dir)
    ssh = impl.ssh  # a remote's connection (pod, cluster login node)
    remote_cfg = ssh.remote if ssh is not None else None

    bundle = describe(project_dir, base.bundle, allow, runner)
    for cfg in configs:
        _check_program(cfg, bundle)
    data_paths = _data_paths(configs, project_dir)
    data_dir = remote_cfg.data_dir if remote_cfg is not None else str(project_dir)
    bundle.link_data({path: posixpath.join(data_dir, path) for path in data_paths
                      if not posixpath.isabs(path) and not path.startswith("~")
                      and not _in_bundle(bundle, path)})
    bundle.path = Path(impl.bundle_dir(bundle))
    run_id = rundir.new_run_id(time.time(), secrets.token_hex(2))
    runs_root = (project_dir / base.runs_dir / base.experiment).resolve()
    env_common = {
        "HPCRUN_BACKEND": backend_name,
        "HPCRUN_GIT_COMMIT": bundle.git.commit or "",
        "HPCRUN_GIT_DIRTY": {True: "1", False: "0", None: ""}[bundle.git.dirty],
        "HPCRUN_BUNDLE_HASH": bundle.hash,
        "HPCRUN_EXPERIMENT": base.experiment,
        "HPCRUN_SYSTEM_INTERVAL": f"{base.monitor.system_interval_s:g}",
        "HPCRUN_DATA_DIR": data_dir,
    }
    jobs: list[JobRecord] = []
    specs: list[JobSpec] = []
    configs_text: list[str] = []
    if store is None:  # ids are drawn against it (a dry run creates no store)
        from .store import default_path

        if not dry_run or default_path().exists():
            store = JobStore()
    ids = _new_ids(len(points) + (len(points) > 1), store)
    group_id = ids.pop() if len(points) > 1 else None
    for index, (point, cfg) in enumerate(zip(points, configs, strict=True)):
        job_id = ids[index]
        run_dir = runs_root / (run_id if len(points) == 1 else f"{run_id}-p{index:03d}")
        env = {**env_common, "HPCRUN_JOB_ID": job_id}
        if point:
            env["HPCRUN_SWEEP_OVERRIDES"] = json.dumps(point, sort_keys=True)
        spec = JobSpec(
            id=job_id, experiment=cfg.experiment, run_dir=str(run_dir),
            config_path=str(run_dir / rundir.CONFIG), bundle_dir=str(bundle.path),
            nproc=str(cfg.distributed.nproc_per_node), cpus=cfg.resources.cpus_per_task,
            python=sys.executable, env=env, stages=tuple(s.name for s in cfg.pipeline),
            setup=tuple(cfg.resources.setup), resources=cfg.resources,
            rdzv_timeout=cfg.distributed.rdzv_timeout,
            runs=tuple((s.name, cfg.stage_run(s.name)) for s in cfg.pipeline) if cfg.run else (),
            params=dict(cfg.params),
        )
        specs.append(spec)
        configs_text.append(cfg.to_yaml())
        jobs.append(JobRecord(
            id=job_id, backend=backend_name, host=socket.gethostname(),
            experiment=cfg.experiment, run_dir=str(run_dir), project_dir=str(project_dir),
            group=group_id,
            info=JobInfo(config=name, overrides=list(overrides), sweep_point=point,
                         program=cfg.run.program if cfg.run else None,
                         stages=[s.name for s in cfg.pipeline], bundle_hash=bundle.hash)))

    group = None
    if group_id is not None:
        sweep_dir = runs_root / f"{run_id}-sweep"
        group = JobRecord(
            id=group_id, backend=backend_name, host=socket.gethostname(),
            experiment=base.experiment, run_dir=str(sweep_dir), project_dir=str(project_dir),
            info=JobInfo(kind="sweep", points=[j.id for j in jobs], parallel=parallel,
                         config=name, grid=points))
    plans = impl.render(specs, group=group, parallel=parallel, project_dir=project_dir)
    for record in ([group] if group else []) + jobs:
        record.info.remote, record.info.remote_run_dir = impl.remote_place(record)
        if group is not None and record is not group:
            record.info.sweep_logs = str(PurePosixPath(impl.place(group.run_dir)) / "logs")
    for job in jobs:
        mine = [p for p in plans if p.job_id in (job.id, group_id)]
        job.info.scripts = [p.script_path for p in mine]
        job.info.commands = [p.command() for p in mine]
        if group is None:  # what --resume runs again
            job.info.plans = _plan_records(mine)
    if group is not None:  # what --resubmit-failed runs again
        group.info.plans = _plan_records(plans)

    result = SubmitResult(jobs, plans, dry_run, bundle, group)
    if dry_run:
        return result
    if remote_cfg is not None:  # the remote runs this hpcrun (installed once per build)
        from .provision import ensure

        result.setup = ensure(remote_cfg, ssh, remote_name or "", runner=runner,
                              progress=notice)
    _check_data(data_paths, project_dir, remote_cfg, remote_name, ssh, name)
    impl.preflight(plans)  # the scheduler's own check; raises BadInput, queues nothing

    impl.ship(bundle)
    created: list[Path] = []
    try:
        for job, text in zip(jobs, configs_text, strict=True):
            root = Path(job.run_dir)
            root.mkdir(parents=True, exist_ok=False)
            created.append(root)
            (root / rundir.LOGS).mkdir()
            rundir.write_atomic(root / rundir.CONFIG, text.encode())
        if group is not None:
            Path(group.run_dir).mkdir(parents=True)
            created.append(Path(group.run_dir))
    except OSError as exc:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise OperationFailed(f"cannot create the run directory: {exc}") from None

    store = store or JobStore()
    records = ([group] if group else []) + jobs
    store.add(records)
    try:
        impl.prepare_run_dirs({job.run_dir: text
                               for job, text in zip(jobs, configs_text, strict=True)})
        natives = impl.submit(plans)
    except HpcrunError:
        for record in records:
            store.update(record.id, state=State.FAILED)
        raise
    except Exception as exc:
        for record in records:
            store.update(record.id, state=State.FAILED)
        raise OperationFailed(f"could not start the job: {exc}") from None
    for record in records:
        submission = natives.get(record.id)
        if submission is not None:
            submission.apply(record)
            store.update(record.id, native_id=record.native_id, info=record.info)
    return result


def _plan_records(plans: Sequence[SubmitPlan]) -> list[dict[str, Any]]:
    """What the job store keeps of a job's plans, to run them again (the scripts stay in the
    run directory)."""
    return [{"argv": list(p.argv), "stage": p.stage, "kind": p.kind,
             "script_path": p.script_path, "files": p.files, "members": list(p.members),
             "offset": p.offset}
            for p in plans]


def _stored_plans(record: JobRecord, read: Any = None) -> list[SubmitPlan]:
    """The plans of ``_plan_records``, each with its script as written at submit time."""
    read = read or (lambda path: Path(path).read_text())
    plans = []
    for p in record.info.plans:
        script = read(p["script_path"])
        if script is None:
            raise OperationFailed(f"the job script {p['script_path']} is gone",
                                  hint="submit the experiment again")
        plans.append(SubmitPlan(job_id=record.id, script=script, script_path=p["script_path"],
                                argv=tuple(p["argv"]), files=p["files"], stage=p["stage"],
                                kind=p["kind"], members=tuple(p["members"]),
                                offset=int(p.get("offset") or 0)))
    return plans


def resume(ref: str, project_dir: Path, store: JobStore | None = None) -> JobView:
    """Start a failed, cancelled, timed-out or preempted job again in its own run directory,
    with the scripts and bundle it was submitted with: the trainer skips the stages that
    succeeded and continues the others from their ``last.pt``, so no epoch runs twice."""
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    if record.sweep or record.group:
        raise BadInput(f"job {record.id} is part of a sweep; --resume takes a single job",
                       hint="hpcrun submit --resubmit-failed SWEEP reruns a sweep's failed "
                       "points")
    view = views([record], store)[0]
    state = view.status.state
    if state is State.SUCCEEDED:
        raise BadInput(f"job {record.id} has already succeeded: nothing to resume")
    if not is_terminal(state):
        raise BadInput(f"job {record.id} is {state}; only a job that has ended can be resumed",
                       hint=f"wait for it, or stop it first: hpcrun cancel {record.id}")
    if not record.info.plans:
        raise BadInput(f"job {record.id} was submitted by an hpcrun that did not record its "
                       "plans; it cannot be resumed", hint="submit the experiment again")
    backend = backend_for(record)
    plans = _stored_plans(record, backend.read_text)
    done = backend.run_status(record).succeeded()
    plans = [p for p in plans if p.stage is None or p.stage not in done]
    kept = {k: v for k, v in record.info.native.items() if k in done}
    backend.resume(record, plans)[record.id].apply(record, kept)
    record.info.resumed += 1
    store.update(record.id, native_id=record.native_id, state=State.PENDING, info=record.info)
    record.state = State.PENDING
    return views([record], store)[0]


def resubmit_failed(ref: str, project_dir: Path, store: JobStore | None = None) -> list[JobView]:
    """Run a sweep's failed (or cancelled) points again, and only those."""
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    if not record.sweep:
        raise BadInput(f"job {record.id} is not a sweep; --resubmit-failed takes a sweep (array) "
                       "job", hint="for a single job, submit it again")
    view = views([record], store)[0]
    if not all(is_terminal(c.status.state) for c in view.children):
        raise BadInput(f"sweep {record.id} is still running; resubmit once it has finished")
    failed = [(index, child.record) for index, child in enumerate(view.children)
              if child.status.state in (State.FAILED, State.CANCELLED, State.PREEMPTED)]
    if not failed:
        raise BadInput(f"sweep {record.id} has no failed points to resubmit")
    backend = backend_for(record)
    plans = _stored_plans(record, backend.read_text)  # where the scripts are (a pod, a cluster)
    (Path(record.run_dir) / rundir.JOB_CANCELLED).unlink(missing_ok=True)
    natives = backend.resubmit(record, plans, [i for i, _ in failed])
    for _, point in failed:
        submission = natives.get(point.id)
        if submission is not None:
            submission.apply(point)
            store.update(point.id, native_id=point.native_id, state=State.PENDING,
                         info=point.info)
    return views([record], store)


# --------------------------------------------------------------------------- sync


def sync(remote: str, *, name: str | None = None, dry_run: bool = False, delete: bool = False,
         allow: Sequence[str] = (), project_dir: Path,
         progress: Any = None, notice: Any = None) -> Any:
    """Set the remote up to run this hpcrun (when it does not yet), ship this project's code
    bundle, then the data the experiment ``name`` declares (rsync over one ssh connection)."""
    from .config import BundleConfig, load_remote
    from .provision import ensure
    from .shell import SshRunner
    from .sync import push, push_data

    project_dir = project_dir.resolve()
    cfg = load_config(name, project_dir=project_dir) if name else None
    data = _data_paths([cfg], project_dir) if cfg else []
    shipped = [p for p in data if not posixpath.isabs(p) and not p.startswith("~")]
    for path in shipped:
        if not (project_dir / path).exists():
            raise BadInput(f"data path {path!r} does not exist (looked for "
                           f"{project_dir / path})", hint="fix sync.data or data.path")
    remote_cfg = load_remote(remote, project_dir)
    ssh = SshRunner(remote_cfg)
    try:
        setup = None if dry_run else ensure(remote_cfg, ssh, remote, progress=notice)
        bundle = describe(project_dir, cfg.bundle if cfg else BundleConfig(), allow)
        result = push(bundle, ssh, remote_cfg.workdir, dry_run=dry_run, delete=delete,
                      progress=progress)
        result.setup = setup
        result.data = push_data(shipped, project_dir, ssh, remote_cfg.data_dir,
                                dry_run=dry_run, delete=delete, progress=progress)
        return result
    finally:
        ssh.close()


def setup(remote: str, *, offline: bool = False, force: bool = False, project_dir: Path,
          notice: Any = None) -> Any:
    """Install this hpcrun on a remote (its own venv there), or find it already there."""
    from .config import load_remote
    from .provision import ensure
    from .shell import SshRunner

    remote_cfg = load_remote(remote, project_dir)
    ssh = SshRunner(remote_cfg)
    try:
        return ensure(remote_cfg, ssh, remote, offline=offline, force=force, progress=notice)
    finally:
        ssh.close()


# --------------------------------------------------------------------------- status


@dataclass
class Triage:
    """Why a job failed, from what it left behind: the cause (failure.json and the known
    signature its log shows), the signal that killed a process, and the log's last lines."""

    cause: str
    signal: str | None = None
    failure: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "signal": self.signal, "failure": self.failure,
                "log_tail": self.log_tail}


@dataclass
class JobView:
    record: JobRecord
    status: JobStatus
    children: list[JobView] = field(default_factory=list)
    #: set by ``status`` for a failed job
    triage: Triage | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.record.to_dict()
        out.update(state=self.status.state, reason=self.status.reason,
                   exit_code=self.status.exit_code, **self.status.detail)
        if self.children:
            out["points"] = [c.to_dict() for c in self.children]
        if self.triage is not None:
            out["triage"] = self.triage.to_dict()
        return out


#: how a dead process shows in a log: torchrun's "Signal 9 (SIGKILL) received by PID" and
#: "exitcode  : -9"; failing those, a shell's exit code over 128 is 128 + the signal
_SIGNAL_RES = (re.compile(r"Signal (\d+) \((SIG[A-Z0-9]+)\)"),
               re.compile(r"exitcode\s*:\s*-(\d+)"))
TRIAGE_LOG_LINES = 12


def _signal_name(number: int) -> str | None:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def _signal_of(log: str, exit_code: int | None) -> str | None:
    found: tuple[int, str | None] | None = None
    for pattern in _SIGNAL_RES:
        for match in pattern.finditer(log):
            if found is None or match.start() > found[0]:
                number = int(match.group(1))
                name = match.group(2) if match.lastindex == 2 else _signal_name(number)
                found = (match.start(), name or f"signal {number}")
    if found is not None:
        return found[1]
    if exit_code is not None and 128 < exit_code < 128 + 65:
        return _signal_name(exit_code - 128)
    return None


def _trainer_lines(lines: list[str]) -> list[str]:
    """A failed torchrun ends its output with the launcher's own traceback and a summary box
    (whose rank, exit code and signal the triage reads); what the trainer said is before."""
    ends = [i for i, line in enumerate(lines) if "ChildFailedError" in line]
    if not ends:
        return lines
    starts = [i for i in range(ends[-1]) if lines[i].startswith("Traceback (most recent")]
    return lines[:starts[-1] if starts else ends[-1]]


def triage(view: JobView, backend: Any | None = None) -> Triage | None:
    """The failure triage of a failed job (None for any other state, and for a sweep, whose
    points each have their own)."""
    from .diagnose import failed_flag, log_tail

    record = view.record
    if view.status.state is not State.FAILED or record.sweep:
        return None
    backend = backend or backend_for(record)
    lines = (backend.read_log(record) or "").splitlines()
    tail = log_tail("\n".join(lines))
    cause = failed_flag(Path(record.run_dir), tail).message
    failure = backend.run_failure(record)
    kept = failure.brief() if failure is not None else None
    return Triage(cause=cause,
                  signal=_signal_of(tail, view.status.exit_code), failure=kept or None,
                  log_tail=[line for line in _trainer_lines(lines)
                            if line.strip()][-TRIAGE_LOG_LINES:])


def _group_status(children: list[JobView], cancelled: bool = False) -> JobStatus:
    """A sweep's state from its points': running while any point runs, pending while any
    waits; then CANCELLED when it was cancelled, else how its points ended. Points no one
    knows any more (UNKNOWN) never hold it PENDING."""
    states = [c.status.state for c in children]
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
    return JobStatus(combine(states, sequential=False, cancelled=cancelled), reason=summary)


def _cancelled(record: JobRecord) -> bool:
    """Whether the sweep was cancelled (``cancel`` leaves a marker in its folder)."""
    return (Path(record.run_dir) / rundir.JOB_CANCELLED).exists()


def _last_seen(record: JobRecord, status: JobStatus) -> JobStatus:
    """A job the scheduler has forgotten (or cannot be asked about) after it was seen to end
    keeps the end it was seen with: an end does not change."""
    if status.state is State.UNKNOWN and is_terminal(record.state):
        note = f"{record.state} as last seen; now: {status.reason or 'unknown'}"
        return JobStatus(record.state, detail={**status.detail, "note": note})
    return status


def _backend_key(record: JobRecord) -> str:
    return f"{record.backend}:{record.info.remote or ''}"


def views(records: Sequence[JobRecord], store: JobStore,
          backends: dict[str, Any] | None = None) -> list[JobView]:
    """Fresh states for ``records`` (one backend query per backend); the store is updated.
    ``backends`` keeps the backend objects (and their connections) across calls."""
    backends = {} if backends is None else backends
    by_backend: dict[str, list[JobRecord]] = {}
    for record in records:
        if not record.sweep:
            by_backend.setdefault(_backend_key(record), []).append(record)
    states: dict[str, JobStatus] = {}
    for key, group in by_backend.items():
        try:
            if key not in backends:
                backends[key] = backend_for(group[0])
            states.update(backends[key].status(group))
        except HpcrunError as exc:  # one unreachable cluster or pod must not hide the rest
            states.update({r.id: JobStatus(State.UNKNOWN, reason=exc.message) for r in group})
    out = []
    for record in records:
        if record.sweep:
            children = views([c for c in (store.get(i) for i in record.info.points)
                              if c is not None], store, backends)
            status = _group_status(children, _cancelled(record))
            view = JobView(record, status, children)
        else:
            status = _last_seen(record, states[record.id])
            view = JobView(record, status)
        if status.state != record.state and status.state is not State.UNKNOWN:
            store.update(record.id, state=status.state)
            record.state = status.state
        out.append(view)
    return out


def status(refs: Sequence[str], project_dir: Path, store: JobStore | None = None) -> list[JobView]:
    """Fresh states of jobs, each failed one with its triage."""
    store = store or JobStore()
    records = [store.resolve(ref, str(project_dir.resolve())) for ref in (refs or ["latest"])]
    out = views(records, store)
    for view in out:
        view.triage = triage(view)
    return out


def list_jobs(project_dir: Path, all_projects: bool = False, limit: int = 50,
              store: JobStore | None = None) -> list[JobView]:
    """The newest ``limit`` jobs and sweeps (a sweep's points are shown inside it)."""
    store = store or JobStore()
    records = store.list(None if all_projects else str(project_dir.resolve()), limit=limit,
                         top_level=True)
    return views(records, store)


# --------------------------------------------------------------------------- logs, cancel


def _single(record: JobRecord) -> None:
    if record.sweep:
        points = ", ".join(record.info.points)
        raise BadInput(f"job {record.id} is a sweep; name one of its points: {points}")


def log_file(ref: str | None, rank: int | None, project_dir: Path,
             store: JobStore | None = None) -> tuple[JobRecord, str | None]:
    """A job's output (or one rank's log) as text; None when nothing was written yet."""
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    text = backend_for(record).read_log(record, rank)
    if rank is not None and text is None:
        raise BadInput(f"no log for rank {rank} of job {record.id} (not started yet, or no "
                       "such rank)")
    return record, text


def follow_logs(record: JobRecord, rank: int | None) -> Iterator[str]:
    return backend_for(record).follow(record, rank)


def cancel(ref: str | None, project_dir: Path, store: JobStore | None = None) -> list[JobView]:
    """Cancel a job, or a sweep with every point in one request to its backend (a scheduler's
    array jobs at once). A job that ends unknown to the scheduler (a waiting array task is
    forgotten once cancelled) is recorded CANCELLED."""
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    backend = backend_for(record)
    targets = [record]
    if record.sweep:
        marker = Path(record.run_dir) / rundir.JOB_CANCELLED
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.time()}\n")
        targets += [r for r in (store.get(i) for i in record.info.points) if r]
    ended = backend.cancel(targets)
    for target in targets:
        state = ended.get(target.id)
        if state is not None and state.state is State.UNKNOWN and not is_terminal(target.state):
            store.update(target.id, state=State.CANCELLED)
    return views([record], store, {_backend_key(record): backend})


# --------------------------------------------------------------------------- monitor


def open_monitor(ref: str | None, project_dir: Path, store: JobStore | None = None) -> Monitor:
    """A ``Monitor`` of one job: one backend (one ssh connection for a remote) for all its
    refreshes, and the job store kept up to date with the states it sees."""
    from .monitor import Monitor

    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    backend = backend_for(record)
    cache = {_backend_key(record): backend}
    return Monitor(record, lambda: views([record], store, cache)[0], backend)


def notify(command: str, event: Event, runner: LocalRunner | None = None) -> str | None:
    """Run a ``--notify`` command through ``sh -c`` with the event in its environment (the
    event's values never become part of the command). Returns a warning when it failed."""
    runner = runner or LocalRunner()
    try:
        result = runner.run(["sh", "-c", command], env={**os.environ, **event.environment()},
                            check=False, timeout=60)
    except HpcrunError as exc:
        return f"--notify command failed: {exc.message}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [""])[-1]
        return f"--notify command exited {result.returncode}" + (f": {last}" if last else "")
    return None


# --------------------------------------------------------------------------- fetch, report


def _report_files(files: Any) -> dict[str, Any] | None:
    if files is None:
        return None
    return {"html": str(files.html), "pngs": [str(p) for p in files.pngs]}


@dataclass
class FetchResult:
    view: JobView
    run_dir: Path
    verified: bool
    summary: Any
    flags: list[Any] = field(default_factory=list)
    #: the report written into the run directory (``report.ReportFiles``), or why not
    report: Any = None
    report_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.view.to_dict(), "run_dir": str(self.run_dir),
                "verified": self.verified, "summary": self.summary.to_dict(),
                "flags": [f.to_dict() for f in self.flags],
                "report": _report_files(self.report), "report_error": self.report_error}


@dataclass
class ReportResult:
    run_dir: Path
    #: ``report.ReportFiles``: the PNGs and the HTML page, with the summary and flags shown
    files: Any

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "summary": self.files.summary.to_dict(),
                "flags": [f.to_dict() for f in self.files.flags],
                **(_report_files(self.files) or {})}


def flags_of(view: JobView) -> list[Any]:
    """The run's red flags, with the job's state and, for a failure, the end of its log."""
    from .monitor import run_flags

    sweep = view.record.sweep  # a sweep has no log of its own
    return run_flags(view.record, view.status.state, None if sweep else backend_for(view.record))


def fetch(ref: str | None, project_dir: Path, partial: bool = False,
          store: JobStore | None = None) -> FetchResult:
    """Bring the run back, verify a finished one against its manifest, and write its report.
    A partial fetch (or one of a job still running) is reported too: its curves so far are
    what a researcher fetches it for."""
    from .report import summarize, write_report

    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    view = views([record], store)[0]
    run = Path(record.run_dir)
    backend = backend_for(record)
    finished = is_terminal(view.status.state)
    backend.pull(record, partial=partial or not finished)  # a remote run: rsync it back
    verified = False
    if finished and not partial:
        problems = rundir.verify_manifest(run)
        if problems:
            raise OperationFailed(f"{run}: {problems[0]}"
                                  + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                     else ""), hint="the run directory was changed after the "
                                  "job wrote its manifest")
        verified = True
    flags = flags_of(view)
    files, problem = None, None
    if run.is_dir():  # a job that never started has nothing to report
        try:
            files = write_report(run, flags=flags)
        except OSError as exc:  # the summary is still worth showing: the CLI exits 1 after it
            problem = f"cannot write the report into {run / 'report'}: {exc.strerror or exc}"
    summary = files.summary if files is not None else summarize(run)
    return FetchResult(view, run, verified, summary, flags, files, problem)


def _is_path(ref: str | None) -> bool:
    """``ref`` names a folder: a path, or a run directory in the current folder (``run``,
    which could also pass for a job id, is the run directory that is there)."""
    if not ref or not Path(ref).is_dir():
        return False
    return "/" in ref or ref.startswith(".") or (Path(ref) / rundir.STATUS).is_file()


def _run_of(ref: str | None, project_dir: Path,
            store: JobStore | None = None) -> tuple[Path, JobRecord | None]:
    """A run directory given as a path, or the run of a job reference (and its job)."""
    if _is_path(ref):
        return Path(ref), None
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    return Path(record.run_dir), record


def report(ref: str | None, project_dir: Path, out_dir: Path | None = None,
           store: JobStore | None = None) -> ReportResult:
    """The report of a run, with its summary and red flags: those of the job (its state and
    log) when a job is named, else what the run directory alone tells."""
    from .report import write_report

    if store is None and not _is_path(ref):  # a run directory alone needs no job store
        store = JobStore()
    run, record = _run_of(ref, project_dir, store)
    if not (run / rundir.STATUS).exists():
        raise BadInput(f"{run} is not a run directory (no {rundir.STATUS})")
    flags = None
    if record is not None and store is not None:
        flags = flags_of(views([record], store)[0])
    try:
        return ReportResult(run, write_report(run, out_dir, flags=flags))
    except OSError as exc:
        raise OperationFailed(f"cannot write the report of {run}: "
                              f"{exc.filename or ''} {exc.strerror or exc}".strip()) from None


def _not_a_run(path: Path) -> str | None:
    """Why a path given to compare is not a run directory (None when it is one)."""
    if not path.is_dir():
        return "not a directory"
    if not (path / rundir.STATUS).exists():
        return f"no {rundir.STATUS}"
    return None


def compare(refs: Sequence[str], project_dir: Path, metric: str = "auroc",
            mode: str | None = None, out: Path | None = None,
            store: JobStore | None = None) -> Any:
    """Rank runs (run directories, jobs, or a sweep's points) by a metric. Paths that exist
    but are not run directories are skipped with a note: a shell glob over an experiment's
    folder also matches its sweep folders and the comparison written there last time."""
    from .report import compare as compare_runs
    if mode not in (None, "max", "min"):
        raise BadInput(f"--mode {mode!r}: use max (higher is better) or min")
    store = store or JobStore()
    run_dirs: list[Path] = []
    skipped: list[str] = []
    for ref in refs or ["latest"]:
        path = Path(ref)
        if ref and path.exists():  # what a shell glob gave, rather than a job reference
            why = _not_a_run(path)
            if why is None:
                run_dirs.append(path)
            else:
                skipped.append(f"{ref} ({why})")
            continue
        record = store.resolve(ref, str(project_dir.resolve()))
        if record.sweep:
            points = [store.get(i) for i in record.info.points]
            run_dirs.extend(Path(p.run_dir) for p in points if p is not None)
            out = out or Path(record.run_dir) / "compare.png"
        else:
            run_dirs.append(Path(record.run_dir))
    missing = [str(d) for d in run_dirs if not (d / rundir.STATUS).exists()]
    if missing:
        raise BadInput(f"not a run directory (no {rundir.STATUS}): {missing[0]}",
                       hint="fetch remote runs first")
    if len(run_dirs) < 2:
        left_out = f"; left out {', '.join(skipped)}" if skipped else ""
        raise BadInput(f"compare needs at least two runs (or a sweep){left_out}")
    out = out or run_dirs[0].parent / "compare.png"
    result = compare_runs(run_dirs, metric, mode, out)
    result.skipped = skipped
    return result


# --------------------------------------------------------------------------- doctor


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _python_checks(found: dict) -> list[Check]:
    """torch, CUDA and NVML as ``hpcrun.probe`` found them."""
    checks = []
    if "torch" in found:
        checks.append(Check("torch", True, found["torch"]))
        names = ", ".join(found.get("gpu_names") or [])
        checks.append(Check("CUDA", bool(found.get("cuda")),
                            f"CUDA {found['cuda_version']}, {found['gpus']} GPU(s)"
                            + (f": {names}" if names else "") if found.get("cuda")
                            else "no CUDA device (training runs on CPU, gloo)"))
    else:
        checks.append(Check("torch", False, found.get("torch_error", "not importable")))
        checks.append(Check("CUDA", False, "needs torch"))
    checks.append(Check("NVML", "nvml" in found,
                        f"driver {found['nvml']}" if "nvml" in found
                        else f"unavailable ({found.get('nvml_error', 'pynvml missing')}): GPU "
                        "memory columns stay empty"))
    return checks


def doctor(runner: LocalRunner | None = None, remote: str | None = None,
           project_dir: Path | None = None) -> list[Check]:
    """What hpcrun can use here, or on ``remote`` (one round trip there)."""
    if remote is not None:
        return _remote_doctor(remote, project_dir)
    from .provision import probe_source

    runner = runner or LocalRunner()
    checks = []
    for tool, argv in (("ssh", ["ssh", "-V"]), ("rsync", ["rsync", "--version"]),
                       ("sbatch", ["sbatch", "--version"]), ("qsub", ["qsub", "--version"]),
                       ("git", ["git", "--version"])):
        path = runner.which(tool)
        if path is None:
            checks.append(Check(tool, False, "not found on PATH"))
            continue
        result = runner.run(argv, check=False, timeout=20)
        lines = (result.stdout + "\n" + result.stderr).strip().splitlines()
        version = next((line.strip() for line in lines if re.search(r"\d+\.\d+", line)
                        and "error" not in line.lower()), None)
        if version is None:  # e.g. sbatch without a SLURM configuration to read
            problem = lines[-1].strip() if lines else f"exit code {result.returncode}"
            checks.append(Check(tool, False, f"found at {path} but not usable: {problem}"))
        else:
            checks.append(Check(tool, True, f"{version} ({path})"))
    probe = runner.run([sys.executable, "-c", probe_source(), json.dumps({"torch": True})],
                       check=False, timeout=120)
    try:
        found = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        found = {"torch_error": probe.stderr.strip()[-200:] or "probe failed"}
    return checks + _python_checks(found)


def _remote_doctor(name: str, project_dir: Path | None) -> list[Check]:
    from .config import load_remote
    from .provision import judge, local_build, run_probe
    from .shell import SshRunner

    remote = load_remote(name, project_dir)
    ssh = SshRunner(remote)
    request = {"torch": True, "disk": remote.workdir,
               "tools": ["sbatch", "squeue", "qsub", "rsync", "nvidia-smi"]}
    try:
        found, error = run_probe(ssh, remote.interpreter, request)
        checks = [Check("ssh", True, f"{ssh.target}:{remote.port}")]
        if found is None:
            checks.append(Check("python", False, f"{remote.interpreter}: {error}"))
            if not remote.managed:
                return checks
            found, error = run_probe(ssh, remote.base_python, request)
            if found is None:
                checks.append(Check("base", False, f"{remote.base_python}: {error}"))
                return checks
            checks.append(Check("base", True, f"{found['python']} (Python {found['version']}"
                                f"); the venv is not there yet: hpcrun setup --remote {name}"))
        else:
            checks.append(Check("python", True, f"{found['python']} (Python "
                                f"{found['version']})"))
        want = local_build()
        problem = judge(found, want)
        checks.append(Check("hpcrun", problem is None, f"{want.version}, this build"
                            if problem is None else f"{problem}: hpcrun setup --remote {name}"))
        checks += _python_checks(found)
        for tool, seen in (found.get("tools") or {}).items():
            checks.append(Check(tool, bool(seen.get("usable")),
                                f"{seen['detail']} ({seen['path']})" if seen.get("usable")
                                else seen.get("detail") or "not usable"))
        disk = found.get("disk") or {}
        if disk:
            free = disk["free_bytes"] / 2**30
            checks.append(Check("disk", free >= 10, f"{free:,.1f} GiB free in {disk['path']} "
                                f"(filesystem of {disk['checked']})"))
        return checks
    finally:
        ssh.close()
