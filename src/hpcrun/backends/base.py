"""The backend interface every kind of machine implements (``Backend``), and what the two
batch schedulers share (``SchedulerBackend``)."""

from __future__ import annotations

import posixpath
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .. import rundir
from ..bundle import Bundle
from ..errors import BadInput
from ..job import JobRecord, JobStatus, Submission, is_terminal
from ..render import JobSpec, SubmitPlan
from ..shell import LocalRunner
from .files import LocalFiles, RemoteFiles, files_for

if TYPE_CHECKING:
    from ..config import RemoteConfig, ResourcesConfig
    from ..shell import SshRunner


def fill_dependencies(argv: Sequence[str], ids: dict[str, str], prefix: str,
                      flag: str | None = None) -> list[str]:
    """``argv`` with each ``PREFIX...{stage}`` argument filled in from the native ``ids`` of
    the stages queued so far. One naming a stage not queued this time (it succeeded before a
    resume: its output is already there) is dropped, with its ``flag`` word before it."""
    out: list[str] = []
    for arg in argv:
        if not arg.startswith(prefix):
            out.append(arg)
        elif set(re.findall(r"{([^{}]+)}", arg)) <= set(ids):
            out.append(arg.format(**ids))
        elif flag is not None and out and out[-1] == flag:
            out.pop()
    return out


