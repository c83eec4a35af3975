"""Faults on the real SLURM sandbox (hpc/slurm/up.sh): a trainer killed with SIGKILL, a job that
reaches its time limit, the controller going away while jobs run, and 50 submits at once. Each
test prints what it measured (time to detect, epochs lost) for docs/reliability.md."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import REPO, SLURM_STATE, hp, hpj, wait_for, wait_job

pytestmark = pytest.mark.slow

#: far more than a minute of training, however fast the machine
EPOCHS_OVER_A_MINUTE = 100_000

LONG = """\
extends: v3
experiment: {name}
data: {{rows: 30000}}
training: {{epochs: {epochs}, early_stopping: {{enabled: false}}}}
resources: {{cpus_per_task: 1, time: "{time}"{extra}}}
pipeline:
  - {{name: train, mode: full_pipeline}}
"""


@pytest.fixture
def project(slurm_project):
    return slurm_project


def long_job(project: Path, name: str, epochs: int = 10, time_limit: str = "00:10:00",
             extra: str = "") -> str:
    (project / "configs" / f"{name}.yaml").write_text(
        LONG.format(name=name, epochs=epochs, time=time_limit, extra=extra))
    proc = hp(project, "--json", "submit", "--backend", "slurm", name)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["jobs"][0]


def wait_epoch(run: Path, epoch: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((run / "status.json").read_text()).get("epoch", 0) >= epoch:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{run} never reached epoch {epoch}")


def epochs_of(run: Path, stage: str = "train") -> list[int]:
    lines = (run / stage / "training.csv").read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


def resumed_from(run: Path) -> int:
    """The epoch the (latest) resumed run continued after, as the trainer logged it."""
    found = re.findall(r"stage train: resuming after epoch (\d+)",
                       (run / "logs" / "train.rank0.log").read_text())
    assert found, "the trainer never said it resumed"
    return int(found[-1])


def test_sigkill_fails_the_job_with_triage_and_resume_repeats_no_epoch(project):
    job = long_job(project, "killed")
    run = Path(job["run_dir"])
    wait_epoch(run, 3)
    host, pid = (run / "logs" / "rank0.pid").read_text().split()
    killed_at = time.monotonic()
    os.kill(int(pid), signal.SIGKILL)
    view = wait_job(project, job["id"], {"FAILED", "SUCCEEDED"}, timeout=120)
    detect = time.monotonic() - killed_at
    assert view["state"] == "FAILED", view
    assert "stage train failed" in view["reason"] and "exit code" in view["reason"]

    once = hpj(project, "monitor", "--once", job["id"])
    failed = [f for f in once["flags"] if f["code"] == "failed"]
    assert failed and "SIGKILL" in failed[0]["message"], once["flags"]
    shown = hp(project, "status", job["id"])
    assert shown.returncode == 1 and "FAILED" in shown.stdout
    assert "signal: SIGKILL" in shown.stdout and "last log lines:" in shown.stdout, shown.stdout
    triage = hpj(project, "status", job["id"])[0]["triage"]
    assert triage["signal"] == "SIGKILL" and triage["log_tail"], triage
    done_before = max(epochs_of(run))

    proc = hp(project, "--json", "submit", "--resume", job["id"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] in ("PENDING", "RUNNING")
    watched = hp(project, "monitor", job["id"], "--interval", "0.5", timeout=600)
    assert watched.returncode == 0, watched.stdout[-3000:] + hp(project, "logs").stdout[-3000:]
    epochs = epochs_of(run)
    assert epochs == list(range(1, 11)), epochs  # every epoch once, in order
    meta = json.loads((run / "metadata.json").read_text())
    assert len(meta["runs"]) == 2 and meta["runs"][1]["resumed"] is True
    resumed_after = resumed_from(run)
    # the checkpoint of the epoch in progress may not have been written: that epoch is redone
    assert resumed_after in (done_before - 1, done_before), (resumed_after, done_before)
    print(f"\nSIGKILL: FAILED detected in {detect:.1f} s; resumed after epoch {done_before}; "
          "epochs lost: the one in progress")


def test_a_time_limit_is_reported_as_timeout_and_the_job_resumes(project):
    # no early warning signal: the time limit itself ends the job (SIGTERM, then SIGKILL)
    job = long_job(project, "timed", epochs=EPOCHS_OVER_A_MINUTE, time_limit="00:01:00",
                   extra=", signal_grace_s: 0")
    started = time.monotonic()
    view = wait_job(project, job["id"], {"FAILED", "SUCCEEDED", "CANCELLED"}, timeout=240)
    ended = time.monotonic() - started
    assert view["state"] == "FAILED" and "timeout" in view["reason"].lower(), view
    flags = hpj(project, "monitor", "--once", job["id"])["flags"]
    assert any("time limit" in f["message"] for f in flags if f["code"] == "failed"), flags
    run = Path(job["run_dir"])
    before = epochs_of(run)
    assert before == list(range(1, len(before) + 1))
    assert json.loads((run / "status.json").read_text())["state"] == "PREEMPTED"  # TERM: saved

    proc = hp(project, "--json", "submit", "--resume", job["id"])
    assert proc.returncode == 0, proc.stderr
    wait_epoch(run, len(before) + 3)  # the resumed run continues where the checkpoint was
    assert hpj(project, "cancel", job["id"])[0]["state"] == "CANCELLED"
    after = epochs_of(run)
    assert after == list(range(1, len(after) + 1)) and len(after) >= len(before) + 3
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["runs"][-1]["resumed"] is True
    assert resumed_from(run) == len(before)  # TERM saved the last epoch: nothing redone
    print(f"\nTIMEOUT: reported {ended:.0f} s after submit (limit 60 s); {len(before)} epochs "
          f"kept, the resumed run went on from epoch {len(before) + 1} with no epoch twice")


def _slurmctld(sig: int) -> int:
    pid = int((SLURM_STATE / "run" / "slurmctld.pid").read_text())
    os.kill(pid, sig)
    return pid


def test_a_controller_restart_is_unreachable_not_failed_and_the_job_finishes(project):
    job = long_job(project, "ctld", epochs=30)
    run = Path(job["run_dir"])
    wait_epoch(run, 2)
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    accounting = ["--accounting"] if "accounting_storage/slurmdbd" in conf else []
    pid = _slurmctld(signal.SIGTERM)
    stopped_at = time.monotonic()
    try:
        assert wait_for(lambda: not psutil.pid_exists(pid), 60), "slurmctld did not stop"
        view = hpj(project, "status", job["id"])[0]
        detect = time.monotonic() - stopped_at
        assert view["state"] == "UNKNOWN", view  # not FAILED: nothing is known to have failed
        assert "cannot reach the SLURM controller" in view["reason"]
        once = hpj(project, "monitor", "--once", job["id"])
        assert once["job"]["state"] == "UNKNOWN" and not once["flags"]
    finally:  # the same mode as before, so that only slurmctld starts again
        subprocess.run([str(REPO / "hpc" / "slurm" / "up.sh"), *accounting],
                       capture_output=True, timeout=600, check=True)
    back = time.monotonic() - stopped_at
    watched = hp(project, "monitor", job["id"], "--interval", "0.5", timeout=600)
    assert watched.returncode == 0, watched.stdout[-3000:]
    assert epochs_of(run) == list(range(1, 31))
    print(f"\nslurmctld down {back:.0f} s: status said unreachable in {detect:.1f} s; the job "
          "finished with every epoch once")


def test_fifty_concurrent_submits_make_fifty_jobs_and_fifty_records(project):
    (project / "configs" / "tiny.yaml").write_text(LONG.format(
        name="tiny", epochs=1, time="00:10:00", extra="").replace("rows: 30000", "rows: 600"))
    began = time.monotonic()

    def one(_: int) -> subprocess.CompletedProcess[str]:
        return hp(project, "--json", "submit", "--backend", "slurm", "tiny", timeout=600)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    took = time.monotonic() - began
    assert [r.returncode for r in results] == [0] * 50, [r.stderr for r in results if
                                                       r.returncode][:3]
    jobs = [json.loads(r.stdout)["jobs"][0] for r in results]
    natives = {j["native_id"] for j in jobs}
    assert None not in natives and len(natives) == 50, natives
    assert len({j["id"] for j in jobs}) == 50 and len({j["run_dir"] for j in jobs}) == 50
    listed = hpj(project, "list", "--limit", "100")
    assert sorted(j["id"] for j in listed) == sorted(j["id"] for j in jobs)
    if "accounting_storage/slurmdbd" in Path(os.environ["SLURM_CONF"]).read_text():
        # finished jobs leave squeue within seconds there; accounting keeps them
        query = ["sacct", "-n", "-X", "-P", "-o", "JobID", "-j", ",".join(natives)]
    else:
        query = ["squeue", "-h", "-t", "all", "-o", "%i"]
    queued = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout.split()
    assert natives <= set(queued), natives - set(queued)  # 50 jobs SLURM knows
    store = Path(os.environ["XDG_STATE_HOME"]) / "hpcrun" / "jobs.sqlite"
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (50,)
    ids = [i for n in natives for i in n.split(",")]
    subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
    print(f"\n50 concurrent submits: {took:.1f} s, 50 jobs, 50 records, store intact")
