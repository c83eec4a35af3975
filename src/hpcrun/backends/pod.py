"""The pod backend: a machine reached only by ssh, with no scheduler (RunPod and the like).

The bundle is shipped with rsync and frozen as ``<workdir>/bundles/<hash>``; the job runs
detached on the pod (new session, stdin closed) and leaves pid and exit-code files in its run
directory ``<workdir>/runs/<experiment>/<run-id>``, exactly like a local job. Every operation is
one ssh round trip to ``python -m hpcrun.agent`` over a shared ControlMaster connection;
artifacts come back with rsync.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import rundir
from ..bundle import Bundle
from ..config import RemoteConfig
from ..errors import OperationFailed
from ..job import JobRecord, JobStatus, is_terminal
from ..render import JobSpec, SubmitPlan, job_files, render_template, trainer_args
from ..shell import LocalRunner, SshRunner
from ..sync import agent, push, remote_paths


def remote_run_dir(workdir: str, local_run_dir: str) -> str:
    """``<workdir>/runs/<experiment>/<run-id>`` for a local ``.../<experiment>/<run-id>``."""
    local = Path(local_run_dir)
    return posixpath.join(workdir, "runs", local.parent.name, local.name)


class PodBackend:
    name = "pod"

    def __init__(self, remote: RemoteConfig, remote_name: str = "pod",
                 ssh: SshRunner | None = None, local: LocalRunner | None = None):
        self.remote = remote
        self.remote_name = remote_name
        self.ssh = ssh or SshRunner(remote)
        self.local = local or LocalRunner()
        self.runner = self.ssh

    # -- bundle ---------------------------------------------------------------------------

    def bundle_dir(self, bundle: Bundle) -> str:
        return remote_paths(self.remote.workdir, bundle.hash)[1]

    def ship(self, bundle: Bundle) -> None:
        push(bundle, self.ssh, self.remote.workdir, local=self.local)

    # -- rendering ------------------------------------------------------------------------

    def _remote_spec_paths(self, spec: JobSpec) -> tuple[str, dict[str, str]]:
        run = remote_run_dir(self.remote.workdir, spec.run_dir)
        return run, job_files(run)

    def render(self, specs: Sequence[JobSpec], *, group: JobRecord | None = None,
               parallel: int | None = None, project_dir: Path | None = None
               ) -> list[SubmitPlan]:
        plans = []
        for spec in specs:
            run, files = self._remote_spec_paths(spec)
            remote_spec = JobSpec(**{**spec.__dict__, "run_dir": run,
                                     "config_path": posixpath.join(run, rundir.CONFIG),
                                     "python": self.remote.python})
            bundle = spec.bundle_dir
            env = {"HPCRUN_PYTHON": self.remote.python, "HPCRUN_NPROC": spec.nproc,
                   **spec.env}
            if spec.cpus:
                env["HPCRUN_CPUS"] = str(spec.cpus)
            script = render_template("pod.sh.j2", {
                "job": spec, "files": files, "bundle_dir": bundle,
                "pythonpath": f"{bundle}/src:{bundle}", "env": dict(sorted(env.items())),
                "setup": list(spec.setup), "trainer_args": trainer_args(remote_spec),
            }, project_dir)
            plans.append(SubmitPlan(job_id=spec.id, script=script, script_path=files["script"],
                                    argv=("bash", files["script"]),
                                    files={**files, "local_run_dir": spec.run_dir}))
        if group is not None:
            run = posixpath.join(self.remote.workdir, "runs", Path(group.run_dir).parent.name,
                                 Path(group.run_dir).name)
            files = job_files(run)
            script = render_template("local-sweep.sh.j2", {
                "group": group, "parallel": parallel or 1,
                "scripts": [p.script_path for p in plans], "files": files,
                "cancel_marker": posixpath.join(run, rundir.JOB_CANCELLED)}, project_dir)
            plans.append(SubmitPlan(job_id=group.id, script=script,
                                    script_path=files["script"], argv=("bash", files["script"]),
                                    files={**files, "local_run_dir": group.run_dir},
                                    kind="driver"))
        return plans

    # -- submission -----------------------------------------------------------------------

    def preflight(self, plans: Sequence[SubmitPlan]) -> None:
        """Reach the pod and find hpcrun there before anything is written or shipped."""
        result = self.ssh.run([self.remote.python, "-c", "import hpcrun"], check=False,
                              timeout=120)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise OperationFailed(
                f"hpcrun is not importable with {self.remote.python} on the pod ({last})",
                hint="pip install hpcrun[train] there, or set the remote's python")

    def submit(self, plans: Sequence[SubmitPlan]) -> dict[str, dict]:
        files: dict[str, str] = {}
        modes: dict[str, int] = {}
        dirs = []
        for plan in plans:
            run = posixpath.dirname(plan.script_path)
            files[plan.script_path] = plan.script
            modes[plan.script_path] = 0o755
            dirs.append(posixpath.join(run, rundir.LOGS))
            local_config = Path(plan.files["local_run_dir"]) / rundir.CONFIG
            if local_config.exists():
                files[posixpath.join(run, rundir.CONFIG)] = local_config.read_text()
        drivers = [p for p in plans if p.kind == "driver"]
        start = (drivers or list(plans))[0]
        answer = agent(self.ssh, "prepare", {"files": files, "modes": modes, "dirs": dirs,
                                             "start": start.script_path})
        out = {}
        for plan in plans:
            info = {"remote": self.remote_name,
                    "remote_run_dir": posixpath.dirname(plan.script_path)}
            out[plan.job_id] = {"id": str(answer["pid"]) if plan is start else None,
                                "info": info}
        return out

    # -- state ----------------------------------------------------------------------------

    def status(self, records: Sequence[JobRecord]) -> dict[str, JobStatus]:
        runs = {r.id: r.info.get("remote_run_dir") for r in records}
        answer = agent(self.ssh, "status", {"run_dirs": [d for d in runs.values() if d]})
        out = {}
        for record in records:
            found = answer.get(runs[record.id] or "")
            out[record.id] = JobStatus(**found) if found else JobStatus(
                "UNKNOWN", reason="the pod does not know this run directory")
        return out

    def logs(self, record: JobRecord, rank: int | None = None) -> Path:
        run = Path(record.run_dir)
        return run / (rundir.JOB_OUTPUT if rank is None else f"{rundir.LOGS}/train.rank{rank}.log")

    def _remote_log(self, record: JobRecord, rank: int | None) -> str:
        run = record.info["remote_run_dir"]
        name = rundir.JOB_OUTPUT if rank is None else f"{rundir.LOGS}/train.rank{rank}.log"
        return posixpath.join(run, name)

    def read_log(self, record: JobRecord, rank: int | None = None) -> str | None:
        result = self.ssh.run(["cat", self._remote_log(record, rank)], check=False)
        return result.stdout if result.returncode == 0 else None

    def follow(self, record: JobRecord, rank: int | None = None,
               interval: float = 2.0) -> Iterator[str]:
        offset = 0
        pending = ""
        path = self._remote_log(record, rank)
        while True:
            finished = is_terminal(self.status([record])[record.id].state)
            result = self.ssh.run(["tail", "-c", f"+{offset + 1}", path], check=False)
            if result.returncode == 0:
                offset += len(result.stdout.encode())
                pending += result.stdout
                *lines, pending = pending.split("\n")
                yield from lines
            if finished:
                if pending:
                    yield pending
                return
            time.sleep(interval)

    def cancel(self, record: JobRecord) -> JobStatus:
        answer = agent(self.ssh, "cancel", {"run_dir": record.info["remote_run_dir"]})
        return JobStatus(**answer)

    # -- artifacts ------------------------------------------------------------------------

    def pull(self, record: JobRecord, partial: bool = False) -> None:
        """Bring the run directory back with rsync (resumable). ``partial``: CSVs and JSON
        only, for a job still running."""
        local = Path(record.run_dir)
        local.mkdir(parents=True, exist_ok=True)
        argv = ["rsync", "-az", "--partial", "--safe-links", "-e", self.ssh.rsync_shell()]
        if partial:
            argv += ["--include=*/", "--include=*.csv", "--include=*.json", "--exclude=*"]
        argv += [f"{self.ssh.target}:{record.info['remote_run_dir'].rstrip('/')}/",
                 str(local) + "/"]
        self.local.run(argv, timeout=3600)

    def close(self) -> None:
        self.ssh.close()

