"""Values meant to break out of a shell line, run for real: the scripts hpcrun renders are
executed by bash (local jobs and sweeps as hpcrun starts them; pod and PBS scripts as their
machines would run them) and parsed and run by a real SLURM (hpc/slurm/up.sh). hpcrun's python
is a stub that only records how it was called, so no torch runs: what matters is that every
hostile path and sweep value arrives intact as one argument or environment value, and that
nothing else runs. Payloads touch files named PWNED; none may appear anywhere.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import invoke, stub_calls, stub_python, wait_for, wait_job

#: one path component carrying every way out of a shell word (no '/', no '${': hpcrun's own
#: interpolation would refuse that one before rendering)
HOSTILE = ("p $(touch PWNED) `touch PWNED` ; touch PWNED '; touch PWNED; ' \"; touch PWNED; \""
           " \ntouch PWNED\n || touch PWNED # && touch PWNED a\rtouch PWNED")
#: SLURM reads a backslash in --output as an escape and then cannot open the log: hpcrun
#: refuses such a run directory for SLURM, so SLURM gets the paths without it
BACKSLASH = " \\"
#: sweep values (no ','): a plain scalar, a YAML-quoted one and one YAML cannot parse
SWEEP = "data.label_column=$(touch PWNED)`touch PWNED`,'; touch PWNED; ',\"; touch PWNED #"
CONFIG = "extends: v3\nexperiment: fz\npipeline:\n  - {name: train, mode: full_pipeline}\n"


def pwned(root: Path) -> list[Path]:
    """Files the payloads would have created (directories named after them are expected)."""
    return [p for p in root.rglob("*") if p.name in ("PWNED", "PWNED-abs") and p.is_file()]


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A project and bundle cache under a hostile directory, a pod workdir with a hostile
    name, and the stub as hpcrun's python (here, on the pod and on the cluster)."""
    name = getattr(request, "param", HOSTILE + BACKSLASH)
    plain = re.sub(r"[\r\n]", " ", name)  # runs_dir and workdir refuse control characters
    project = tmp_path / name / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "fz.yaml").write_text(CONFIG)
    stub = stub_python(tmp_path / "stub")
    for key, value in {"XDG_STATE_HOME": str(tmp_path / "state"),
                       "XDG_CACHE_HOME": str(tmp_path / name / "cache"),
                       "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PYTHON": str(stub),
                       "RUNPOD_WORKDIR": str(tmp_path / plain),
                       "NO_COLOR": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "executable", str(stub))  # what submit renders as the python
    monkeypatch.chdir(project)
    runs = f"runs/{plain}/$(touch {tmp_path}/PWNED-abs)"
    yield {"root": tmp_path, "project": project, "stub": stub.parent,
           "set": ("--set", f"runs_dir={json.dumps(runs)}")}
    assert pwned(tmp_path) == []


def submit(hostile: dict[str, Any], backend: str, *extra: str) -> dict[str, Any]:
    answer = invoke("--json", "submit", "fz", "--backend", backend, *hostile["set"], *extra)
    assert answer.code == 0, answer.err
    return json.loads(answer.out)


