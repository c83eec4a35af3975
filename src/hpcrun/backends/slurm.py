"""The SLURM backend: sbatch scripts from a template, one job per pipeline stage chained with
``afterok``, sweeps as ONE array job, a ``sbatch --test-only`` preflight, batched status.

Status: one ``squeue -t all`` for every watched job (filtered here); jobs that have left the
queue are looked up with ``sacct`` when accounting is on, else ``scontrol show job``, else the
jobcomp/filetxt log. Each source's states go through one table to hpcrun's states.
"""

from __future__ import annotations

import posixpath
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import rundir
from ..config import RemoteConfig, ResourcesConfig
from ..errors import BadInput, OperationFailed
from ..job import JobRecord, JobStatus, State, combine, is_terminal
from ..render import JobSpec, SubmitPlan, render_template, scheduler_context
from ..shell import CommandFailed, LocalRunner
from .base import SchedulerBackend

#: seconds before the time limit at which SLURM sends USR1 to the batch shell

#: native SLURM state -> hpcrun state
STATE_TABLE = {
    "PENDING": State.PENDING, "CONFIGURING": State.RUNNING, "RUNNING": State.RUNNING,
    "COMPLETING": State.RUNNING, "SUSPENDED": State.RUNNING, "RESIZING": State.RUNNING,
    "STAGE_OUT": State.RUNNING, "SIGNALING": State.RUNNING, "COMPLETED": State.SUCCEEDED,
    "FAILED": State.FAILED, "NODE_FAIL": State.FAILED, "BOOT_FAIL": State.FAILED,
    "OUT_OF_MEMORY": State.FAILED, "DEADLINE": State.FAILED, "TIMEOUT": State.FAILED,
    "SPECIAL_EXIT": State.FAILED, "CANCELLED": State.CANCELLED, "REVOKED": State.CANCELLED,
    "PREEMPTED": State.PREEMPTED, "REQUEUED": State.PENDING, "REQUEUE_HOLD": State.PENDING,
    "REQUEUE_FED": State.PENDING, "RESV_DEL_HOLD": State.PENDING,
}

_PREFLIGHT_HINTS = (
    ("invalid partition", "partition", "the partition does not exist here (sinfo -s lists them)"),
    ("invalid account", "account", "no such account, or not allowed in this partition"),
    ("invalid qos", "qos", "no such QOS, or not allowed for this account"),
    ("time limit", "time", "the time limit is invalid or exceeds the partition's limit"),
    ("memory required", "mem", "no node has that much memory"),
    ("node configuration is not available", "nodes/cpus_per_task/gpus_per_node/mem/constraint",
     "no node (or not enough nodes) can satisfy this request"),
    ("node count specification invalid", "nodes", "more nodes than the partition has"),
    ("invalid feature", "constraint", "no node has that feature"),
    ("invalid generic resource", "gpus_per_node", "no GPUs (gres) of that kind here"),
)


@dataclass
class NativeState:
    job_id: str
    state: str
    reason: str | None = None
    exit_code: int | None = None
    source: str = "squeue"


