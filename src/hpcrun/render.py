"""Pure rendering: a job spec and a template -> the exact script and command that will run.

Nothing here touches the filesystem beyond reading templates, starts a process or asks a
scheduler anything; ``hpcrun submit --dry-run`` prints what this returns. Every value that
reaches a shell line goes through the ``q`` filter (``shlex.quote``).
"""

from __future__ import annotations

import functools
import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import formats, rundir
from .config import fill_args
from .resources import templates_dir

if TYPE_CHECKING:
    import jinja2


@dataclass(frozen=True)
class JobSpec:
    """Everything a backend needs to render one job (a pipeline run or one sweep point)."""

    id: str
    experiment: str
    run_dir: str
    config_path: str
    bundle_dir: str
    stages: tuple[str, ...] = ()
    nproc: str = "auto"
    cpus: int | None = None
    python: str = "python3"
    env: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    resources: Any = None  # config.ResourcesConfig
    rdzv_timeout: int = 900
    #: your own program per stage, in pipeline order (config.RunConfig); empty: hpcrun's
    #: trainer runs the pipeline
    runs: tuple[tuple[str, Any], ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmitPlan:
    """The exact script and argv a backend will run, and the files it will write.

    ``argv`` may hold ``{NAME}`` placeholders for ids known only once an earlier plan of the
    same submission is queued (a dependency on the previous stage)."""

    job_id: str
    script: str
    script_path: str
    argv: tuple[str, ...]
    files: dict[str, str]
    stage: str | None = None
    kind: str = "job"  # job | driver (runs other plans' scripts) | array
    members: tuple[str, ...] = ()  # an array's tasks: the job id each index runs
    #: a sweep queued as several arrays: the index of this array's first point in the sweep
    offset: int = 0

    @property
    def key(self) -> str:
        """Its name among the plans of one submission (``{KEY}`` in a later plan's argv)."""
        stage = self.stage or "all"
        return f"{stage}~{self.offset}" if self.offset else stage

    def command(self) -> str:
        return shlex.join(self.argv)




def _quote(value: Any) -> str:
    return shlex.quote(str(value))


def environment(project_dir: Path | None = None) -> jinja2.Environment:
    """Templates from the project's own ``templates/`` first, then hpcrun's. One environment
    per set of folders and process: a template is compiled once (the stages of a pipeline and
    the points of a sweep render the same one). Nothing is cached on disk: ``--dry-run``
    writes nothing, and no compiled code is loaded from a file."""
    folders = []
    if project_dir is not None and (project_dir / "templates").is_dir():
        folders.append(str(project_dir / "templates"))
    folders.append(str(templates_dir()))
    return _environment(tuple(folders))


@functools.lru_cache(maxsize=16)
def _environment(folders: tuple[str, ...]) -> jinja2.Environment:
    import jinja2  # only the commands that render import it

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(list(folders)), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=False)
    env.filters["q"] = _quote
    return env


def render_template(name: str, context: dict[str, Any], project_dir: Path | None = None) -> str:
    return environment(project_dir).get_template(name).render(**context)


def job_files(run_dir: str) -> dict[str, str]:
    """Where a job's script, pid, exit code and output live inside its run directory."""
    root = Path(run_dir)
    return {
        "script": str(root / rundir.JOB_SCRIPT),
        "pid_file": str(root / rundir.JOB_PID),
        "exit_file": str(root / rundir.JOB_EXIT),
        "output": str(root / rundir.JOB_OUTPUT),
    }


