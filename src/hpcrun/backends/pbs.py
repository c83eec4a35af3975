"""The PBS backend (PBS Professional / OpenPBS): qsub scripts from a template, stages chained
with ``depend=afterok``, sweeps as one array job (``-J``), status from ``qstat -x -f -F json``
(or its text form), ``qdel`` to cancel.

No PBS server runs on hpcrun's test machines: rendering is checked against golden files and
the parsers against output written from the PBS Professional reference's formats.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import RemoteConfig, ResourcesConfig
from ..errors import BadInput, OperationFailed
from ..job import JobRecord, JobStatus, State, combine
from ..render import JobSpec, SubmitPlan, render_template, scheduler_context
from ..shell import LocalRunner
from .base import SchedulerBackend

#: PBS job_state letter -> hpcrun state (F/X, finished, are decided by Exit_status)
STATE_TABLE = {
    **dict.fromkeys("QHWTM", State.PENDING), **dict.fromkeys("REBSU", State.RUNNING)}
#: Exit_status values PBS uses for jobs it ended itself
_KILLED_BY_SIGNAL = 256  # exit status 256 + N: killed by signal N (qdel: 271 = SIGTERM)


def pbs_walltime(value: str | None) -> str | None:
    """SLURM-style ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS`` -> PBS ``HH:MM:SS``."""
    if not value:
        return None
    days = 0
    if "-" in value:
        day_text, value = value.split("-", 1)
        days = int(day_text)
    parts = [int(p) for p in value.split(":")]
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = parts[0], parts[1], 0
    else:
        hours, minutes, seconds = parts
    hours += days * 24 + minutes // 60
    return f"{hours:02d}:{minutes % 60:02d}:{seconds:02d}"


def pbs_mem(value: str | None) -> str | None:
    """``16G`` / ``4000M`` / ``512000K`` -> ``16gb`` / ``4000mb`` / ``512000kb``."""
    if not value:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", value, re.IGNORECASE | re.ASCII)
    if not match:
        return value
    number, unit = match.groups()
    return f"{number}{(unit or 'M').lower()}b"


def final_state(exit_status: int | None) -> tuple[State, str | None]:
    if exit_status is None:
        return State.UNKNOWN, None
    if exit_status == 0:
        return State.SUCCEEDED, None
    if exit_status == _KILLED_BY_SIGNAL + 15:
        return State.CANCELLED, "killed by SIGTERM (qdel)"
    if exit_status > _KILLED_BY_SIGNAL:
        return State.FAILED, f"killed by signal {exit_status - _KILLED_BY_SIGNAL}"
    if exit_status < 0:
        return State.FAILED, f"PBS could not run the job (Exit_status {exit_status})"
    return State.FAILED, f"exit code {exit_status}"


def parse_qstat_json(text: str) -> dict[str, dict[str, Any]]:
    """``qstat -x -f -F json`` -> {job id: attributes}. Array subjobs keep ids like
    ``12[3].server``."""
    data = json.loads(text or "{}")
    return {job_id: attrs for job_id, attrs in (data.get("Jobs") or {}).items()}


def parse_qstat_text(text: str) -> dict[str, dict[str, Any]]:
    """``qstat -x -f`` (``Job Id: ...`` blocks of ``key = value`` lines, continuation lines
    indented with a tab) -> {job id: attributes}."""
    jobs: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    last_key = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = jobs.setdefault(line.split(":", 1)[1].strip(), {})
            last_key = None
        elif current is not None and line.startswith("\t") and last_key and " = " not in line:
            current[last_key] += line.strip()
        elif current is not None and " = " in line:
            key, value = line.strip().split(" = ", 1)
            current[key] = value
            last_key = key
    return jobs


def _array_range(indices: Sequence[int], size: int) -> str:
    """The smallest ``-J`` range covering ``indices`` (PBS wants at least two subjobs)."""
    low, high = min(indices), max(indices)
    if low == high:
        low, high = (low, low + 1) if low + 1 < size else (low - 1, low)
    return f"{low}-{high}"


def _short(job_id: str) -> str:
    return job_id.split(".", 1)[0]


class PbsBackend(SchedulerBackend):
    follow_interval = 2.0

    name = "pbs"
    cancel_tool = "qdel"
    dependency_prefix = "depend="
    dependency_flag = "-W"

    def __init__(self, *, runner: LocalRunner | None = None, remote: RemoteConfig | None = None,
                 remote_name: str | None = None):
        if remote is not None:
            raise BadInput("PBS through a login node is not supported yet: run hpcrun on the "
                           "login node, or use --backend slurm/pod")
        super().__init__(runner=runner)

    def _max_array_size(self, resources: ResourcesConfig) -> int:
        return resources.pbs.max_array_size

    def _render_part(self, specs: Sequence[JobSpec], offset: int, owner: str, script_dir: str,
                     parallel: int | None, project_dir: Path | None, swept: bool
                     ) -> list[SubmitPlan]:
        """One script per stage, each ``depend=afterok`` on the one before (of the same
        array: an array's dependency is on the whole array before it)."""
        first = specs[0]
        resources = first.resources
        array = f"0-{len(specs) - 1}" if swept else None
        if array and parallel and parallel < len(specs):
            array += f"%{parallel}"
        base = Path(script_dir)
        shared = scheduler_context(specs)
        plans: list[SubmitPlan] = []
        previous = None
        suffix = f"-{offset}" if offset else ""
        for stage in first.stages:
            script_path = base / f"job-{stage}{suffix}.pbs"
            output = base / rundir.LOGS / f"pbs-{stage}{suffix}.out"
            script = render_template("pbs.pbs.j2", {
                **shared, "name": f"{first.experiment}-{stage}"[:236], "array": array,
                "walltime": pbs_walltime(resources.time), "pbs_mem": pbs_mem(resources.mem),
                "queue": resources.queue or resources.partition,
                "directives": list(resources.pbs.directives), "stage": stage,
                "setup": [*resources.setup, *resources.pbs.setup],
            }, project_dir)
            argv = ["qsub", "-o", str(output), "-j", "oe"]
            if previous is not None:
                argv += ["-W", f"depend=afterok:{{{previous}}}"]
            argv.append(str(script_path))
            plan = SubmitPlan(job_id=owner, script=script, script_path=str(script_path),
                              argv=tuple(argv), files={"output": str(output)},
                              stage=stage, kind="array" if array else "job",
                              members=tuple(s.id for s in specs) if array else (),
                              offset=offset)
            plans.append(plan)
            previous = plan.key
        return plans

    def preflight(self, plans: Sequence[SubmitPlan]) -> None:
        """PBS has no dry-run submission: the config's own validation is the check, and
        arrays larger than the server's ``max_array_size`` (``qstat -Bf``) are refused."""
        if any(p.kind == "array" for p in plans):
            result = self.runner.run(["qstat", "-B", "-f"], check=False, timeout=60)
            found = re.search(r"^\s*max_array_size\s*=\s*(\d+)\s*$", result.stdout, re.M)
            self._check_array_size(plans, int(found.group(1)) if found else None,
                                   "max_array_size", "pbs.max_array_size")

    def _rerun_argv(self, plan: SubmitPlan, argv: list[str], tasks: Sequence[int],
                    after: str | None) -> list[str]:
        """PBS arrays take a range, not a list: the range covering the failed indices is
        queued again; points in it that had succeeded finish at once (their stages are
        done). The dependency on the stage before is already filled in."""
        argv.insert(-1, "-J" + _array_range(tasks, len(plan.members)))
        return argv

    def _task_id(self, array_id: str, task: int) -> str:
        return array_id.replace("[]", f"[{task}]")

    def _submit_one(self, argv: Sequence[str]) -> str:
        return self.runner.run(argv, timeout=120).stdout.strip()

    def _query(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        result = self.runner.run(["qstat", "-x", "-f", "-F", "json", *ids], check=False,
                                 timeout=60)
        if result.returncode == 0 and result.stdout.lstrip().startswith("{"):
            return parse_qstat_json(result.stdout)
        result = self.runner.run(["qstat", "-x", "-f", *ids], check=False, timeout=60)
        if result.returncode not in (0, 35, 153) and not result.stdout:
            raise OperationFailed(f"qstat failed: {result.stderr.strip()}")
        return parse_qstat_text(result.stdout)

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        ids = [sid for r in records for sid in r.info.native.values()]
        jobs = self._query(ids) if ids else {}
        by_short = {_short(k): v for k, v in jobs.items()}
        return {r.id: self._combine(r, jobs, by_short) for r in records}

    @staticmethod
    def _combine(record: JobRecord, jobs: dict[str, dict[str, Any]],
                 by_short: dict[str, dict[str, Any]]) -> JobStatus:
        native = record.info.native
        stages: dict[str, State] = {}
        reason = None
        for stage, sid in native.items():
            attrs = jobs.get(sid) or by_short.get(_short(sid))
            if attrs is None:
                stages[stage] = State.UNKNOWN
                continue
            letter = str(attrs.get("job_state", "?"))
            if letter in ("F", "X"):
                raw = attrs.get("Exit_status")
                state, why = final_state(int(raw) if raw is not None else None)
            else:
                state, why = STATE_TABLE.get(letter, State.UNKNOWN), attrs.get("comment")
            stages[stage] = state
            if state in (State.FAILED, State.CANCELLED) and reason is None:
                reason = f"stage {stage} {state.lower()} (job {sid}): {why}"
            elif reason is None and state is State.PENDING and why:
                reason = f"stage {stage}: {why}"
        detail = {"stages": stages, "native": native}
        state = combine(stages.values(), sequential=True)
        if state is State.SUCCEEDED:
            return JobStatus(state, exit_code=0, detail=detail)
        if state is State.UNKNOWN:
            reason = "PBS no longer knows the job"
        return JobStatus(state, reason=reason, detail=detail)

    def log_paths(self, record: JobRecord, rank: int | None = None) -> list[str]:
        run = self.files.run_dir(record)
        if rank is not None:
            return [posixpath.join(run, rundir.rank_log(rank))]
        return [posixpath.join(run, rundir.LOGS, f"pbs-{stage}.out")
                for stage in (record.info.native or {"all": ""})]
