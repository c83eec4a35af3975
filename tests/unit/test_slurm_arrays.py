"""A sweep larger than the cluster's MaxArraySize is queued as several arrays (task indices
stay below it), chained stage by stage; the failed points of such a sweep are queued again
array by array. Rendered by the real code; sbatch and scontrol answered in memory."""

from __future__ import annotations

import re

import pytest

from hpcrun import ops
from hpcrun.backends.slurm import SlurmBackend
from hpcrun.errors import BadInput
from hpcrun.shell import Result


class Cluster:
    """sbatch answers with the next job id; scontrol with the cluster's MaxArraySize."""

    def __init__(self, max_array_size: int = 1001):
        self.calls: list[list[str]] = []
        self.next_id = 500
        self.max_array_size = max_array_size

    def run(self, argv, **kwargs):
        self.calls.append(list(argv))
        if argv[0] == "sbatch" and "--test-only" not in argv:
            self.next_id += 1
            return Result(list(argv), 0, f"{self.next_id}\n", "")
        if argv[:3] == ["scontrol", "show", "config"]:
            return Result(list(argv), 0, f"MaxArraySize           = {self.max_array_size}\n", "")
        return Result(list(argv), 0, "", "")


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def plans(points: int, max_array: int, parallel: int | None = None):
        values = ",".join(f"0.{i + 1:04d}" for i in range(points))
        result = ops.submit("v3", overrides=[f"resources.slurm.max_array_size={max_array}"],
                            sweeps=[f"training.lr={values}"], backend="slurm", dry_run=True,
                            parallel=parallel, project_dir=tmp_path)
        return result
    return plans


def _array(plan) -> str:
    return re.search(r"#SBATCH --array=(\S+)", plan.script).group(1)


def test_a_sweep_over_max_array_size_is_queued_as_chained_arrays(sweep):
    result = sweep(5, 2, parallel=4)
    plans = result.plans
    assert [(p.stage, p.offset, _array(p)) for p in plans] == [
        (stage, offset, array) for offset, array in ((0, "0-1"), (2, "0-1%1"), (4, "0-0"))
        for stage in ("pretrain", "finetune", "eval")]
    assert all(len(p.members) <= 2 for p in plans)
    cluster = Cluster()
    natives = SlurmBackend(runner=cluster).submit(plans)
    sbatch = [c for c in cluster.calls if c[0] == "sbatch"]
    assert len(sbatch) == 9
    # each array's stage waits for the same array's stage before, task by task
    assert "--dependency=aftercorr:501" in sbatch[1] and "--dependency=aftercorr:504" in sbatch[4]
    assert not any(a.startswith("--dependency") for a in sbatch[3])  # a new array starts
    point = {j.id: j for j in result.jobs}
    third, last = result.jobs[2], result.jobs[4]
    assert natives[third.id].native == {"pretrain": "504_0", "finetune": "505_0",
                                                   "eval": "506_0"}
    assert natives[last.id].native["eval"] == "509_0"
    assert set(natives) == {result.group.id, *point}
    # the failed points 1 and 4 again: only the arrays holding them, their own task indices
    again = Cluster()
    natives = SlurmBackend(runner=again).resubmit(result.group, plans, [1, 4])
    arrays = [next(a for a in c if a.startswith("--array=")) for c in again.calls
              if c[0] == "sbatch"]
    assert arrays == ["--array=1"] * 3 + ["--array=0"] * 3
    capped = Cluster()  # a rerun keeps the array's cap of tasks at once
    SlurmBackend(runner=capped).resubmit(result.group, plans, [2, 3])
    assert [next(a for a in c if a.startswith("--array=")) for c in capped.calls
            if c[0] == "sbatch"] == ["--array=0,1%1"] * 3
    assert natives[result.jobs[1].id].native["pretrain"] == "501_1"
    assert natives[last.id].native["pretrain"] == "504_0"
    assert result.jobs[0].id not in natives


def test_a_sweep_within_the_limit_is_one_array_per_stage(sweep):
    plans = sweep(3, 1001).plans
    assert [(p.offset, _array(p)) for p in plans] == [(0, "0-2")] * 3


def test_a_cluster_with_a_smaller_max_array_size_is_named_before_anything_is_queued(sweep):
    plans = sweep(5, 1001).plans
    cluster = Cluster(max_array_size=4)
    with pytest.raises(BadInput) as error:
        SlurmBackend(runner=cluster).preflight(plans)
    assert "MaxArraySize is 4" in error.value.message
    assert "resources.slurm.max_array_size=4" in (error.value.hint or "")
    assert not [c for c in cluster.calls if c[0] == "sbatch"]
    SlurmBackend(runner=Cluster(max_array_size=5)).preflight(plans)  # 5 tasks: indices 0-4