def program(spec: JobSpec, stage: str = "all") -> list[str]:
    """What the launcher (``launchers/torchrun.sh``) runs for ``stage`` of the job: hpcrun's
    trainer, or the stage's own program under ``hpcrun.rank``, which gives each rank its log,
    pid file, environment and failure record. ``--launcher=python`` first: one plain process
    per node instead of torchrun's workers."""
    if not spec.runs:
        return ["-m", "hpcrun.train", "--config", spec.config_path, "--stage", stage,
                "--run-dir", spec.run_dir]
    runs = dict(spec.runs)
    run = runs[stage]
    dirs = {name: posixpath.join(spec.run_dir, name) for name in runs}
    args = fill_args(run.args, spec.params, dirs, dirs[stage])
    head = ["--launcher=python"] if run.launcher == "python" else []
    head += ["-m", "hpcrun.rank", "--run-dir", spec.run_dir, "--stage", stage]
    if run.script is not None:
        return [*head, "--script", run.script, "--", *args]
    if run.module is not None:
        return [*head, "--module", run.module, "--", *args]
    return [*head, "--command", "--", *run.command, *args]


def steps(spec: JobSpec) -> list[tuple[str, list[str]]]:
    """(stage, launcher arguments) in the order one job script runs them: hpcrun's trainer
    runs the whole pipeline in one start; your own program once per stage."""
    if not spec.runs:
        return [("all", program(spec))]
    return [(stage, program(spec, stage)) for stage, _ in spec.runs]


def _check_env_names(env: dict[str, str]) -> None:
    bad = [name for name in env if not formats.ENV_NAME.matches(name)]
    if bad:
        raise ValueError(f"not an environment variable name: {bad[0]!r}")


def render_local(spec: JobSpec, launcher: str, project_dir: Path | None = None) -> SubmitPlan:
    files = job_files(spec.run_dir)
    bundle = Path(spec.bundle_dir)
    pythonpath = ":".join(str(p) for p in (bundle / "src", bundle))
    env = {"HPCRUN_PYTHON": spec.python, "HPCRUN_NPROC": spec.nproc,
           "HPCRUN_RUN_ROOT": spec.run_dir, **spec.env}
    if spec.cpus:
        env["HPCRUN_CPUS"] = str(spec.cpus)
    _check_env_names(env)
    script = render_template("local.sh.j2", {
        "job": spec, "files": files, "bundle_dir": spec.bundle_dir, "pythonpath": pythonpath,
        "env": dict(sorted(env.items())), "setup": list(spec.setup), "launcher": launcher,
        "steps": steps(spec),
    }, project_dir)
    return SubmitPlan(job_id=spec.id, script=script, script_path=files["script"],
                      argv=("bash", files["script"]), files=files)


def scheduler_context(specs: Sequence[JobSpec]) -> dict[str, Any]:
    """What every scheduler template shares: the run directory (per array task for a sweep),
    the bundle on PYTHONPATH and hpcrun's environment. The templates find hpcrun's launchers
    at run time through ``$HPCRUN_PYTHON``: the cluster's hpcrun, wherever it is installed."""
    first = specs[0]
    bundle = Path(first.bundle_dir)
    per_task = ("HPCRUN_JOB_ID", "HPCRUN_SWEEP_OVERRIDES")
    env = {"HPCRUN_PYTHON": first.python, "HPCRUN_NPROC": first.nproc,
           "HPCRUN_RDZV_TIMEOUT": str(first.rdzv_timeout),
           **{k: v for k, v in first.env.items() if k not in per_task}}
    if first.cpus:
        env["HPCRUN_CPUS"] = str(first.cpus)
    _check_env_names(env)
    return {
        "experiment": first.experiment, "r": first.resources,
        "run_dirs": [s.run_dir for s in specs], "job_ids": [s.id for s in specs],
        "overrides": [s.env.get("HPCRUN_SWEEP_OVERRIDES", "") for s in specs],
        #: per stage, each point's launcher arguments as one shell-quoted line
        "programs": {stage: [shlex.join(program(s, stage)) for s in specs]
                     for stage in first.stages},
        "bundle_dir": first.bundle_dir,
        "pythonpath": ":".join(str(p) for p in (bundle / "src", bundle)),
        "env": dict(sorted(env.items())),
    }
