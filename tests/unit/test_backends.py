"""The backend interface: every method ops and monitor call is declared on ``Backend``, every
backend implements all of it with one constructor, and the pod reruns a sweep's failed
points (it had no ``resubmit``: --resubmit-failed of a pod sweep was a traceback)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from hpcrun.backends import get_backend
from hpcrun.backends.base import Backend, SchedulerBackend
from hpcrun.backends.local import LocalBackend
from hpcrun.backends.pbs import PbsBackend
from hpcrun.backends.pod import PodBackend
from hpcrun.backends.slurm import SlurmBackend
from hpcrun.config import RemoteConfig
from hpcrun.errors import BadInput
from hpcrun.job import JobRecord
from hpcrun.render import SubmitPlan

SRC = Path(__file__).resolve().parents[2] / "src" / "hpcrun"


def test_ops_and_monitor_call_only_what_the_interface_declares():
    files = [*sorted((SRC / "ops").glob("*.py")), SRC / "monitor.py"]
    source = "".join(path.read_text() for path in files)
    called = set(re.findall(r"\b(?:impl|backend|_backend|backend_for\([\w.]*\)|"
                            r"backends\[key\])\.(\w+)\b", source))
    assert called and called <= set(dir(Backend)), called - set(dir(Backend))
    assert "files" not in called  # nothing reaches past a backend into where its files are


@pytest.mark.parametrize("cls", [LocalBackend, SlurmBackend, PbsBackend, PodBackend])
def test_every_backend_is_whole_and_takes_the_same_arguments(cls):
    assert not inspect.isabstract(cls)
    parameters = list(inspect.signature(cls.__init__).parameters)
    assert parameters == ["self", "runner", "remote", "remote_name"]
    assert issubclass(cls, SchedulerBackend) == (cls in (SlurmBackend, PbsBackend))


def test_a_pod_needs_a_remote_and_local_takes_none():
    with pytest.raises(BadInput, match="needs a remote"):
        get_backend("pod")
    with pytest.raises(BadInput, match="runs on this machine"):
        get_backend("local", remote="runpod")


def test_the_pod_reruns_the_chosen_points_through_a_new_driver(tmp_path):
    pod = PodBackend(remote=RemoteConfig(host="127.0.0.1", user="me", workdir="/w"),
                     remote_name="runpod")
    removed, started = [], []
    pod.files.remove = removed.extend
    pod.submit = lambda plans: started.extend(plans) or {"g": {"id": "9"}}
    group = JobRecord(id="g", backend="pod", host="h", experiment="e",
                      run_dir=str(tmp_path / "e" / "sweep"), project_dir=str(tmp_path),
                      info={"kind": "sweep", "parallel": 2})
    plans = [SubmitPlan(job_id=f"p{i}", script="", script_path=f"/w/runs/e/p{i}/job.sh",
                        argv=("bash",), files={}) for i in range(3)]
    answer = pod.resubmit(group, [*plans, SubmitPlan(job_id="g", script="", script_path="x",
                                                     argv=(), files={}, kind="driver")], [0, 2])
    assert [p.job_id for p in started] == ["p0", "p2", "g"]
    assert "while [ \"$(jobs -rp | wc -l)\" -ge 2 ]" in started[-1].script
    assert "/w/runs/e/p0/job.exit" in removed and "/w/runs/e/p1/job.exit" not in removed
    assert "/w/runs/e/sweep/job.cancelled" in removed
    assert set(answer) == {"g", "p0", "p2"}
