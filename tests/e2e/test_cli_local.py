"""The installed ``hpcrun`` command, run as a user types it, on the local backend."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

HPCRUN = str(Path(sys.executable).parent / "hpcrun")
GOLDEN = Path(__file__).resolve().parents[1] / "golden"

TINY = """\
extends: v3
experiment: {name}
data: {{rows: 600}}
training: {{epochs: 1}}
resources: {{cpus_per_task: 1}}
pipeline:
  - {{name: train, mode: full_pipeline}}
"""

LONG = """\
extends: v3
experiment: long
data: {rows: 40000}
training: {epochs: 50, early_stopping: {enabled: false}}
pipeline:
  - {name: train, mode: full_pipeline}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    env = {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return root


def hp(cwd: Path, *args: str, timeout: float = 300, check: bool = False):
    proc = subprocess.run(
        [HPCRUN, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def hpj(cwd: Path, *args: str, **kwargs):
    proc = hp(cwd, "--json", *args, **kwargs)
    return proc, json.loads(proc.stdout) if proc.stdout.strip() else None


def tiny(project: Path, name: str = "tiny") -> str:
    (project / "configs" / f"{name}.yaml").write_text(TINY.format(name=name))
    return name


def wait_state(cwd: Path, job: str, states: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, data = hpj(cwd, "status", job)
        if data and data[0]["state"] in states:
            return data[0]
        time.sleep(0.5)
    raise AssertionError(f"job {job} never reached {states}: {data}")


def test_v3_submit_status_list_logs_monitor_fetch_report(project):
    proc, data = hpj(project, "submit", "--backend", "local", "v3")
    assert proc.returncode == 0, proc.stderr
    job = data["jobs"][0]
    assert job["handle"] == f"local://{job['host']}/{job['id']}"
    run_dir = Path(job["run_dir"])
    assert run_dir.parent == project / "runs" / "v3"

    once = hp(project, "monitor", "--once", job["id"][:5])
    assert once.returncode == 0 and job["id"] in once.stdout

    watched = hp(project, "monitor", "latest", "--interval", "0.5")
    assert watched.returncode == 0, watched.stdout[-2000:]
    assert "SUCCEEDED" in watched.stdout

    _, status = hpj(project, "status")
    assert status[0]["state"] == "SUCCEEDED"
    assert status[0]["stages"] == {
        "pretrain": "SUCCEEDED",
        "finetune": "SUCCEEDED",
        "eval": "SUCCEEDED",
    }
    _, listed = hpj(project, "list")
    assert [j["id"] for j in listed] == [job["id"]]

    followed = hp(project, "logs", "--follow", check=True)  # the job has ended: all, then exit
    assert "Final evaluation" in followed.stdout
    logs = hp(project, "logs", job["id"], check=True)
    assert "nproc=2" in logs.stdout and "Final evaluation" in logs.stdout
    rank1 = hp(project, "logs", "--rank", "1", check=True).stdout
    # rank 1's own log (epoch lines are rank 0's): its lines, none of rank 0's
    assert "[rank 1] init from" in rank1 and "[rank 0]" not in rank1, rank1

    fetched = hp(project, "fetch", check=True)
    assert "verified against MANIFEST.sha256" in fetched.stdout
    final = fetched.stdout.split("Final evaluation (eval):")[1].splitlines()
    assert final[1].split()[:2] == ["split", "auroc"], final  # the table's header, then rows
    assert [row.split()[0] for row in final[2:4]] == ["val", "test"], final
    assert all(0.5 < float(row.split()[1]) <= 1.0 for row in final[2:4]), final
    _, fetched_json = hpj(project, "fetch")
    assert fetched_json["verified"] is True
    assert fetched_json["report"]["html"] == str(run_dir / "report" / "report.html")

    reported = hp(project, "report", check=True)
    lines = reported.stdout.splitlines()
    assert "Final evaluation (eval):" in lines
    assert any(line.startswith("red flags") for line in lines)
    paths = [Path(line.strip()) for line in lines[lines.index("Report:") + 1:]]
    assert paths[0].name == "report.html" and paths[0].is_file()
    assert all(p.is_file() for p in paths) and any(p.suffix == ".png" for p in paths)

    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["backend"] == "local" and meta["world_size"] == 2
    assert meta["job_ids"] == [job["id"]] and meta["hpcrun_job_id"] == job["id"]
    assert meta["bundle_hash"] == data["bundle"]["hash"]


def normalise(text: str, run_dir: str, bundle: str, job_id: str) -> str:
    text = text.replace(run_dir, "<RUN_DIR>").replace(bundle, "<BUNDLE>")
    text = text.replace(job_id, "<JOB_ID>")
    text = re.sub(r"HPCRUN_PYTHON=\S+", "HPCRUN_PYTHON=<PYTHON>", text)
    text = re.sub(r"HPCRUN_BUNDLE_HASH=\w+", "HPCRUN_BUNDLE_HASH=<HASH>", text)
    text = re.sub(r"HPCRUN_DATA_DIR=\S+", "HPCRUN_DATA_DIR=<PROJECT>", text)
    text = re.sub(r"HPCRUN_GIT_(COMMIT|DIRTY)=\S*", r"HPCRUN_GIT_\1=<GIT>", text)
    return re.sub(r"\S+/launchers/torchrun.sh", "<LAUNCHERS>/torchrun.sh", text)


def check_golden(path: Path, text: str) -> None:
    """UPDATE_GOLDEN=1 rewrites a golden file that differs, and the test still fails: review
    the diff, then run again without it."""
    if text == path.read_text():
        return
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
        pytest.fail(f"{path.name} rewritten: review `git diff {path}`, rerun without UPDATE_GOLDEN")
    assert text == path.read_text(), path.name


def test_dry_run_prints_the_golden_script_and_touches_nothing(project, tmp_path):
    proc, data = hpj(project, "submit", "--backend", "local", "v3", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    plan = data["plans"][0]
    job = data["jobs"][0]
    got = normalise(plan["script"], job["run_dir"], data["bundle"]["path"], job["id"])
    golden = GOLDEN / "local_v3.sh"
    check_golden(golden, got)
    text = hp(project, "submit", "--backend", "local", "v3", "--dry-run", check=True).stdout
    assert "# command: bash " in text and "torchrun.sh -m hpcrun.train --config" in text
    assert not (project / "runs").exists()
    assert not (tmp_path / "cache").exists()
    _, listed = hpj(project, "list")
    assert listed == []


def test_cancel_stops_every_process_and_is_idempotent(project):
    (project / "configs" / "long.yaml").write_text(LONG)
    _, data = hpj(project, "submit", "--backend", "local", "long", check=True)
    job = data["jobs"][0]
    wait_state(project, job["id"], {"RUNNING"})
    run_dir = Path(job["run_dir"])
    assert wait_for_file(run_dir / "train" / "training.csv", 120)
    root = psutil.Process(int((run_dir / "job.pid").read_text()))
    group = [root, *root.children(recursive=True)]
    assert len(group) >= 4  # job script, torchrun, 2 workers

    proc, views = hpj(project, "cancel", job["id"])
    assert proc.returncode == 0 and views[0]["state"] == "CANCELLED"
    assert [p for p in group if _alive(p)] == []
    again, views = hpj(project, "cancel", job["id"])
    assert again.returncode == 0 and views[0]["state"] == "CANCELLED"
    assert hp(project, "status", job["id"]).returncode == 1  # a cancelled job is not success


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie may be reaped between two questions)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_job_under_a_directory_with_a_carriage_return_is_followed_and_cancelled(project):
    root = project.parent / "odd\rdir" / "project"  # the environment of `project`, its path
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "long.yaml").write_text(LONG)
    _, data = hpj(root, "submit", "--backend", "local", "long", check=True)
    job = data["jobs"][0]
    assert "\r" in job["run_dir"]
    assert wait_for_file(Path(job["run_dir"]) / "train" / "training.csv", 120)
    assert hpj(root, "status", job["id"])[1][0]["state"] == "RUNNING"
    root_proc = psutil.Process(int((Path(job["run_dir"]) / "job.pid").read_text()))
    group = [root_proc, *root_proc.children(recursive=True)]
    try:
        proc, views = hpj(root, "cancel", job["id"])
        assert proc.returncode == 0 and views[0]["state"] == "CANCELLED"
        assert [p for p in group if _alive(p)] == []
    finally:  # a job hpcrun lost track of must not outlive the test
        for process in group:
            with contextlib.suppress(psutil.Error):
                process.kill()


def wait_for_file(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--set", "training.epochs=many"], ["training.epochs", "'many'"]),
        (["--set", "training.epocs=3"], ["training.epocs", "did you mean 'epochs'"]),
        (["--set", "training"], ["KEY=VALUE"]),
        (["--set", "remote=${HPCRUN_TEST_UNSET_VAR}"], ["HPCRUN_TEST_UNSET_VAR is not set"]),
        (["--sweep", "training.lr"], ["KEY=V1,V2"]),
        (["--set", "experiment=$(touch /tmp/hpcrun-pwned)"], ["experiment name"]),
        (["--sweep", "seed=" + ",".join(map(str, range(101))),
          "--sweep", "training.lr=" + ",".join(f"0.{i}" for i in range(1, 101))],
         ["10,100 points (101 x 100)", "at most 10,000"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_records_nothing(project, args, needles):
    proc = hp(project, "submit", "--backend", "local", "v3", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not (project / "runs").exists()
    assert hpj(project, "list")[1] == []
    assert not Path("/tmp/hpcrun-pwned").exists()


def test_unknown_experiment_lists_the_available_ones(project):
    proc = hp(project, "submit", "--backend", "local", "v33")
    assert proc.returncode == 2
    assert "unknown experiment 'v33'" in proc.stderr and "v3" in proc.stderr


def test_hostile_project_path_is_quoted_and_nothing_executes(tmp_path, monkeypatch):
    for key in ("XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(key, str(tmp_path / key))
    project = tmp_path / "my proj; touch PWNED 'x' $(touch PWNED2)"
    (project / "configs").mkdir(parents=True)
    name = tiny(project)
    _, data = hpj(project, "submit", "--backend", "local", name, check=True)
    state = wait_state(project, data["jobs"][0]["id"], {"SUCCEEDED", "FAILED"})
    assert state["state"] == "SUCCEEDED", hp(project, "logs").stdout[-2000:]
    assert not list(tmp_path.rglob("PWNED*"))


def test_a_failed_stage_cancels_the_later_ones_with_the_reason(project):
    proc, data = hpj(
        project,
        "submit",
        "--backend",
        "local",
        "v3",
        "--set",
        "pipeline.1.overrides.model.name=no_such_module:build",
    )
    assert proc.returncode == 0, proc.stderr
    state = wait_state(project, data["jobs"][0]["id"], {"SUCCEEDED", "FAILED"})
    assert state["state"] == "FAILED"
    assert state["stages"] == {"pretrain": "SUCCEEDED", "finetune": "FAILED", "eval": "CANCELLED"}
    assert "no_such_module" in state["reason"]
    assert "stage finetune failed" in state["message"]
    fetched = hp(project, "fetch", data["jobs"][0]["id"])
    assert fetched.returncode == 0, fetched.stderr
    assert "! failed [finetune]" in fetched.stdout and "no_such_module" in fetched.stdout


def test_sweep_runs_every_point_with_its_overrides(project):
    name = tiny(project, "sw")
    proc, data = hpj(
        project,
        "submit",
        "--backend",
        "local",
        name,
        "--sweep",
        "training.lr=0.001,0.01",
        "--sweep",
        "model.dropout=0.0,0.2",
        "--parallel",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(data["jobs"]) == 4 and data["group"]["info"]["kind"] == "sweep"
    group = wait_state(project, data["group"]["id"], {"SUCCEEDED", "FAILED"}, timeout=400)
    assert group["state"] == "SUCCEEDED", group
    seen = set()
    for job in data["jobs"]:
        meta = json.loads((Path(job["run_dir"]) / "metadata.json").read_text())
        point = meta["sweep_overrides"]
        config = (Path(job["run_dir"]) / "config.yaml").read_text()
        assert f"lr: {point['training.lr']}" in config
        seen.add((point["training.lr"], point["model.dropout"]))
    assert seen == {("0.001", "0.0"), ("0.001", "0.2"), ("0.01", "0.0"), ("0.01", "0.2")}

    proc, ranked = hpj(project, "compare", data["group"]["id"], "--metric", "auroc")
    assert proc.returncode == 0, proc.stderr
    assert len(ranked["rows"]) == 4 and ranked["split"] == "test"
    values = [r["value"] for r in ranked["rows"]]
    assert values == sorted(values, reverse=True)
    assert {"training.lr", "model.dropout"} <= set(ranked["differing"])
    assert Path(ranked["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = hp(project, "compare", data["group"]["id"], check=True).stdout
    assert "runs ranked by auroc (test)" in text and "training.lr" in text
    bad = hp(project, "compare", data["group"]["id"], "--mode", "best")
    assert bad.returncode == 2 and "use max" in bad.stderr


def test_eight_concurrent_submits_lose_no_record(project):
    name = tiny(project, "many")

    def one(_):
        return hp(project, "submit", "--backend", "local", name, "--json")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    ids = {json.loads(r.stdout)["jobs"][0]["id"] for r in results}
    _, listed = hpj(project, "list")
    assert {j["id"] for j in listed} == ids and len(ids) == 8
    for job_id in ids:
        assert wait_state(project, job_id, {"SUCCEEDED", "FAILED"}, 400)["state"] == "SUCCEEDED"


def test_the_bundle_is_frozen_at_submit(project):
    (project / "mymodel.py").write_text(
        "import os, pathlib\nfrom hpcrun.train.models import MLP\nVERSION = 'one'\n"
        "def build(n_features, *, reconstruction, **options):\n"
        "    pathlib.Path(os.environ['MARK_DIR'], 'version').write_text(VERSION)\n"
        "    return MLP(n_features, [8], reconstruction=reconstruction)\n"
    )
    name = tiny(project, "frozen")
    marks = project.parent / "marks"
    marks.mkdir()
    (project / "configs" / f"{name}.yaml").write_text(
        TINY.format(name=name)
        + "model: {name: 'mymodel:build'}\n"
        + f"resources: {{cpus_per_task: 1, setup: ['export MARK_DIR={marks}']}}\n"
    )
    _, data = hpj(project, "submit", "--backend", "local", name, check=True)
    (project / "mymodel.py").write_text("raise SystemExit('edited after submit')\n")
    state = wait_state(project, data["jobs"][0]["id"], {"SUCCEEDED", "FAILED"})
    assert state["state"] == "SUCCEEDED", hp(project, "logs").stdout[-2000:]
    assert (marks / "version").read_text() == "one"
    assert data["bundle"]["files"] >= 2


def test_secret_files_are_held_back_from_the_bundle(project):
    (project / ".env").write_text("TOKEN=secret\n")
    (project / "id_rsa").write_text("key\n")
    (project / "train.py").write_text("print('hi')\n")
    _, data = hpj(project, "submit", "--backend", "local", "v3", "--dry-run", check=True)
    assert sorted(data["bundle"]["held_back"]) == [".env", "id_rsa"]
    _, allowed = hpj(
        project, "submit", "--backend", "local", "v3", "--dry-run", "--allow", ".env", check=True
    )
    assert allowed["bundle"]["held_back"] == ["id_rsa"]


def test_help_imports_neither_torch_nor_pandas():
    code = (
        "import sys\n"
        "from hpcrun import cli\n"
        "for argv in (['--help'], ['submit', '--help'], ['monitor', '--help'],"
        " ['config', 'show', '--help'], ['fetch', '--help'], ['report', '--help']):\n"
        "    try:\n"
        "        cli.app(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_doctor_reports_tools_with_versions(project):
    proc, checks = hpj(project, "doctor")
    assert proc.returncode == 0
    names = {c["name"]: c for c in checks}
    assert {"ssh", "rsync", "sbatch", "qsub", "torch", "CUDA", "NVML"} <= set(names)
    assert names["torch"]["ok"] and names["torch"]["detail"].startswith("2.")


@pytest.mark.parametrize(
    "backend, args, golden",
    [
        ("slurm", [], "slurm_v3_{stage}.sbatch"),
        (
            "slurm",
            ["--sweep", "training.lr=0.001,0.01", "--parallel", "1"],
            "slurm_sweep_{stage}.sbatch",
        ),
        ("pbs", ["--set", "resources.mem=16G"], "pbs_v3_{stage}.pbs"),
        (
            "pbs",
            ["--set", "resources.nodes=2", "--sweep", "training.lr=0.001,0.01"],
            "pbs_sweep_2nodes_{stage}.pbs",
        ),
    ],
)
def test_scheduler_scripts_match_golden_files(project, backend, args, golden):
    proc, data = hpj(project, "submit", "--backend", backend, "v3", "--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    assert len(data["plans"]) == 3  # one job (or one array job) per stage
    bundle = data["bundle"]["path"]
    for plan in data["plans"]:
        text = plan["script"] + "\n# argv: " + plan["command"] + "\n"
        for index, job in enumerate(data["jobs"]):
            text = normalise(text, job["run_dir"], bundle, job["id"])
            text = text.replace("<JOB_ID>", f"<JOB_ID_{index}>")
        if data["group"]:
            text = text.replace(data["group"]["run_dir"], "<SWEEP_DIR>")
        text = re.sub(r"\S+/launchers/signal-trainer.sh", "<LAUNCHERS>/signal-trainer.sh", text)
        path = GOLDEN / golden.format(stage=plan["stage"])
        check_golden(path, text)


def test_resubmit_failed_reruns_only_the_failed_local_points(project):
    (project / "flaky.py").write_text(
        "import os\nfrom pathlib import Path\nfrom hpcrun.train.models import MLP\n"
        "def build(n_features, *, reconstruction, ok=True):\n"
        "    if not ok and not Path(os.environ['HPCRUN_TEST_FIXED']).exists():\n"
        "        raise RuntimeError('flaky point failed')\n"
        "    return MLP(n_features, [8], reconstruction=reconstruction)\n")
    fixed = project.parent / "fixed"
    (project / "configs" / "flaky.yaml").write_text(
        TINY.format(name="flaky") + "model: {name: 'flaky:build'}\n"
        + f"resources: {{cpus_per_task: 1, setup: ['export HPCRUN_TEST_FIXED={fixed}']}}\n")
    _, data = hpj(project, "submit", "--backend", "local", "flaky",
                  "--sweep", "model.options.ok=true,false", check=True)
    group = wait_state(project, data["group"]["id"], {"SUCCEEDED", "FAILED"})
    assert [p["state"] for p in group["points"]] == ["SUCCEEDED", "FAILED"]
    first_done = (Path(data["jobs"][0]["run_dir"]) / "job.exit").stat().st_mtime
    fixed.write_text("")
    hp(project, "submit", "--resubmit-failed", data["group"]["id"], check=True)
    group = wait_state(project, data["group"]["id"], {"SUCCEEDED", "FAILED"})
    assert group["state"] == "SUCCEEDED", group
    assert (Path(data["jobs"][0]["run_dir"]) / "job.exit").stat().st_mtime == first_done


MONITORED = """\
extends: v3
experiment: watched
data: {rows: 20000}
training: {epochs: 12, early_stopping: {enabled: false}}
pipeline:
  - {name: train, mode: full_pipeline}
"""


def test_monitor_json_streams_progress_curves_and_memory_until_success(project):
    (project / "configs" / "watched.yaml").write_text(MONITORED)
    proc, data = hpj(project, "submit", "--backend", "local", "watched")
    assert proc.returncode == 0, proc.stderr
    watched = hp(project, "--json", "monitor", "--interval", "0.3")
    assert watched.returncode == 0, watched.stderr[-2000:]
    snaps = [json.loads(line) for line in watched.stdout.splitlines()]
    running = [s for s in snaps if s["job"]["state"] == "RUNNING"
               and 2 <= s["epoch"] < s["epochs"]]  # after the last epoch, nothing is left
    assert running, [(s["job"]["state"], s["epoch"]) for s in snaps]
    mid = running[0]
    assert mid["stage"] == "train" and mid["epochs"] == 12
    assert mid["eta_s"] > 0 and mid["epoch_time_s"] > 0
    assert len(mid["series"]["val loss"]) == mid["epoch"]  # one snapshot, one epoch
    assert {"val loss", "separation", "grad norm", "auroc"} <= set(mid["series"])
    assert [m["rank"] for m in mid["memory"]] == ["0", "1"]
    assert float(mid["memory"][0]["host_rss_mb"]) > 0
    final = snaps[-1]
    assert final["job"]["state"] == "SUCCEEDED" and final["flags"] == []
    assert final["summary"]["stages"][0]["epochs"] == 12


def test_monitor_of_a_failing_job_exits_1_and_notifies_the_flag_and_the_end(project):
    proc, data = hpj(project, "submit", "--backend", "local", "v3", "--set",
                     "pipeline.1.overrides.model.name=no_such_module:build")
    assert proc.returncode == 0, proc.stderr
    events = project / "events.txt"
    notify = f"env | grep ^HPCRUN_ | sort >> {events}; echo --- >> {events}"
    watched = hp(project, "monitor", "--interval", "0.5", "--notify", notify)
    assert watched.returncode == 1, watched.stdout[-2000:] + watched.stderr[-2000:]
    assert "FAILED" in watched.stdout and "! failed [finetune]" in watched.stdout
    assert "Stage pretrain [SUCCEEDED]" in watched.stdout  # the final summary
    blocks = [dict(line.split("=", 1) for line in block.strip().splitlines())
              for block in events.read_text().split("---") if block.strip()]
    kinds = [(b["HPCRUN_EVENT"], b.get("HPCRUN_FLAG")) for b in blocks]
    assert kinds == [("flag", "failed"), ("finished", None)], kinds
    assert blocks[0]["HPCRUN_STAGE"] == "finetune" and "no_such_module" in blocks[0][
        "HPCRUN_MESSAGE"]
    assert blocks[1]["HPCRUN_STATE"] == "FAILED"
    assert blocks[1]["HPCRUN_JOB_ID"] == data["jobs"][0]["id"]


def test_a_cancelled_job_resumes_in_its_run_directory_with_no_epoch_twice(project):
    (project / "configs" / "resumed.yaml").write_text(
        MONITORED.replace("experiment: watched", "experiment: resumed").replace(
            "epochs: 12", "epochs: 40"))  # time to be refused and cancelled while it runs
    _, data = hpj(project, "submit", "--backend", "local", "resumed", check=True)
    job = data["jobs"][0]
    run_dir = Path(job["run_dir"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = json.loads((run_dir / "status.json").read_text()) if (
            run_dir / "status.json").exists() else {}
        if status.get("epoch", 0) >= 3:
            break
        time.sleep(0.2)
    assert status.get("epoch", 0) >= 3, status
    refused = hp(project, "submit", "--resume", job["id"])
    assert refused.returncode == 2 and "only a job that has ended" in refused.stderr
    assert hpj(project, "cancel", job["id"])[1][0]["state"] == "CANCELLED"

    proc, view = hpj(project, "submit", "--resume", job["id"])
    assert proc.returncode == 0, proc.stderr
    assert view["id"] == job["id"] and view["run_dir"] == job["run_dir"]
    assert wait_state(project, job["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    lines = (run_dir / "train" / "training.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, 41))
    again = hp(project, "submit", "--resume", job["id"])
    assert again.returncode == 2 and "already succeeded" in again.stderr


def test_a_preempted_local_job_ends_the_monitor_with_exit_1_and_resumes(project):
    """Nothing requeues a local job that was preempted: it has ended, and every watcher says
    so instead of waiting for it forever."""
    (project / "configs" / "preempted.yaml").write_text(
        MONITORED.replace("experiment: watched", "experiment: preempted").replace(
            "epochs: 12", "epochs: 40"))
    _, data = hpj(project, "submit", "--backend", "local", "preempted", check=True)
    job = data["jobs"][0]
    run_dir = Path(job["run_dir"])
    assert wait_for_file(run_dir / "job.pid", 60)
    deadline = time.monotonic() + 240
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and not workers:
        status = json.loads((run_dir / "status.json").read_text()) if (
            run_dir / "status.json").exists() else {}
        if status.get("epoch", 0) >= 2:
            lines = [(p, " ".join(p.info["cmdline"] or []))
                     for p in psutil.process_iter(["cmdline"])]
            workers = [p for p, line in lines if str(run_dir) in line
                       and "hpcrun.train" in line and "torch.distributed.run" not in line]
        time.sleep(0.2)
    assert workers, "the trainer never reached epoch 2"
    workers[0].send_signal(signal.SIGUSR1)  # a rank told to stop, as a scheduler's warning does

    watched = hp(project, "monitor", job["id"], "--interval", "0.5", timeout=120)
    assert watched.returncode == 1, watched.stdout[-2000:] + watched.stderr[-2000:]
    assert "PREEMPTED" in watched.stdout
    once = hp(project, "monitor", job["id"], "--once")
    assert once.returncode == 1 and "PREEMPTED" in once.stdout
    follow = hp(project, "logs", job["id"], "--follow", timeout=60)
    assert follow.returncode == 0
    saved = int((run_dir / "train" / "training.csv").read_text().splitlines()[-1].split(",")[0])

    proc, _ = hpj(project, "submit", "--resume", job["id"])
    assert proc.returncode == 0, proc.stderr
    assert wait_state(project, job["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    lines = (run_dir / "train" / "training.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, 41))
    log = (run_dir / "logs" / "train.rank0.log").read_text()
    assert f"resuming after epoch {saved}" in log, log[-2000:]


def test_slurm_log_paths_keep_a_percent_literal_and_refuse_a_backslash(project):
    runs = project / "runs 100%"
    proc, data = hpj(project, "submit", "--backend", "slurm", "v3", "--dry-run",
                     "--set", f"runs_dir={runs}")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(data["plans"][0]["command"])
    output = next(a for a in argv if a.startswith("--output="))
    assert output.startswith(f"--output={project}/runs 100%%/")  # sbatch reads %% as %
    assert output.endswith("/logs/slurm-pretrain-%j.out")

    bad = hp(project, "submit", "--backend", "slurm", "v3", "--dry-run",
              "--set", f"runs_dir={project}/back\\slash")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and "backslash" in lines[0], bad.stderr
    assert "Traceback" not in bad.stderr