def parse_squeue(text: str) -> dict[str, NativeState]:
    """``squeue -h -t all -o '%i|%A|%T|%r|%E'`` -> states keyed by job id (``12``, ``12_3``).

    Pending array ranges (``6_[0-2]``, ``6_[1,4-5%2]``) are expanded to one entry per task."""
    states: dict[str, NativeState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4:
            continue
        job_id, _, state, reason = parts[:4]
        reason = None if reason in ("None", "(null)", "") else reason
        match = re.fullmatch(r"(\d+)_\[(.+)\]", job_id)
        ids = [job_id]
        if match:
            ids = [f"{match.group(1)}_{i}" for i in _expand_range(match.group(2))]
        for one in ids:
            states[one] = NativeState(one, state.split()[0], reason)
    return states


def _add_missing(found: dict[str, NativeState], more: dict[str, NativeState]) -> None:
    """Add what a later source knows of jobs the earlier ones did not list: asked about an
    array job, scontrol answers for every task, and its CANCELLED must not hide squeue's
    COMPLETING (the task's processes are still ending)."""
    for job_id, state in more.items():
        found.setdefault(job_id, state)


def _expand_range(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split("%")[0].split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            out.extend(range(int(low), int(high) + 1))
        elif part:
            out.append(int(part))
    return out


def _exit_code(text: str | None) -> int | None:
    """``2:0`` (exit:signal) -> 2; a signal alone -> 128 + signal."""
    if not text:
        return None
    code, _, sig = text.partition(":")
    try:
        if int(code) == 0 and sig and int(sig):
            return 128 + int(sig)
        return int(code)
    except ValueError:
        return None


def parse_sacct(text: str) -> dict[str, NativeState]:
    """``sacct -n -P -X -o JobID,State,ExitCode`` -> states."""
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state = parts[1].split()[0]
        states[parts[0]] = NativeState(parts[0], state, None, _exit_code(parts[2]), "sacct")
    return states


def _key_values(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _parse_job_lines(text: str, source: str) -> dict[str, NativeState]:
    """One ``Key=Value ...`` line per job (``scontrol show job -o``, jobcomp/filetxt)."""
    states = {}
    for line in text.splitlines():
        fields = _key_values(line)
        if "JobId" not in fields:
            continue
        job_id = fields["JobId"]
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId") not in (None, "4294967294"):
            job_id = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        reason = fields.get("Reason")
        states[job_id] = NativeState(job_id, fields.get("JobState", "UNKNOWN"),
                                     None if reason in (None, "None") else reason,
                                     _exit_code(fields.get("ExitCode")), source)
    return states


def parse_scontrol(text: str) -> dict[str, NativeState]:
    """``scontrol show job -o ID...`` -> states (array tasks as ARRAYID_TASK)."""
    return _parse_job_lines(text, "scontrol")


def parse_jobcomp(text: str) -> dict[str, NativeState]:
    """jobcomp/filetxt lines (``JobId=12 ... JobState=COMPLETED ... ExitCode=0:0``). They do
    not name array tasks' array ids, so finished array tasks need sacct or scontrol."""
    return _parse_job_lines(text, "jobcomp")


def _filename_pattern_text(path: str) -> str:
    """``path`` as literal text inside sbatch's ``--output`` filename pattern: ``%`` doubled;
    a backslash would turn off every replacement (``%j`` included), so it is refused."""
    if "\\" in path:
        raise BadInput(f"{path}: SLURM cannot write job logs under a path holding a backslash",
                       hint="choose runs_dir (or the remote's workdir) without '\\'")
    return path.replace("%", "%%")


#: how often ``sbatch --test-only`` is asked when the controller did not answer
#: how often one sbatch is tried when it was cut off before it said anything
SUBMIT_ATTEMPTS = 3
PREFLIGHT_ATTEMPTS = 4
#: how long ``cancel`` waits for a cancelled job to leave COMPLETING, in seconds
CANCEL_WAIT_S = 60
#: what SLURM's clients print when the controller did not answer (not a refusal)
_CONTROLLER_TROUBLE = ("socket timed out", "zero bytes were transmitted", "unable to contact",
                       "temporarily unavailable", "connection refused", "communication",
                       "timed out", "slurm_persist_conn")


def controller_trouble(stderr: str) -> bool:
    """Whether a failed client command means "no answer from slurmctld" (a busy or restarting
    controller; asking again may work) rather than a refusal. No message at all counts: a
    refusal always says what was refused."""
    text = stderr.strip().lower()
    return not text or any(needle in text for needle in _CONTROLLER_TROUBLE)


def preflight_error(stderr: str) -> str:
    """One line naming the directive ``sbatch --test-only`` refused."""
    message = " ".join(stderr.strip().splitlines()[-1:]) or "rejected"
    message = re.sub(r"^sbatch: error: ", "", message)
    message = re.sub(r"^Batch job submission failed: ", "", message)
    lowered = message.lower()
    for needle, directive, meaning in _PREFLIGHT_HINTS:
        if needle in lowered:
            return f"slurm refused {directive}: {message} ({meaning})"
    return f"slurm refused the job: {message}"


class SlurmBackend(SchedulerBackend):
    """With a ``remote`` (a login node), every command runs through ssh and the job's files
    live on the cluster under the remote's workdir."""

    name = "slurm"
    cancel_tool = "scancel"
    dependency_prefix = "--dependency="

    def __init__(self, *, runner: LocalRunner | None = None, remote: RemoteConfig | None = None,
                 remote_name: str | None = None):
        super().__init__(runner=runner, remote=remote, remote_name=remote_name)
        self._accounting: bool | None = None

    # -- rendering ------------------------------------------------------------------------

    def _max_array_size(self, resources: ResourcesConfig) -> int:
        return resources.slurm.max_array_size

    def _render_part(self, specs: Sequence[JobSpec], offset: int, owner: str, script_dir: str,
                     parallel: int | None, project_dir: Path | None, swept: bool
                     ) -> list[SubmitPlan]:
        """One script per stage, chained with ``afterok`` (``aftercorr`` between arrays:
        task by task)."""
        first = specs[0]
        array = None
        if swept:
            array = f"0-{len(specs) - 1}"
            if parallel and parallel < len(specs):
                array += f"%{parallel}"
        log_dir = posixpath.join(script_dir, rundir.LOGS)
        log_pattern_dir = _filename_pattern_text(log_dir)
        shared = scheduler_context(specs)
        resources = first.resources
        plans: list[SubmitPlan] = []
        previous: str | None = None
        suffix = f"-{offset}" if offset else ""
        for stage in first.stages:
            script_path = posixpath.join(script_dir, f"job-{stage}{suffix}.sbatch")
            pattern = "%A_%a" if array else "%j"
            log_name = f"slurm-{stage}-{pattern}.out"
            output = posixpath.join(log_pattern_dir, log_name)
            script = render_template("slurm.sbatch.j2", {
                **shared, "name": f"{first.experiment}-{stage}", "grace": resources.signal_grace_s,
                "array": array, "directives": list(resources.slurm.directives),
                "stage": stage, "setup": [*resources.setup, *resources.slurm.setup],
            }, project_dir)
            argv = ["sbatch", "--parsable", f"--output={output}", f"--error={output}",
                    f"--chdir={script_dir}"]
            if previous is not None:
                kind = "aftercorr" if array else "afterok"
                argv.append(f"--dependency={kind}:{{{previous}}}")
            argv.append(str(script_path))
            plan = SubmitPlan(job_id=owner, script=script, script_path=str(script_path),
                              argv=tuple(argv),
                              files={"output": posixpath.join(log_dir, log_name)},
                              stage=stage, kind="array" if array else "job",
                              members=tuple(s.id for s in specs) if array else (),
                              offset=offset)
            plans.append(plan)
            previous = plan.key
        return plans

    # -- submission -----------------------------------------------------------------------

    def preflight(self, plans: Sequence[SubmitPlan]) -> None:
        """``sbatch --test-only`` of the first stage (the later ones only add a dependency):
        a bad partition, account, time or resource request is refused here, queueing
        nothing."""
        if any(p.kind == "array" for p in plans):
            self._check_array_size(plans, rundir.to_int(
                self._cluster_config().get("MaxArraySize")), "MaxArraySize",
                "slurm.max_array_size")
        plan = plans[0]
        argv = ["sbatch", "--test-only", *(a for a in plan.argv[2:-1]
                                           if not a.startswith("--dependency="))]
        for attempt in range(PREFLIGHT_ATTEMPTS):
            try:
                self.runner.run(argv, input=plan.script, timeout=60)
                return
            except CommandFailed as exc:
                if exc.returncode == 127:
                    raise OperationFailed("sbatch is not installed here",
                                          hint="hpcrun doctor") from None
                if "Could not establish a configuration source" in exc.stderr:
                    raise BadInput("sbatch is installed here but SLURM is not configured "
                                   "(no slurm.conf, no SLURM_CONF)",
                                   hint="run where your cluster's SLURM is set up, or "
                                   "choose another backend: --backend local") from None
                if not controller_trouble(exc.stderr):
                    raise BadInput(preflight_error(exc.stderr), hint="fix resources: in the "
                                   "config, or --set resources.KEY=VALUE") from None
                if attempt == PREFLIGHT_ATTEMPTS - 1:
                    last = " ".join(exc.stderr.strip().splitlines()[-1:]) or "no answer"
                    raise OperationFailed(f"cannot reach the SLURM controller: {last}",
                                          hint="is slurmctld up and not overloaded? "
                                          "(hpcrun doctor); then submit again") from None
                time.sleep(2 ** attempt)  # a busy controller: ask again, nothing was queued

    def _rerun_argv(self, plan: SubmitPlan, argv: list[str], tasks: Sequence[int],
                    after: str | None) -> list[str]:
        # command-line options win over #SBATCH lines (the script's %N cap is kept);
        # aftercorr: task by task
        argv = [a for a in argv if not a.startswith("--dependency=")]
        cap = re.search(r"^#SBATCH --array=\S*?(%\d+)$", plan.script, re.M)
        argv.insert(-1, f"--array={','.join(str(i) for i in tasks)}{cap.group(1) if cap else ''}")
        if after is not None:
            argv.insert(-1, f"--dependency=aftercorr:{after}")
        return argv

    def _task_id(self, array_id: str, task: int) -> str:
        return f"{array_id}_{task}"

    def _submit_one(self, argv: Sequence[str]) -> str:
        return self._sbatch(argv).split(";")[0].splitlines()[-1]

    def _sbatch(self, argv: Sequence[str]) -> str:
        """sbatch's answer. One killed by SIGPIPE before it said anything (munged or the
        controller closed the socket under a client that a loaded machine had not run in
        time) never got its request through whole, so nothing was queued: it is asked
        again."""
        for attempt in range(SUBMIT_ATTEMPTS):
            try:
                return self.runner.run(argv, timeout=120).stdout.strip()
            except CommandFailed as exc:
                cut_off = exc.returncode in (-signal.SIGPIPE, 128 + signal.SIGPIPE)
                if not cut_off or exc.stderr.strip() or attempt == SUBMIT_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    # -- state ----------------------------------------------------------------------------

    def _query(self, ids: Sequence[str]) -> dict[str, NativeState]:
        found: dict[str, NativeState] = {}
        try:
            out = self.runner.run(["squeue", "-h", "-t", "all", "-o", "%i|%A|%T|%r|%E"],
                                  timeout=60).stdout
            found.update(parse_squeue(out))
        except CommandFailed as exc:
            raise OperationFailed(f"cannot reach the SLURM controller: {exc.stderr.strip()}",
                                  hint="is slurmctld up? (hpcrun doctor)") from None
        missing = [i for i in ids if i not in found]
        if missing and self._accounting is not False:
            result = self.runner.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode",
                                      "-j", ",".join(missing)], check=False, timeout=60)
            self._accounting = result.returncode == 0
            if self._accounting:
                _add_missing(found, parse_sacct(result.stdout))
        missing = [i for i in ids if i not in found]
        if missing:
            result = self.runner.run(["scontrol", "show", "job", "-o", *missing], check=False,
                                     timeout=60)
            _add_missing(found, parse_scontrol(result.stdout))
        missing = [i for i in ids if i not in found]
        if missing:
            _add_missing(found, self._jobcomp())
        return found

    def _cluster_config(self) -> dict[str, str]:
        """``scontrol show config`` as {name: value} (empty when it cannot be asked)."""
        result = self.runner.run(["scontrol", "show", "config"], check=False, timeout=60)
        return {k: v.strip() for k, v in re.findall(r"^(\w+)\s*=\s*(.*)$", result.stdout, re.M)}

    def _jobcomp(self) -> dict[str, NativeState]:
        fields = self._cluster_config()
        if fields.get("JobCompType", "").strip() != "jobcomp/filetxt":
            return {}
        try:
            return parse_jobcomp(Path(fields.get("JobCompLoc", "").strip()).read_text())
        except OSError:
            return {}

    def _exit_codes(self, states: dict[str, NativeState], ids: Sequence[str]) -> None:
        """squeue has no exit codes: ask scontrol for the failed ones."""
        failed = [i for i in ids if i in states and states[i].exit_code is None
                  and STATE_TABLE.get(states[i].state) is State.FAILED]
        if failed:
            result = self.runner.run(["scontrol", "show", "job", "-o", *failed], check=False,
                                     timeout=60)
            for job_id, state in parse_scontrol(result.stdout).items():
                if job_id in states:
                    states[job_id].exit_code = state.exit_code

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        ids = [sid for r in records for sid in r.info.native.values()]
        states = self._query(ids) if ids else {}
        self._exit_codes(states, ids)
        return {r.id: self._combine(r, states) for r in records}

    def _combine(self, record: JobRecord, states: dict[str, NativeState]) -> JobStatus:
        trainer = self.run_status(record)
        detail = {k: v for k, v in trainer.detail().items() if k != "stages"}
        native = record.info.native
        stage_states: dict[str, str] = {}
        failed = blocked = None
        reason = None
        finished = trainer.succeeded()
        for stage, sid in native.items():
            st = states.get(sid)
            mapped: str = STATE_TABLE.get(st.state, State.UNKNOWN) if st else State.UNKNOWN
            if mapped is State.UNKNOWN and stage in finished:  # SLURM forgot it; the run did not
                mapped = State.SUCCEEDED
            if st and st.state == "PENDING" and st.reason == "DependencyNeverSatisfied":
                mapped = "BLOCKED"
                blocked = blocked or stage
            stage_states[stage] = mapped
            if mapped is State.FAILED and failed is None:
                failed = stage
                code = f", exit code {st.exit_code}" if st.exit_code is not None else ""
                reason = f"stage {stage} {st.state.lower()} (job {sid}{code})"
            elif mapped in (State.PENDING, State.RUNNING) and reason is None and st and st.reason:
                reason = f"stage {stage}: {st.reason}"
        detail["stages"] = stage_states
        detail["native"] = native
        sources = sorted({states[sid].source for sid in native.values() if sid in states})
        detail["status_from"] = ", ".join(sources)
        if {"scontrol", "jobcomp"} & set(sources) and self._accounting is False:
            detail["note"] = ("SLURM accounting is off here: finished jobs are read from "
                              "scontrol or the jobcomp log")
        state = combine(stage_states.values(), sequential=True)
        if state is State.FAILED and failed is not None:
            if blocked:
                names = [s for s, v in stage_states.items() if v == "BLOCKED"]
                reason += f"; {', '.join(names)} blocked by it (DependencyNeverSatisfied)"
            failure = self.run_failure(record)
            if failure is not None and failure.exception:
                reason += f": {failure.exception}"
            return JobStatus(state, reason=reason, detail=detail)
        if state is State.SUCCEEDED:
            return JobStatus(state, exit_code=0, detail=detail)
        reason = {State.CANCELLED: "cancelled", State.PREEMPTED: reason or "preempted",
                  State.UNKNOWN: "SLURM no longer knows the job"}.get(state, reason)
        return JobStatus(state, reason=reason, detail=detail)

    # -- logs, cancel ---------------------------------------------------------------------

    def log_paths(self, record: JobRecord, rank: int | None = None) -> list[str]:
        run = self.files.run_dir(record)
        if rank is not None:
            return [posixpath.join(run, rundir.rank_log(rank))]
        paths = []
        sweep_logs = record.info.sweep_logs
        for stage, sid in record.info.native.items():
            job, _, task = sid.partition("_")
            if task:  # array tasks write into the sweep's directory
                paths.append(posixpath.join(sweep_logs or run, f"slurm-{stage}-{job}_{task}.out"))
            else:
                paths.append(posixpath.join(run, rundir.LOGS, f"slurm-{stage}-{job}.out"))
        return paths or [posixpath.join(run, rundir.LOGS, "slurm-not-started.out")]

    def _to_cancel(self, status: JobStatus) -> bool:
        # a stage blocked by a failed one waits forever unless it is cancelled
        return not is_terminal(status.state) or \
            "BLOCKED" in (status.detail.get("stages") or {}).values()

    def _await_ends(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """squeue shows a cancelled job COMPLETING until its processes are gone (up to the
        cluster's KillWait, often 30 s): wait for the ends rather than a number of polls.
        Right after scancel a running job can read CANCELLED for a moment before it reads
        COMPLETING, so an end counts once two polls in a row agree. A task that never
        started is forgotten at once (UNKNOWN): it will not start either."""
        deadline = time.monotonic() + CANCEL_WAIT_S
        ended_before = False
        while True:
            time.sleep(0.5)
            current = self.status(records)
            ended = all(is_terminal(s.state) or s.state is State.UNKNOWN for s in current.values())
            if (ended and ended_before) or time.monotonic() > deadline:
                return current
            ended_before = ended