class Backend(ABC):
    """Everything ops asks of a kind of machine. Each backend renders its job scripts (pure),
    asks its scheduler whether it would take them, queues or starts them, reports the state
    of many jobs at once and cancels many at once; the rest (where files live, writing
    scripts, reading and following logs, bringing a remote run directory back) is shared.

    One constructor for all: ``runner`` runs the commands (tests give a fake), ``remote``
    (a pod, or a cluster's login node) puts every command and file behind ssh."""

    name: ClassVar[str]
    follow_interval: ClassVar[float] = 1.0

    def __init__(self, *, runner: LocalRunner | None = None, remote: RemoteConfig | None = None,
                 remote_name: str | None = None):
        self.remote = remote
        self.files: LocalFiles | RemoteFiles = files_for(remote, remote_name)
        self.runner: LocalRunner = self.files.ssh if isinstance(self.files, RemoteFiles) \
            else (runner or LocalRunner())

    # -- pure -----------------------------------------------------------------------------

    @abstractmethod
    def render(self, specs: Sequence[JobSpec], *, group: JobRecord | None = None,
               parallel: int | None = None, project_dir: Path | None = None) -> list[SubmitPlan]:
        """The exact scripts and commands for ``specs`` (what --dry-run prints). A ``group``
        is a sweep whose points are ``specs``; ``parallel`` caps how many run at once."""

    def bundle_dir(self, bundle: Bundle) -> str:
        """Where jobs will find the bundle."""
        return self.files.bundle_dir(bundle)

    def place(self, local_run_dir: str) -> str:
        """Where the job's run directory is, seen from where it runs."""
        return self.files.place(local_run_dir)

    def remote_place(self, record: JobRecord) -> tuple[str | None, str | None]:
        """What the job store keeps to find the job's files again: the remote's name and
        the run directory there (None, None on this machine)."""
        if isinstance(self.files, RemoteFiles):
            return self.files.remote_name, self.place(record.run_dir)
        return None, None

    @property
    def ssh(self) -> SshRunner | None:
        """The connection to the remote (None on this machine)."""
        return self.files.ssh if isinstance(self.files, RemoteFiles) else None

    # -- submission -----------------------------------------------------------------------

    @abstractmethod
    def preflight(self, plans: Sequence[SubmitPlan]) -> None:
        """Ask the scheduler whether it would accept the plans, queueing nothing; raise
        ``BadInput`` naming what it refuses."""

    def ship(self, bundle: Bundle) -> None:
        """Put the bundle where ``bundle_dir`` says (once per content)."""
        self.files.ship(bundle)

    def prepare_run_dirs(self, configs: dict[str, str]) -> None:
        """Give each remote run directory its config.yaml ({local run dir: text}); the
        local copies were written by the caller."""
        if isinstance(self.files, RemoteFiles):
            self.files.write({posixpath.join(self.place(run), rundir.CONFIG): text
                              for run, text in configs.items()})

    def write(self, plan: SubmitPlan) -> None:
        path = Path(plan.script_path)
        Path(plan.files["output"]).parent.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(path, plan.script.encode())
        path.chmod(0o755)

    @abstractmethod
    def submit(self, plans: Sequence[SubmitPlan]) -> dict[str, Submission]:
        """Write the scripts and start or queue them. Returns, per job (or sweep) id,
        its :class:`Submission` (native ids)."""

    @abstractmethod
    def resubmit(self, group: JobRecord, plans: Sequence[SubmitPlan],
                 indices: Sequence[int]) -> dict[str, Submission]:
        """Run the sweep points at ``indices`` again with the sweep's stored ``plans``."""

    def resume(self, record: JobRecord, plans: Sequence[SubmitPlan]) -> dict[str, Submission]:
        """Start ``plans`` (a job's stored plans) again in the job's run directory, after
        removing what its previous end left there (exit code, pid, cancel marker)."""
        run = self.files.run_dir(record)
        self.files.remove([posixpath.join(run, name) for name in
                           (rundir.JOB_EXIT, rundir.JOB_PID, rundir.JOB_CANCELLED)])
        return self.submit(plans)

    # -- state ----------------------------------------------------------------------------

    @abstractmethod
    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """States of many jobs in one query, keyed by job id."""

    @abstractmethod
    def cancel(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """Stop the jobs, all in one request where the machine allows (a sweep's points and
        its array jobs at once), and wait for their ends; cancelling a finished or cancelled
        job changes nothing. The states after, keyed by job id (UNKNOWN: the scheduler has
        forgotten the job, as it does with array tasks that never started)."""

    # -- the run directory and logs -------------------------------------------------------

    def read_text(self, path: str) -> str | None:
        """A file where the job runs (None when it cannot be read)."""
        return self.files.read_text(path)

    def run_status(self, record: JobRecord) -> rundir.Status:
        """The job's status.json where it runs."""
        return rundir.Status.of(self.files.read_json(
            posixpath.join(self.files.run_dir(record), rundir.STATUS)))

    def run_failure(self, record: JobRecord) -> rundir.Failure | None:
        """The job's failure.json where it runs (None when nothing failed)."""
        return rundir.Failure.of(self.files.read_json(
            posixpath.join(self.files.run_dir(record), rundir.FAILURE)))

    @abstractmethod
    def log_paths(self, record: JobRecord, rank: int | None = None) -> list[str]:
        """Candidate log files, newest last; the first that exists (from the end) is shown."""

    def logs(self, record: JobRecord, rank: int | None = None) -> Path:
        """The log file to show (the job's output, or one rank's trainer log)."""
        return Path(self.log_paths(record, rank)[-1])

    def read_log(self, record: JobRecord, rank: int | None = None) -> str | None:
        for path in reversed(self.log_paths(record, rank)):
            text = self.files.read_text(path)
            if text is not None:
                return text
        return None

    def follow(self, record: JobRecord, rank: int | None = None) -> Iterator[str]:
        """Lines of the log as they are written, until the job ends."""
        shown = 0
        pending = ""
        while True:
            finished = is_terminal(self.status([record])[record.id].state)
            text = self.read_log(record, rank) or ""
            pending += text[shown:]
            shown = len(text)
            *lines, pending = pending.split("\n")
            yield from lines
            if finished:
                if pending:
                    yield pending
                return
            time.sleep(self.follow_interval)

    def pull(self, record: JobRecord, partial: bool = False) -> None:
        """Bring a remote run directory back (nothing to do when it is on this machine)."""
        if isinstance(self.files, RemoteFiles):
            self.files.pull(record, partial)

    def catch_up(self, record: JobRecord, known: dict[str, list]) -> None:
        """Bring the local copy of a remote job's watched files up to date (only what was
        added since ``known``); nothing to do when the run directory is on this machine."""
        self.files.catch_up(record, known)


class SchedulerBackend(Backend):
    """What SLURM and PBS share, as hooks: stages queued in order, each depending on the one
    before (``{STAGE}`` placeholders filled with the ids queued so far); whatever fails after
    something was queued cancels what was queued; a sweep's failed points queued again array
    by array; cancel as one command for every job, then a wait for the ends."""

    #: the scheduler's cancel command, and how its dependency options are spelled
    cancel_tool: ClassVar[str]
    dependency_prefix: ClassVar[str]
    dependency_flag: ClassVar[str | None] = None

    @abstractmethod
    def _submit_one(self, argv: Sequence[str]) -> str:
        """Queue one script; its native job id."""

    @abstractmethod
    def _max_array_size(self, resources: ResourcesConfig) -> int:
        """The most tasks one array job may have on this cluster (as configured)."""

    @abstractmethod
    def _render_part(self, specs: Sequence[JobSpec], offset: int, owner: str, script_dir: str,
                     parallel: int | None, project_dir: Path | None, swept: bool
                     ) -> list[SubmitPlan]:
        """The stages of one array job (its task i runs point ``offset + i``; ``swept``) or
        of one job: plans chained stage by stage, scripts in ``script_dir``."""

    def render(self, specs: Sequence[JobSpec], *, group: JobRecord | None = None,
               parallel: int | None = None, project_dir: Path | None = None) -> list[SubmitPlan]:
        """One script per stage; with several specs (a sweep) each stage is one array job
        whose task i runs point i: several arrays when the sweep is larger than the cluster's
        array size (schedulers refuse larger arrays), the points spread evenly over them (so
        none is a one-task array: PBS wants two subjobs at least), each chained stage by
        stage on its own; ``parallel`` is shared out between the arrays."""
        specs = [self._placed(s) for s in specs]
        first = specs[0]
        owner = group.id if group is not None else first.id
        script_dir = self.place(group.run_dir) if group is not None else first.run_dir
        limit = self._max_array_size(first.resources) if len(specs) > 1 else 1
        count = -(-len(specs) // limit)  # arrays needed
        sizes = [len(specs) // count + (i < len(specs) % count) for i in range(count)]
        plans: list[SubmitPlan] = []
        offset = 0
        for index, size in enumerate(sizes):
            share = None  # --parallel shared out, the remainder to the first arrays
            if parallel:
                share = max(1, parallel // count + (index < parallel % count))
            plans += self._render_part(specs[offset:offset + size], offset, owner, script_dir,
                                       share, project_dir, swept=len(specs) > 1)
            offset += size
        return plans

    def _placed(self, spec: JobSpec) -> JobSpec:
        """The spec as the cluster sees it (its run directory and python there)."""
        if self.remote is None:
            return spec
        run = self.place(spec.run_dir)
        return replace(spec, run_dir=run, config_path=posixpath.join(run, rundir.CONFIG),
                       python=self.remote.interpreter)

    def _check_array_size(self, plans: Sequence[SubmitPlan], limit: int | None,
                          what: str, key: str) -> None:
        """Refuse, before anything is queued, arrays larger than the cluster's ``limit``."""
        largest = max((len(p.members) for p in plans if p.kind == "array"), default=0)
        if limit is not None and largest > limit:
            raise BadInput(f"this cluster's {what} is {limit}: an array of {largest} tasks "
                           "would be refused", hint=f"--set resources.{key}={limit}")

    @abstractmethod
    def _task_id(self, array_id: str, task: int) -> str:
        """The native id of one task of an array job."""

    @abstractmethod
    def _rerun_argv(self, plan: SubmitPlan, argv: list[str], tasks: Sequence[int],
                    after: str | None) -> list[str]:
        """``argv`` of ``plan``'s array job that runs only ``tasks`` again, after the array
        ``after`` of the stage before (None: the first stage)."""

    def submit(self, plans: Sequence[SubmitPlan]) -> dict[str, Submission]:
        """Queue the stages in order, each depending on the one before. If one is refused,
        the ones already queued are cancelled: nothing is left half-submitted."""
        return self._queue(plans, None)

    def resubmit(self, group: JobRecord, plans: Sequence[SubmitPlan],
                 indices: Sequence[int]) -> dict[str, Submission]:
        """The same array jobs again, for the failed task indices only."""
        return self._queue(plans, indices)

    def _write_all(self, plans: Sequence[SubmitPlan]) -> None:
        if isinstance(self.files, RemoteFiles):  # one round trip for every script
            self.files.write({p.script_path: p.script for p in plans},
                             {p.script_path: 0o755 for p in plans})
        else:
            for plan in plans:
                self.write(plan)

    def _queue(self, plans: Sequence[SubmitPlan], indices: Sequence[int] | None
               ) -> dict[str, Submission]:
        ids: dict[str, str] = {}
        previous: SubmitPlan | None = None
        self._write_all(plans)
        try:
            for plan in plans:
                argv = fill_dependencies(plan.argv, ids, self.dependency_prefix,
                                         self.dependency_flag)
                if indices is not None:
                    tasks = [i - plan.offset for i in indices
                             if plan.offset <= i < plan.offset + len(plan.members)]
                    if not tasks:
                        continue  # nothing of this array runs again
                    after = ids[previous.key] if previous is not None \
                        and previous.offset == plan.offset else None
                    argv = self._rerun_argv(plan, argv, tasks, after)
                ids[plan.key] = self._submit_one(argv)
                previous = plan
        except BaseException:  # whatever failed, nothing stays half-submitted
            if ids:
                self.runner.run([self.cancel_tool, *ids.values()], check=False, timeout=60)
            raise
        out = {plans[0].job_id: Submission(",".join(ids.values()), dict(ids))}
        for plan in plans:  # each sweep point: its task in each stage's array
            if plan.key not in ids:
                continue
            for task, member in enumerate(plan.members):
                if indices is not None and plan.offset + task not in indices:
                    continue
                entry = out.setdefault(member, Submission())
                entry.native[plan.stage or "all"] = self._task_id(ids[plan.key], task)
                entry.native_id = ",".join(entry.native.values())
        return out

    def _to_cancel(self, status: JobStatus) -> bool:
        """Whether a job in this state is cancelled (one not ended yet)."""
        return not is_terminal(status.state)

    def _await_ends(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """The states after the cancel command (a scheduler that ends jobs slowly waits)."""
        return self.status(records)

    def cancel(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """One cancel command for every stage of every job still to stop (a sweep's array
        jobs take their waiting tasks with them), then one wait for all."""
        current = self.status(records)
        ids = [sid for r in records if self._to_cancel(current[r.id])
               for sid in r.info.native.values()]
        if not ids:
            return current
        self.runner.run([self.cancel_tool, *dict.fromkeys(ids)], check=False, timeout=60)
        return self._await_ends(records)