def assert_arrived_intact(hostile: dict[str, Any], data: dict[str, Any], calls: int) -> None:
    """Each job's trainer was called with its run directory as one argument and its sweep
    point as one environment value, byte for byte."""
    everything = stub_calls(hostile["stub"], samplers=True, work=True)
    # the system sampler beside each launcher gets the run directory as one argument too,
    # and so does the step that makes the job's working folder, with the bundle's path
    samplers = [argv for argv, _ in everything if "hpcrun.sampler" in argv]
    works = [argv for argv, _ in everything if "hpcrun.snapshots" in argv]
    recorded = [(argv, env) for argv, env in everything
                if "hpcrun.sampler" not in argv and "hpcrun.snapshots" not in argv]
    assert len(recorded) == calls, recorded
    expected = {job["run_dir"]: job["info"]["sweep_point"] for job in data["jobs"]}
    assert len(works) >= calls, works
    for argv in works:
        assert argv[:2] == ["-m", "hpcrun.snapshots"] and len(argv) == 4, argv
        assert argv[2] == data["bundle"]["path"] and "PWNED" in argv[2]
        local = next(r for r in expected if Path(r).name == Path(argv[3]).name)
        on_pod = posixpath.join(os.environ["RUNPOD_WORKDIR"], "runs", "fz", Path(local).name)
        assert argv[3] in (local, on_pod)
    for argv in samplers:
        run = argv[argv.index("--run-dir") + 1]
        local = next(r for r in expected if Path(r).name == Path(run).name)
        on_pod = posixpath.join(os.environ["RUNPOD_WORKDIR"], "runs", "fz", Path(local).name)
        assert run in (local, on_pod) and "PWNED" in run
    seen = set()
    for argv, env in recorded:
        trainer = argv[argv.index("hpcrun.train") + 1:]
        run = trainer[trainer.index("--run-dir") + 1]
        local = next(r for r in expected if Path(r).name == Path(run).name)
        on_pod = posixpath.join(os.environ["RUNPOD_WORKDIR"], "runs", "fz", Path(local).name)
        assert run in (local, on_pod) and "PWNED" in run
        assert trainer[trainer.index("--config") + 1] == f"{run}/config.yaml"
        point = json.loads(env.get("HPCRUN_SWEEP_OVERRIDES", "{}"))
        assert point == expected[local], (point, expected[local])
        seen.add(local)
    assert seen == set(expected)


@pytest.mark.parametrize("sweep", [False, True])
def test_local_jobs_run_by_bash_execute_nothing(hostile: dict[str, Any], sweep: bool) -> None:
    data = submit(hostile, "local", *(("--sweep", SWEEP, "--parallel", "2") if sweep else ()))
    ends = [Path(j["run_dir"]) / "job.exit" for j in [*data["jobs"], data["group"] or {}] if j]
    assert wait_for(lambda: all(e.exists() for e in ends), timeout=60), \
        [(Path(j["run_dir"]) / "logs" / "job.out").read_text() for j in data["jobs"]]
    assert {e.read_text().strip() for e in ends} == {"0"}
    assert_arrived_intact(hostile, data, len(data["jobs"]))
    for job in data["jobs"]:  # the config a job reads back holds the value as data
        config = (Path(job["run_dir"]) / "config.yaml").read_text()
        assert "PWNED" in config if sweep else "runs_dir" in config


