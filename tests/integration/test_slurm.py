"""The SLURM backend against a real cluster: slurmctld + 2 slurmd nodes on this machine, started
by hpc/slurm/up.sh. In CI a cluster that cannot start is a failure, not a skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port, hp, hpj, start_sandbox, stop_sandbox, wait_job

pytestmark = pytest.mark.slow

TINY = """\
extends: v3
experiment: {name}
data: {{rows: 600}}
training: {{epochs: {epochs}, early_stopping: {{enabled: false}}}}
resources: {{cpus_per_task: 1, time: "00:10:00"}}
pipeline:
  - {{name: train, mode: full_pipeline}}
"""


@pytest.fixture
def project(slurm_project):
    return slurm_project


def tiny(project, name, epochs=1):
    (project / "configs" / f"{name}.yaml").write_text(TINY.format(name=name, epochs=epochs))
    return name


def submit(project, *args):
    proc = hp(project, "--json", "submit", "--backend", "slurm", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def squeue_ids(all_states: bool = False) -> set[str]:
    argv = ["squeue", "-h", "-o", "%i", *(["-t", "all"] if all_states else [])]
    return set(subprocess.run(argv, capture_output=True, text=True).stdout.split())


def job_times(native_id: str) -> tuple[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", native_id], capture_output=True,
                         text=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S*)", out))
    return fields["StartTime"], fields["EndTime"]


def test_v3_runs_as_three_chained_jobs_in_order(project):
    data = submit(project, "v3")
    job = data["jobs"][0]
    watched = hp(project, "--json", "monitor", "--interval", "0.5", timeout=600)
    snaps = [json.loads(line) for line in watched.stdout.splitlines()]
    assert watched.returncode == 0, hp(project, "logs").stdout[-3000:]
    assert snaps[-1]["job"]["state"] == "SUCCEEDED" and snaps[-1]["flags"] == []
    assert snaps[-1]["summary"]["final_evaluation_stage"] == "eval"
    assert any(s["job"]["state"] == "RUNNING" and s["epoch"] for s in snaps)
    view = hpj(project, "status", job["id"])[0]
    native = view["native"]
    assert list(native) == ["pretrain", "finetune", "eval"]
    times = [job_times(native[s]) for s in native]
    assert times[0][1] <= times[1][0] and times[1][1] <= times[2][0]  # afterok order
    run = Path(job["run_dir"])
    for stage in ("pretrain", "finetune"):
        assert (run / stage / "training.csv").is_file()
    assert (run / "eval" / "evaluation.csv").is_file()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "SUCCEEDED"
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["backend"] == "slurm" and len(meta["runs"]) == 3  # one start per stage job
    assert hp(project, "monitor", "--once").returncode == 0
    assert "Final evaluation" in hp(project, "logs").stdout
    fetched = hp(project, "fetch")
    assert fetched.returncode == 0 and "verified" in fetched.stdout


def test_a_percent_in_the_run_directory_is_a_literal_for_slurm_logs(project):
    name = tiny(project, "pct")
    data = submit(project, name, "--set", f"runs_dir={project}/runs 100%j")
    job = data["jobs"][0]
    assert "/runs 100%j/" in job["run_dir"]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert view["state"] == "SUCCEEDED", view
    native = view["native"]["train"]
    assert (Path(job["run_dir"]) / "logs" / f"slurm-train-{native}.out").is_file()
    assert "Final evaluation" in hp(project, "logs", job["id"]).stdout


def test_a_sweep_is_one_array_job_with_overrides_per_task(project):
    name = tiny(project, "sweep")
    data = submit(project, name, "--sweep", "training.lr=0.001,0.01",
                  "--sweep", "model.dropout=0.0,0.2", "--parallel", "2")
    assert len(data["plans"]) == 1 and "--array=0-3%2" in data["plans"][0]["script"]
    group = wait_job(project, data["group"]["id"], {"SUCCEEDED", "FAILED"}, timeout=400)
    assert group["state"] == "SUCCEEDED", group
    array_ids = {p["native"]["train"].split("_")[0] for p in group["points"]}
    assert len(array_ids) == 1  # ONE array job
    seen = set()
    for point in data["jobs"]:
        meta = json.loads((Path(point["run_dir"]) / "metadata.json").read_text())
        seen.add(tuple(sorted(meta["sweep_overrides"].items())))
        assert re.match(r"^\d+_\d$", meta["job_ids"][0])  # ARRAYID_TASK
    assert len(seen) == 4


def test_cancel_makes_the_job_cancelled(project):
    name = tiny(project, "long", epochs=200)
    data = submit(project, name)
    wait_job(project, data["jobs"][0]["id"], {"RUNNING"})
    views = hpj(project, "cancel", data["jobs"][0]["id"])
    assert views[0]["state"] == "CANCELLED"
    assert hpj(project, "cancel", data["jobs"][0]["id"])[0]["state"] == "CANCELLED"


def test_a_failed_parent_reports_its_dependents_as_blocked(project):
    data = submit(project, "v3", "--set", "pipeline.0.overrides.model.name=no_such_module:f")
    job = data["jobs"][0]["id"]
    watched = hp(project, "monitor", job, "--interval", "0.5", timeout=600)
    assert watched.returncode == 1 and "FAILED" in watched.stdout
    assert "! failed [pretrain]" in watched.stdout and "no_such_module" in watched.stdout
    view = hpj(project, "status", job)[0]
    assert view["state"] == "FAILED"
    deadline = time.monotonic() + 120
    while "blocked" not in (view["reason"] or "") and time.monotonic() < deadline:
        time.sleep(1)
        view = hpj(project, "status", job)[0]
    assert "stage pretrain failed" in view["reason"]
    assert "blocked by it" in view["reason"], view
    assert view["stages"]["finetune"] == "BLOCKED"
    hpj(project, "cancel", job)  # clears the blocked dependents from the queue
    assert not set(view["native"].values()) & squeue_ids()


def test_preflight_rejects_a_bad_partition_and_queues_nothing(project):
    before = squeue_ids()
    proc = hp(project, "submit", "--backend", "slurm", "v3", "--set",
              "resources.partition=nosuchpart")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "partition" in lines[0] and "Invalid partition" in lines[0]
    assert squeue_ids() == before
    assert not (project / "runs").exists()
    assert hpj(project, "list") == []


def preempted_once(project: Path, job: dict, epochs: int = 30) -> tuple[dict, str]:
    """``scancel --signal=USR1 --batch`` once the job's status says epoch 2 (the training
    process is up, its handler installed); the job must requeue itself and finish with every
    epoch in training.csv once. Returns its metadata.json and log."""
    run = Path(job["run_dir"])
    native = hpj(project, "status", job["id"])[0]["native"]["train"]
    deadline = time.monotonic() + 180
    status: dict = {}
    while time.monotonic() < deadline:
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() \
            else {}
        if status.get("epoch", 0) >= 2:
            break
        time.sleep(0.3)
    assert status.get("epoch", 0) >= 2, status
    subprocess.run(["scancel", "--signal=USR1", "--batch", native], check=True)
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=400)
    assert view["state"] == "SUCCEEDED", hp(project, "logs").stdout[-3000:]
    done = [line.split(",")[0] for line in
            (run / "train" / "training.csv").read_text().splitlines()[1:]]
    assert done == [str(e) for e in range(1, epochs + 1)]
    log = hp(project, "logs").stdout
    assert "requeueing" in log
    return json.loads((run / "metadata.json").read_text()), log


def test_usr1_checkpoints_requeues_and_the_resumed_job_finishes(project):
    name = tiny(project, "preempt", epochs=30)  # still running when the signal comes
    (project / "configs" / f"{name}.yaml").write_text(
        TINY.format(name=name, epochs=30).replace("rows: 600", "rows: 30000"))
    data = submit(project, name)
    meta, _ = preempted_once(project, data["jobs"][0])
    assert len(meta["runs"]) == 2 and meta["runs"][0]["state"] == "PREEMPTED"
    assert meta["runs"][1]["resumed"] is True


def test_two_nodes_start_two_agents_that_rendezvous(project):
    name = tiny(project, "multi", epochs=2)
    data = submit(project, name, "--set", "resources.nodes=2")
    view = wait_job(project, data["jobs"][0]["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert view["state"] == "SUCCEEDED", hp(project, "logs").stdout[-3000:]
    run = Path(data["jobs"][0]["run_dir"])
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["world_size"] == 2
    out = hp(project, "logs").stdout
    assert "nnodes=2 node_rank=0" in out and "nnodes=2 node_rank=1" in out


def test_hostile_scheduler_names_are_rejected(project):
    for setting in ("resources.partition=debug;touch /tmp/hpcrun-x",
                    "resources.account=$(id)", "resources.slurm.directives=['--x\\n#SBATCH']"):
        proc = hp(project, "submit", "--backend", "slurm", "v3", "--set", setting)
        assert proc.returncode == 2, (setting, proc.stderr)
    assert not Path("/tmp/hpcrun-x").exists()


FLAKY = """\
import os
from pathlib import Path
from hpcrun.train.models import MLP

