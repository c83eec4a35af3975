"""PBS: no server runs here, so the parsers are checked against output written from the PBS
Professional reference's formats, and the scripts against golden files (tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcrun.backends.pbs import (
    PbsBackend,
    final_state,
    parse_qstat_json,
    parse_qstat_text,
    pbs_mem,
    pbs_walltime,
)
from hpcrun.errors import BadInput
from hpcrun.job import JobRecord

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pbs"


def jobs_json():
    return parse_qstat_json((FIXTURES / "qstat-x-f-F-json.txt").read_text())


def combine(native, jobs, tmp_path):
    record = JobRecord(id="a", backend="pbs", host="h", experiment="v3", run_dir=str(tmp_path),
                       project_dir=str(tmp_path), info={"native": native})
    return PbsBackend._combine(record, jobs, {k.split(".")[0]: v for k, v in jobs.items()})


@pytest.mark.parametrize("value, expected", [
    ("30", "00:30:00"), ("01:30", "01:30:00"), ("02:00:00", "02:00:00"),
    ("1-12:00:00", "36:00:00"), (None, None),
])
def test_walltime(value, expected):
    assert pbs_walltime(value) == expected


@pytest.mark.parametrize("value, expected", [("16G", "16gb"), ("4000M", "4000mb"),
                                             ("512000K", "512000kb"), ("8", "8mb")])
def test_memory(value, expected):
    assert pbs_mem(value) == expected


def test_exit_status_meanings():
    assert final_state(0) == ("SUCCEEDED", None)
    assert final_state(271)[0] == "CANCELLED"
    assert final_state(265) == ("FAILED", "killed by signal 9")
    assert final_state(2) == ("FAILED", "exit code 2")
    assert final_state(-1)[0] == "FAILED"


def test_a_failed_stage_fails_the_pipeline_with_its_reason(tmp_path):
    status = combine({"pretrain": "1234.pbs01", "finetune": "1235.pbs01",
                      "eval": "1236.pbs01"}, jobs_json(), tmp_path)
    assert status.state == "FAILED"
    assert status.reason == "stage finetune failed (job 1235.pbs01): exit code 1"
    assert status.detail["stages"] == {"pretrain": "SUCCEEDED", "finetune": "FAILED",
                                       "eval": "PENDING"}


def test_array_subjobs_and_pending_reasons(tmp_path):
    jobs = jobs_json()
    assert combine({"train": "1240[0].pbs01"}, jobs, tmp_path).state == "SUCCEEDED"
    assert combine({"train": "1240[1].pbs01"}, jobs, tmp_path).state == "RUNNING"
    pending = combine({"train": "1240[2].pbs01"}, jobs, tmp_path)
    assert pending.state == "PENDING" and "Insufficient amount of resource" in pending.reason
    assert combine({"train": "1237.pbs01"}, jobs, tmp_path).state == "CANCELLED"


def test_text_form_with_continuation_lines(tmp_path):
    jobs = parse_qstat_text((FIXTURES / "qstat-x-f.txt").read_text())
    assert jobs["1234.pbs01"]["comment"].endswith("and finished")
    assert combine({"a": "1234.pbs01", "b": "1238.pbs01"}, jobs, tmp_path).state == "RUNNING"


class Server:
    """qsub answers with the next job id; ``qstat -B -f`` with the server's max_array_size."""

    def __init__(self, max_array_size: int | None = 10000):
        self.calls: list[list[str]] = []
        self.next_id = 700
        self.max_array_size = max_array_size

    def run(self, argv, **kwargs):
        from hpcrun.shell import Result

        self.calls.append(list(argv))
        if argv[0] == "qsub":
            self.next_id += 1
            suffix = "[]" if any(a.startswith("-J") for a in argv) or "#PBS -J" in \
                Path(argv[-1]).read_text() else ""
            return Result(list(argv), 0, f"{self.next_id}{suffix}.pbs01\n", "")
        if argv[:3] == ["qstat", "-B", "-f"] and self.max_array_size is not None:
            return Result(list(argv), 0, "Server: pbs01\n    server_state = Active\n"
                          f"    max_array_size = {self.max_array_size}\n", "")
        return Result(list(argv), 2, "", "qstat: unknown option")


def _sweep(tmp_path, monkeypatch, points: int, max_array: int, parallel: int | None = None):
    from hpcrun import ops

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    values = ",".join(f"0.{i + 1:04d}" for i in range(points))
    return ops.submit("v3", overrides=[f"resources.pbs.max_array_size={max_array}"],
                      sweeps=[f"training.lr={values}"], backend="pbs", dry_run=True,
                      parallel=parallel, project_dir=tmp_path)


def test_a_sweep_over_max_array_size_is_queued_as_arrays_chained_stage_by_stage(
        tmp_path, monkeypatch):
    import re

    result = _sweep(tmp_path, monkeypatch, 7, 3, parallel=4)
    plans = result.plans
    arrays = [re.search(r"#PBS -J (\S+)", p.script).group(1) for p in plans]
    # 7 points over arrays of at most 3: spread 3, 2, 2 (never a one-subjob array)
    assert [(p.stage, p.offset) for p in plans] == [
        (stage, offset) for offset in (0, 3, 5) for stage in ("pretrain", "finetune", "eval")]
    assert arrays == ["0-2%2"] * 3 + ["0-1%1"] * 3 + ["0-1%1"] * 3
    assert len({p.script_path for p in plans}) == 9  # no array overwrites another's script
    server = Server()
    natives = PbsBackend(runner=server).submit(plans)
    qsub = [c for c in server.calls if c[0] == "qsub"]
    # each array's stage waits for the same array's stage before
    assert "depend=afterok:701[].pbs01" in qsub[1] and "depend=afterok:704[].pbs01" in qsub[4]
    assert not any(a.startswith("depend") for a in qsub[3])  # a new array starts
    last = result.jobs[6]
    assert natives[last.id].native == {"pretrain": "707[1].pbs01", "finetune": "708[1].pbs01",
                                       "eval": "709[1].pbs01"}


@pytest.mark.parametrize("points, limit", [(4, 3), (10_001, 10_000), (13, 4)])
def test_no_array_of_a_split_sweep_has_a_single_subjob(points, limit):
    from hpcrun.config import ResourcesConfig
    from hpcrun.render import JobSpec

    seen = []

    class Recorder(PbsBackend):
        def _render_part(self, specs, offset, owner, script_dir, parallel, project_dir, swept):
            seen.append(len(specs))
            return []

    resources = ResourcesConfig(pbs={"max_array_size": limit})
    specs = [JobSpec(id=f"{i:x}", experiment="e", run_dir=f"/r/{i}", config_path="c",
                     bundle_dir="b", nproc="1", cpus=1, python="p", env={}, stages=("t",),
                     setup=(), resources=resources) for i in range(points)]
    Recorder().render(specs)
    assert sum(seen) == points and min(seen) >= 2 and max(seen) <= limit


def test_a_server_with_a_smaller_max_array_size_is_named_before_anything_is_queued(
        tmp_path, monkeypatch):
    plans = _sweep(tmp_path, monkeypatch, 5, 10000).plans
    server = Server(max_array_size=4)
    with pytest.raises(BadInput) as error:
        PbsBackend(runner=server).preflight(plans)
    assert "max_array_size is 4" in error.value.message
    assert "resources.pbs.max_array_size=4" in (error.value.hint or "")
    assert not [c for c in server.calls if c[0] == "qsub"]
    PbsBackend(runner=Server(max_array_size=5)).preflight(plans)
    PbsBackend(runner=Server(max_array_size=None)).preflight(plans)  # not told: qsub decides