def run_rendered(plans: list[dict[str, Any]], cwd: Path, bundle: str,
                 env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Write plans' scripts where they would live and run them with bash, as their machine
    would (a sweep's driver starts the points' scripts itself)."""
    Path(bundle).mkdir(parents=True, exist_ok=True)
    for plan in plans:
        path = Path(plan["script_path"])
        (path.parent / "logs").mkdir(parents=True, exist_ok=True)
        path.write_text(plan["script"])
    drivers = [p for p in plans if p["kind"] == "driver"] or plans
    return [subprocess.run(["bash", p["script_path"]], cwd=cwd, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=120) for p in drivers]


@pytest.mark.parametrize("sweep", [False, True])
def test_pod_scripts_run_by_bash_execute_nothing(hostile: dict[str, Any], sweep: bool) -> None:
    """The pod's workdir (from remotes.yaml) and python name every path in the script."""
    data = submit(hostile, "pod", "--remote", "runpod", "--dry-run",
                  *(("--sweep", SWEEP) if sweep else ()))
    bundle = data["bundle"]["path"]
    assert bundle.startswith(os.environ["RUNPOD_WORKDIR"])
    for done in run_rendered(data["plans"], hostile["root"], bundle, {}):
        assert done.returncode == 0, done.stderr
    points = [p for p in data["plans"] if p["kind"] != "driver"]
    ends = [Path(p["script_path"]).parent / "job.exit" for p in data["plans"]]
    assert wait_for(lambda: all(e.exists() for e in ends), timeout=60)
    assert_arrived_intact(hostile, data, len(points))


def test_pbs_array_scripts_run_by_bash_execute_nothing(hostile: dict[str, Any]) -> None:
    data = submit(hostile, "pbs", "--dry-run", "--sweep", SWEEP)
    (plan,) = data["plans"]
    assert plan["kind"] == "array" and len(plan["script"].splitlines()) > 10
    for index in range(len(data["jobs"])):
        done = run_rendered([plan], hostile["root"], data["bundle"]["path"],
                            {"PBS_ARRAY_INDEX": str(index), "PBS_JOBID": f"7[{index}]"})[0]
        assert done.returncode == 0, done.stderr
    assert_arrived_intact(hostile, data, len(data["jobs"]))


@pytest.mark.slow
@pytest.mark.parametrize("hostile", [HOSTILE], indirect=True)
@pytest.mark.parametrize("sweep", [False, True])
def test_slurm_parses_and_runs_hostile_scripts_executing_nothing(
        hostile: dict[str, Any], slurm_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, sweep: bool) -> None:
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    extra = ("--sweep", SWEEP) if sweep else ()
    dry = submit(hostile, "slurm", "--dry-run", *extra)
    for plan in dry["plans"]:  # sbatch's own parser, as preflight asks it; nothing is queued
        argv = ["sbatch", "--test-only", *(a for a in shlex.split(plan["command"])[2:-1]
                                           if not a.startswith("--dependency="))]
        checked = subprocess.run(argv, input=plan["script"], capture_output=True, text=True,
                                 timeout=60)
        assert checked.returncode == 0, checked.stderr
        assert "to start at" in checked.stderr
    assert pwned(hostile["root"]) == []

    data = submit(hostile, "slurm", *extra)
    ref = (data["group"] or data["jobs"][0])["id"]
    view = wait_job(hostile["project"], ref, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=180)
    assert view["state"] == "SUCCEEDED", view.get("reason")
    assert_arrived_intact(hostile, data, len(data["jobs"]))


@pytest.mark.slow
@pytest.mark.parametrize("hostile", [HOSTILE], indirect=True)  # no '\\': sbatch's own refusal
@pytest.mark.parametrize("directive", ["--output=/tmp/o-$(touch PWNED).out",
                                       "--wrap=touch PWNED", "--comment=`touch PWNED`"])
def test_directives_sbatch_cannot_parse_are_refused_before_anything_runs(
        hostile: dict[str, Any], slurm_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, directive: str) -> None:
    """Directives are the config author's to write, one option a line: SLURM's own parser
    refuses one it cannot read, in hpcrun's preflight, and nothing is queued."""
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    answer = invoke("submit", "fz", "--backend", "slurm", "--set",
                    f"resources.slurm.directives={json.dumps([directive])}")
    assert answer.code == 2 and "slurm refused" in answer.err, answer.err
    assert json.loads(invoke("--json", "list").out) == []


TINY = """\
extends: v3
experiment: fz
data: {rows: 600}
training: {epochs: 1}
resources: {cpus_per_task: 1}
pipeline:
  - {name: train, mode: full_pipeline}
"""


@pytest.mark.slow
def test_a_pod_workdir_with_shell_in_its_name_syncs_runs_and_fetches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        pod_env: dict[str, str]) -> None:
    """The remote's workdir reaches ssh command lines, rsync's remote paths and the requests
    hpcrun sends to the pod: a real sshd (hpc/pod/up.sh), a real run of the trainer there,
    fetched back."""
    workdir = tmp_path / re.sub(r"[\r\n]", " ", HOSTILE)
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "fz.yaml").write_text(TINY)
    for key, value in {**pod_env, "RUNPOD_WORKDIR": str(workdir),
                       "XDG_STATE_HOME": str(tmp_path / "state"),
                       "XDG_CACHE_HOME": str(tmp_path / "cache"), "NO_COLOR": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(project)
    synced = invoke("--json", "sync", "--remote", "runpod")
    assert synced.code == 0, synced.err
    assert Path(json.loads(synced.out)["remote_code"], "configs", "fz.yaml").is_file()
    data = submit({"set": ()}, "pod", "--remote", "runpod")
    job = data["jobs"][0]["id"]
    assert wait_for(lambda: json.loads(invoke("--json", "status", job).out)[0]["state"]
                    in ("SUCCEEDED", "FAILED"), timeout=240, interval=1)
    view = json.loads(invoke("--json", "status", job).out)[0]
    assert view["state"] == "SUCCEEDED", json.dumps(view)[-1500:]
    fetched = invoke("fetch", job)
    assert fetched.code == 0, fetched.err
    assert "verified against MANIFEST.sha256" in fetched.out
    assert (workdir / "runs" / "fz").is_dir()
    assert pwned(tmp_path) == []
