"""The pod backend: a machine reached only by ssh, with no scheduler (RunPod and the like).

The bundle is shipped with rsync and frozen as ``<workdir>/bundles/<hash>``; the job runs
detached on the pod (new session, stdin closed) and leaves pid and exit-code files in its run
directory ``<workdir>/runs/<experiment>/<run-id>``, exactly like a local job. Every operation is
one ssh round trip to ``python -m hpcrun.agent`` over a shared ControlMaster connection;
artifacts come back with rsync.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .. import rundir
from ..config import RemoteConfig
from ..errors import BadInput
from ..job import JobRecord, JobStatus, State, Submission
from ..render import JobSpec, SubmitPlan, job_files, render_template, steps
from ..shell import LocalRunner
from .agent_client import agent
from .base import Backend


class PodBackend(Backend):
    name = "pod"
    follow_interval = 2.0

    def __init__(self, *, runner: LocalRunner | None = None, remote: RemoteConfig | None = None,
                 remote_name: str | None = None):
        if remote is None:
            raise BadInput("the pod backend needs a remote: --remote NAME or `remote:` in the "
                           "config (remotes are defined in configs/remotes.yaml)")
        super().__init__(remote=remote, remote_name=remote_name or "pod")
        self.remote: RemoteConfig = remote

    # -- rendering ------------------------------------------------------------------------

    def render(self, specs: Sequence[JobSpec], *, group: JobRecord | None = None,
               parallel: int | None = None, project_dir: Path | None = None
               ) -> list[SubmitPlan]:
        plans = []
        for spec in specs:
            run = self.place(spec.run_dir)
            files = job_files(run)
            remote_spec = replace(spec, run_dir=run, config_path=posixpath.join(run, rundir.CONFIG),
                                  python=self.remote.interpreter)
            bundle = spec.bundle_dir
            env = {"HPCRUN_PYTHON": self.remote.interpreter, "HPCRUN_NPROC": spec.nproc,
                   "HPCRUN_RUN_ROOT": run, **spec.env}
            if spec.cpus:
                env["HPCRUN_CPUS"] = str(spec.cpus)
            script = render_template("pod.sh.j2", {
                "job": spec, "files": files, "bundle_dir": bundle,
                "pythonpath": f"{bundle}/src:{bundle}", "env": dict(sorted(env.items())),
                "setup": list(spec.setup), "steps": steps(remote_spec),
            }, project_dir)
            plans.append(SubmitPlan(job_id=spec.id, script=script, script_path=files["script"],
                                    argv=("bash", files["script"]), files=files))
        if group is not None:
            plans.append(self._driver(group, plans, parallel or 1, project_dir))
        return plans

    def _driver(self, group: JobRecord, plans: Sequence[SubmitPlan], parallel: int,
                project_dir: Path | None = None) -> SubmitPlan:
        """The sweep's driver on the pod: runs the points' scripts, ``parallel`` at a time."""
        files = job_files(self.place(group.run_dir))
        script = render_template("local-sweep.sh.j2", {
            "group": group, "parallel": parallel, "scripts": [p.script_path for p in plans],
            "files": files, "cancel_marker": posixpath.join(self.place(group.run_dir),
                                                            rundir.JOB_CANCELLED)}, project_dir)
        return SubmitPlan(job_id=group.id, script=script, script_path=files["script"],
                          argv=("bash", files["script"]), files=files, kind="driver")

    def resubmit(self, group: JobRecord, plans: Sequence[SubmitPlan],
                 indices: Sequence[int]) -> dict[str, Submission]:
        """Run the chosen points' scripts again through a new driver on the pod."""
        points = [p for p in plans if p.kind != "driver"]
        chosen = [points[i] for i in indices]
        ends = (rundir.JOB_EXIT, rundir.JOB_PID, rundir.JOB_CANCELLED)
        self.files.remove([posixpath.join(posixpath.dirname(p.script_path), name)
                           for p in chosen for name in ends]
                          + [posixpath.join(self.place(group.run_dir), name) for name in ends])
        driver = self._driver(group, chosen, group.info.parallel or 1)
        return self.submit([*chosen, driver]) | {p.job_id: Submission() for p in chosen}

    # -- submission -----------------------------------------------------------------------

    def preflight(self, plans: Sequence[SubmitPlan]) -> None:
        """Nothing to ask: a pod has no scheduler. (Submit has already reached it and made
        sure it runs this hpcrun: ``provision.ensure``.)"""

    def submit(self, plans: Sequence[SubmitPlan]) -> dict[str, Submission]:
        """Write every script and start the driver (a sweep) or the job, detached."""
        start = ([p for p in plans if p.kind == "driver"] or list(plans))[0]
        answer = self.files.write({p.script_path: p.script for p in plans},
                                  {p.script_path: 0o755 for p in plans},
                                  start=start.script_path)
        return {start.job_id: Submission(str(answer["pid"]))}

    # -- state ----------------------------------------------------------------------------

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        runs = {r.id: self.files.run_dir(r) for r in records}
        answer = agent(self.runner, "status", {"run_dirs": list(runs.values())},
                       python=self.remote.interpreter)
        return {record.id: JobStatus(**answer[runs[record.id]]) if runs[record.id] in answer
                else JobStatus(State.UNKNOWN, reason="the pod does not know this run directory")
                for record in records}

    def log_paths(self, record: JobRecord, rank: int | None = None) -> list[str]:
        name = rundir.JOB_OUTPUT if rank is None else rundir.rank_log(rank)
        return [posixpath.join(self.files.run_dir(record), name)]

    def cancel(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        runs = {r.id: self.files.run_dir(r) for r in records}
        answer = agent(self.runner, "cancel", {"run_dirs": list(runs.values())},
                       python=self.remote.interpreter)
        return {job: JobStatus(**answer[run]) if run in answer
                else JobStatus(State.UNKNOWN, reason="the pod does not know this run directory")
                for job, run in runs.items()}
