"""Submitting: an experiment (or a sweep of it) rendered, shipped, checked by the scheduler
and queued; a job resumed in its own run directory; a sweep's failed points run again."""

from __future__ import annotations

import itertools
import json
import posixpath
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .. import rundir
from ..backends import backend_for, get_backend
from ..bundle import Bundle, describe
from ..config import ExperimentConfig, load_config
from ..errors import BadInput, HpcrunError, OperationFailed
from ..job import JobInfo, JobRecord, State, is_terminal
from ..render import JobSpec, SubmitPlan
from ..shell import LocalRunner
from ..store import JobStore
from .jobs import JobView, views

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
    from ..config import load_remote
    from ..provision import run_probe
    from ..shell import SshRunner

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
    from ..sync import missing_remote_paths

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
        from ..store import default_path

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
        from ..provision import ensure

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