def build(n_features, *, reconstruction, ok=True):
    if not ok and not Path(os.environ["HPCRUN_TEST_FIXED"]).exists():
        raise RuntimeError("flaky point failed")
    return MLP(n_features, [8], reconstruction=reconstruction)
"""


def flaky_sweep(project, backend):
    (project / "flaky.py").write_text(FLAKY)
    fixed = project.parent / "fixed"
    name = "flaky"
    (project / "configs" / f"{name}.yaml").write_text(
        TINY.format(name=name, epochs=1)
        + "model: {name: 'flaky:build'}\n"
        + f"resources: {{cpus_per_task: 1, setup: ['export HPCRUN_TEST_FIXED={fixed}']}}\n")
    proc = hp(project, "--json", "submit", "--backend", backend, name,
              "--sweep", "model.options.ok=true,false,true")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), fixed


def test_resubmit_failed_runs_only_the_failed_array_tasks(project):
    data, fixed = flaky_sweep(project, "slurm")
    group = wait_job(project, data["group"]["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    states = [p["state"] for p in group["points"]]
    assert states == ["SUCCEEDED", "FAILED", "SUCCEEDED"], group
    fixed.write_text("")
    again = hp(project, "--json", "submit", "--resubmit-failed", data["group"]["id"])
    assert again.returncode == 0, again.stderr
    point = hpj(project, "status", data["jobs"][1]["id"])[0]
    assert point["native"]["train"].endswith("_1")
    array = point["native"]["train"].split("_")[0]
    tasks = subprocess.run(["squeue", "-h", "-t", "all", "-j", array, "-o", "%i"],
                           capture_output=True, text=True).stdout.split()
    assert tasks in ([f"{array}_1"], [f"{array}_[1]"])  # only the failed index
    group = wait_job(project, data["group"]["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert group["state"] == "SUCCEEDED", group


@pytest.fixture(scope="session")
def login_node(slurm_env, tmp_path_factory):
    """A second private sshd in front of the same SLURM cluster: a login node."""
    state = tmp_path_factory.mktemp("login")
    env = {**os.environ, "HPCRUN_POD_DIR": str(state), "HPCRUN_POD_PORT": str(free_port()),
           "HPCRUN_POD_SETENV": f"SLURM_CONF={slurm_env['SLURM_CONF']}"}
    found = start_sandbox("pod/up.sh", env)
    yield {"LOGIN_PORT": found["RUNPOD_PORT"], "LOGIN_KEY": found["RUNPOD_SSH_KEY"]}
    stop_sandbox("pod/down.sh", env)


def test_the_same_backend_works_through_a_login_node_over_ssh(project, login_node, monkeypatch,
                                                              tmp_path):
    """A cluster reached only through its login node: `setup --offline` ships every wheel
    from here into a venv on the shared workdir (from the system python, which has neither
    hpcrun nor torch); backend auto picks the login node's scheduler; v3 and the plain
    example run on the compute node with that venv."""
    for key, value in login_node.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "cluster-home"
    monkeypatch.setenv("LOGIN_WORKDIR", str(home))
    monkeypatch.delenv("SLURM_CONF")  # only the login node knows the cluster
    (project / "configs" / "remotes.yaml").write_text(
        "remotes:\n  login:\n    host: 127.0.0.1\n    port: ${LOGIN_PORT}\n    user: root\n"
        "    identity_file: ${LOGIN_KEY}\n    workdir: ${LOGIN_WORKDIR}\n"
        "    base_python: /usr/bin/python3\n    torch: torch==2.13.0\n")
    setup = hpj(project, "setup", "--remote", "login", "--offline", timeout=1200)
    assert setup["action"] == "installed" and setup["offline"], setup
    assert setup["python"] == f"{home}/venv/bin/python" and setup["torch"].startswith("2.13")
    assert any(p.name.startswith("torch-") for p in (home / "setup" / "wheelhouse").iterdir())
    name = tiny(project, "remote")
    proc = hp(project, "--json", "submit", "--remote", "login", name)  # backend auto
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    job = data["jobs"][0]
    assert job["backend"] == "slurm" and data["setup"]["action"] == "up to date"
    assert job["info"]["remote_run_dir"].startswith(str(home))
    with_examples(project)
    example = hpj(project, "submit", "--remote", "login", "examples/pytorch/train.py", "--",
                  "--epochs", "1", "--samples", "512")["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"})
    assert view["state"] == "SUCCEEDED", hp(project, "logs", job["id"]).stdout[-3000:]
    assert "Final evaluation" in hp(project, "logs", job["id"]).stdout
    assert f"HPCRUN_PYTHON={home}/venv/bin/python" in data["plans"][0]["script"]
    fetched = hp(project, "fetch", job["id"])
    assert fetched.returncode == 0 and "verified" in fetched.stdout, fetched.stderr
    assert (Path(job["run_dir"]) / "train" / "training.csv").is_file()
    view = wait_job(project, example["id"], {"SUCCEEDED", "FAILED"})
    assert view["state"] == "SUCCEEDED", hp(project, "logs", example["id"]).stdout[-3000:]
    meta = json.loads(hp(project, "fetch", "--json", example["id"]).stdout or "{}")
    assert meta and (Path(example["run_dir"]) / "train" / "training.csv").is_file()
    bad = hp(project, "submit", "--backend", "slurm", "--remote", "login", name,
             "--set", "resources.partition=nosuch")
    assert bad.returncode == 2 and "Invalid partition" in bad.stderr


def test_status_after_a_job_left_the_queue_comes_from_real_sacct(project, slurm_env):
    """Runs last in this file: it restarts the sandbox with slurmdbd + MariaDB (and a short
    MinJobAge), then puts it back as it was."""
    up = [str(REPO / "hpc" / "slurm" / "up.sh")]
    proc = subprocess.run([*up, "--accounting"], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        assert subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode == 0
        name = tiny(project, "acct")
        job = submit(project, name)["jobs"][0]
        view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
        assert view["state"] == "SUCCEEDED"
        native = view["native"]["train"]
        deadline = time.monotonic() + 240
        while native in squeue_ids(all_states=True) and time.monotonic() < deadline:
            time.sleep(2)
        assert native not in squeue_ids(all_states=True), "the job never left the queue"
        view = hpj(project, "status", job["id"])[0]
        assert view["state"] == "SUCCEEDED" and view["status_from"] == "sacct"
    finally:
        subprocess.run(up, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- your own code


def with_examples(project: Path) -> Path:
    shutil.copytree(REPO / "examples", project / "examples")
    return project


@pytest.mark.parametrize("example", ["pytorch", "lightning"])
def test_the_examples_on_two_nodes(project, example):
    with_examples(project)
    data = submit(project, f"examples/{example}/train.py", "--set", "resources.nodes=2", "--",
                  "--epochs", "2", "--samples", "1024")
    job = data["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert view["state"] == "SUCCEEDED", hp(project, "logs").stdout[-3000:]
    run = Path(job["run_dir"])
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["backend"] == "slurm"
    out = hp(project, "logs").stdout
    assert "nnodes=2 node_rank=0" in out and "nnodes=2 node_rank=1" in out
    memory = (run / "train" / "gpu_memory.csv").read_text().splitlines()[1:]
    assert sorted({line.split(",")[1] for line in memory}) == ["0", "1"]
    once = hpj(project, "monitor", "--once", job["id"])
    assert once["epoch"] == 2 and once["flags"] == []
    fetched = hp(project, "fetch", job["id"])
    assert fetched.returncode == 0 and "verified against MANIFEST.sha256" in fetched.stdout
    assert (run / "system.csv").read_text().count("\n") > 1  # the nodes' samplers wrote rows


def test_usr1_makes_the_example_checkpoint_requeue_and_resume(project):
    with_examples(project)
    data = submit(project, "examples/pytorch/train.py", "--", "--epochs", "30",
                  "--samples", "2048")
    meta, log = preempted_once(project, data["jobs"][0])
    assert [r["state"] for r in meta["runs"]] == ["PREEMPTED", "SUCCEEDED"]
    assert meta["runs"][1]["resumed"] is True
    assert "resuming after epoch" in log


def test_a_1500_point_sweep_is_two_arrays_and_one_cancel_ends_it(project):
    """Over the cluster's MaxArraySize (1001 here) a sweep is queued as arrays whose task
    indices stay below it; one cancel of the whole sweep stops the running tasks, drops the
    waiting ones (SLURM forgets them) and the sweep reads CANCELLED."""
    (project / "scripts").mkdir()
    (project / "scripts" / "wait.py").write_text("import time\ntime.sleep(120)\n")
    values = ",".join(str(i) for i in range(1500))
    began = time.monotonic()
    data = submit(project, "scripts/wait.py", "--sweep", f"params.i={values}")
    submitted_s = time.monotonic() - began
    group = data["group"]
    arrays = [re.search(r"#SBATCH --array=(\S+)", p["script"]).group(1) for p in data["plans"]]
    assert arrays == ["0-749", "0-749"]  # 1,500 points spread evenly over two arrays
    assert wait_for_running(project, group["id"]), "no task started"
    began = time.monotonic()
    cancelled = hp(project, "--json", "cancel", group["id"], timeout=300)
    cancel_s = time.monotonic() - began
    assert cancelled.returncode == 0, cancelled.stderr
    [view] = json.loads(cancelled.stdout)
    assert view["state"] == "CANCELLED", view["reason"]
    assert {p["state"] for p in view["points"]} == {"CANCELLED"}, view["reason"]
    natives = {sid.partition("_")[0] for sid in group_natives(project, group["id"])}
    assert not natives & {i.partition("_")[0] for i in squeue_ids()}
    [again] = hpj(project, "status", group["id"])
    assert again["state"] == "CANCELLED"
    print(f"1500 points: submit {submitted_s:.1f} s, cancel {cancel_s:.1f} s")
    assert cancel_s < 120  # one scancel and one wait (KillWait 10 s here), not 1500 of them


def wait_for_running(project, group: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [view] = hpj(project, "status", group)
        if view["state"] == "RUNNING":
            return True
        time.sleep(1)
    return False


def group_natives(project, group: str) -> list[str]:
    [view] = hpj(project, "status", group)
    return [sid for point in view["points"] for sid in (point.get("native") or {}).values()]
