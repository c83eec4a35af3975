"""The pod backend against a real sshd on loopback (hpc/pod/up.sh): it IS the `runpod` remote.
In CI a pod that cannot start is a failure, not a skip."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import HPCRUN, REPO, PodSandbox, hp, hpj, sandbox_project, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path, monkeypatch, pod_env):
    workdir = tmp_path / "pod-workspace"  # every test syncs into its own directory
    return sandbox_project(tmp_path, monkeypatch, {**pod_env, "RUNPOD_WORKDIR": str(workdir)})


def test_sync_submit_monitor_fetch_round_trip_of_v3(project):
    (project / "train_helpers.py").write_text("VALUE = 1\n")
    (project / ".env").write_text("API_TOKEN=very-secret\n")
    (project / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    synced = hpj(project, "sync", "--remote", "runpod")
    assert sorted(synced["held_back"]) == [".env", "id_rsa"]
    code = Path(synced["remote_code"])
    assert (code / "train_helpers.py").is_file()
    assert not (code / ".env").exists() and not (code / "id_rsa").exists()
    manifest = (code / "BUNDLE.sha256").read_text()
    assert "train_helpers.py" in manifest and ".env" not in manifest
    assert json.loads((code / "bundle.json").read_text())["hash"] == synced["hash"]

    proc = hp(project, "--json", "submit", "--backend", "pod", "--remote", "runpod", "v3")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    assert hp(project, "monitor", "--once", job["id"]).returncode == 0
    watched = hp(project, "--json", "monitor", job["id"], "--interval", "0.5", timeout=600)
    assert watched.returncode == 0, hp(project, "logs").stdout[-3000:]
    snaps = [json.loads(line) for line in watched.stdout.splitlines()]
    assert snaps[-1]["job"]["state"] == "SUCCEEDED" and snaps[-1]["flags"] == []
    assert snaps[-1]["summary"]["final_evaluation"]
    # the monitor copied only the watched files, as they grew: no predictions, no checkpoints
    local = Path(job["run_dir"])
    assert (local / "eval" / "evaluation.csv").is_file()
    assert not (local / "eval" / "predictions.csv").exists()
    assert not (local / "finetune" / "checkpoints").exists()

    fetched = hp(project, "fetch", job["id"])
    assert fetched.returncode == 0, fetched.stderr
    assert "verified against MANIFEST.sha256" in fetched.stdout
    assert (local / "eval" / "predictions.csv").is_file()
    assert "Final evaluation" in hp(project, "logs", job["id"]).stdout


def test_unchanged_resync_sends_under_one_percent_of_the_first(project):
    data = project / "data"
    data.mkdir()
    for i in range(300):
        (data / f"part{i:03d}.bin").write_bytes(os.urandom(8192))
    first = hpj(project, "sync", "--remote", "runpod")
    again = hpj(project, "sync", "--remote", "runpod")
    assert first["bytes_sent"] > 2_000_000
    assert again["bytes_sent"] < 0.01 * first["bytes_sent"], (first["bytes_sent"],
                                                              again["bytes_sent"])
    assert again["files_transferred"] == 0
    dry = hpj(project, "sync", "--remote", "runpod", "--dry-run")
    assert dry["changed"] == []
    (data / "part000.bin").write_bytes(b"changed")
    dry = hpj(project, "sync", "--remote", "runpod", "--dry-run")
    assert any("part000.bin" in line for line in dry["changed"])


def finished_tiny_job(project: Path) -> dict:
    """A one-epoch pod job, once it has succeeded."""
    (project / "configs" / "tiny.yaml").write_text(
        "extends: v3\nexperiment: tiny\ndata: {rows: 600}\ntraining: {epochs: 1}\n"
        "resources: {cpus_per_task: 1}\npipeline: [{name: train, mode: full_pipeline}]\n")
    proc = hp(project, "--json", "submit", "--backend", "pod", "--remote", "runpod", "tiny")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    assert wait_job(project, job["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    return job


def test_a_corrupted_local_artifact_is_detected(project):
    job = finished_tiny_job(project)
    assert hp(project, "fetch", job["id"]).returncode == 0
    target = Path(job["run_dir"]) / "train" / "training.csv"
    stat = target.stat()
    text = target.read_text()
    target.write_text(text.replace("1,", "9,", 1))  # same size, same mtime: rsync skips it
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = hp(project, "fetch", job["id"])
    assert again.returncode == 1
    assert "train/training.csv: checksum mismatch" in again.stderr


def running_long_job(project: Path, epochs: int) -> dict:
    """A pod job of ``epochs`` epochs, once it runs."""
    (project / "configs" / "long.yaml").write_text(
        "extends: v3\nexperiment: long\ndata: {rows: 20000}\n"
        f"training: {{epochs: {epochs}, early_stopping: {{enabled: false}}}}\n"
        "resources: {cpus_per_task: 1}\npipeline: [{name: train, mode: full_pipeline}]\n")
    proc = hp(project, "--json", "submit", "--backend", "pod", "--remote", "runpod", "long")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    wait_job(project, job["id"], {"RUNNING"})
    return job


def _connections() -> list[psutil.Process]:
    """This test's ssh processes (clients and the master, which renames itself
    ``ssh: SOCKET [mux]``): those naming a socket in its own control folder. Other tests' and
    users' connections on this machine are never touched."""
    from hpcrun.shell import default_control_dir
    from hpcrun.store import state_dir

    folder = str(default_control_dir(state_dir()))
    return [p for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "ssh" and folder in " ".join(p.info["cmdline"] or [])]


def _cut(connections: list[psutil.Process]) -> None:
    for ssh in connections:
        with contextlib.suppress(psutil.Error):
            ssh.kill()
    _, alive = psutil.wait_procs(connections, timeout=10)
    running = []
    for ssh in alive:  # a zombie is gone: its parent (hpcrun) has yet to reap it
        with contextlib.suppress(psutil.Error):
            if ssh.status() != psutil.STATUS_ZOMBIE:
                running.append(ssh)
    assert not running, running


def test_the_job_survives_every_ssh_connection_closing(project):
    job = running_long_job(project, 200)
    before = _connections()
    assert any("[mux]" in " ".join(p.info["cmdline"] or []) for p in before), before
    _cut(before)  # every client connection and the master to the pod: gone
    assert hpj(project, "status", job["id"])[0]["state"] == "RUNNING"
    again = _connections()  # the status reached the pod over a new master
    assert again and not {p.pid for p in again} & {p.pid for p in before}
    assert hpj(project, "cancel", job["id"])[0]["state"] == "CANCELLED"


@pytest.mark.parametrize("setting, needle", [
    ({"RUNPOD_PORT": "1"}, "cannot reach"),
    ({"RUNPOD_SSH_KEY": "/nonexistent/key"}, "refused the key"),
])
def test_unreachable_or_refused_fails_fast_in_one_line(project, monkeypatch, setting, needle):
    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    began = time.monotonic()
    proc = hp(project, "sync", "--remote", "runpod")
    assert time.monotonic() - began < 15  # the connect timeout is 10 s
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_a_changed_host_key_is_refused_with_a_hint(project, tmp_path):
    known = tmp_path / "state" / "hpcrun" / "known_hosts"
    known.parent.mkdir(parents=True)
    fake = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                           str(tmp_path / "fake")], capture_output=True)
    assert fake.returncode == 0
    port = os.environ["RUNPOD_PORT"]
    known.write_text(f"[127.0.0.1]:{port} {(tmp_path / 'fake.pub').read_text()}")
    proc = hp(project, "sync", "--remote", "runpod")
    assert proc.returncode == 1
    assert "host key" in proc.stderr and "ssh-keygen -R" in proc.stderr


def test_a_fetch_killed_mid_transfer_completes_on_rerun(project, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the big file: rsync keeps the part it has (exit 130), and the
    rerun sends only the rest (rsync's own log of the bytes it received says so)."""
    job = finished_tiny_job(project)
    # a large artifact on the pod, covered by the manifest like any other
    remote = Path(job["info"]["remote_run_dir"])
    _big_file(remote / "train" / "big.bin")
    subprocess.run([sys.executable, "-c", "import sys; from hpcrun import rundir; "
                    "rundir.write_manifest(sys.argv[1])", str(remote)], check=True)
    log = tmp_path / "rsync.log"  # every rsync hpcrun runs logs what it received
    wrapper = tmp_path / "bin" / "rsync"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("rsync")} --log-file={log} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    fetch = subprocess.Popen([HPCRUN, "fetch", job["id"]], cwd=project, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    local = Path(job["run_dir"]) / "train"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and fetch.poll() is None \
            and not any(p.stat().st_size > 8 << 20 for p in local.glob(".big.bin.*")):
        time.sleep(0.02)
    held = psutil.Process(fetch.pid).children(recursive=True)
    for child in held:  # hold the copy where it is: a loopback copy could finish first
        with contextlib.suppress(psutil.Error):
            child.suspend()
    assert fetch.poll() is None, "the transfer ended before it could be interrupted"
    os.killpg(fetch.pid, signal.SIGINT)  # Ctrl-C mid-transfer: rsync keeps what it has
    for child in held:
        with contextlib.suppress(psutil.Error):
            child.resume()
    fetch.wait(timeout=60)
    assert fetch.returncode == 130, fetch.stderr.read()
    kept = (local / "big.bin").stat().st_size
    assert 8 << 20 <= kept < 192 << 20  # a real part of the file, not all of it
    log.write_text("")
    again = hp(project, "fetch", job["id"])
    assert again.returncode == 0, again.stderr
    assert "verified against MANIFEST.sha256" in again.stdout
    assert (local / "big.bin").stat().st_size == 192 << 20
    received = [int(n.replace(",", "")) for n in
                re.findall(r"received ([\d,]+) bytes", log.read_text())]
    assert received and sum(received) < (192 << 20) - kept // 2, (received, kept)


def _big_file(path: Path) -> None:
    with open(path, "wb") as handle:
        for _ in range(48):
            handle.write(os.urandom(1 << 22))  # 192 MiB that rsync cannot compress


def _cut_mid_transfer(argv: list[str], cwd: Path, partial_glob: tuple[Path, str],
                      pod: PodSandbox) -> tuple:
    """Run ``hpcrun ARGV`` and stop the pod's sshd once rsync has begun writing the big
    file; returns (exit code, stderr lines, seconds from the cut to the exit)."""
    proc = subprocess.Popen([HPCRUN, *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder, pattern = partial_glob
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(folder.glob(pattern)):
        time.sleep(0.02)
    # hold the transfer where it is (a loopback copy could finish before the cut lands),
    # cut the pod off, then let it go on: it finds the connection gone mid-file
    held = psutil.Process(proc.pid).children(recursive=True)
    for child in held:
        with contextlib.suppress(psutil.Error):
            child.suspend()
    assert proc.poll() is None, f"the transfer ended before it could be cut: {proc.stderr.read()}"
    _cut_the_pod_off(pod)
    for child in held:
        with contextlib.suppress(psutil.Error):
            child.resume()
    cut_at = time.monotonic()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, [line for line in err.splitlines() if line.strip()], \
        time.monotonic() - cut_at


def test_sshd_stopping_mid_fetch_and_mid_sync_then_a_rerun_completes_and_verifies(project,
                                                                                   pod_sandbox):
    job = finished_tiny_job(project)
    remote = Path(job["info"]["remote_run_dir"])
    _big_file(remote / "train" / "big.bin")
    subprocess.run([sys.executable, "-c", "import sys; from hpcrun import rundir; "
                    "rundir.write_manifest(sys.argv[1])", str(remote)], check=True)
    local = Path(job["run_dir"]) / "train"
    try:
        code, err, fetch_s = _cut_mid_transfer(["fetch", job["id"]], project,
                                               (local, ".big.bin.*"), pod_sandbox)
    finally:
        pod_sandbox.up()
    assert code == 1 and len(err) == 1 and err[0].startswith("hpcrun: error:"), err
    again = hp(project, "fetch", job["id"])
    assert again.returncode == 0, again.stderr
    assert "verified against MANIFEST.sha256" in again.stdout
    assert (local / "big.bin").stat().st_size == 192 << 20

    _big_file(project / "data.bin")
    there = Path(os.environ["RUNPOD_WORKDIR"]) / "code"
    try:
        code, err, sync_s = _cut_mid_transfer(["sync", "--remote", "runpod"], project,
                                              (there, ".data.bin.*"), pod_sandbox)
    finally:
        pod_sandbox.up()
    assert code == 1 and len(err) == 1 and err[0].startswith("hpcrun: error:"), err
    assert not (there.parent / "bundles").exists() or not any(
        (there.parent / "bundles").glob("*/data.bin"))  # nothing half-synced was frozen
    synced = hpj(project, "sync", "--remote", "runpod")
    assert synced["verified"] >= 1 and Path(synced["remote_bundle"], "data.bin").stat(
    ).st_size == 192 << 20
    print(f"\nsshd stopped mid-fetch: failed in {fetch_s:.1f} s, mid-sync: {sync_s:.1f} s; "
          "each rerun completed and verified")


def test_a_monitor_refresh_is_one_round_trip_carrying_only_new_bytes(project, tmp_path):
    from hpcrun import rundir
    from hpcrun.backends.files import RemoteFiles
    from hpcrun.config import load_remote
    from hpcrun.job import JobRecord
    from hpcrun.shell import SshRunner

    remote = load_remote("runpod", project)
    files = RemoteFiles(SshRunner(remote), remote.workdir, remote.python, "runpod")
    record = JobRecord(id="x", backend="pod", host="pod", experiment="e",
                       run_dir=str(tmp_path / "local" / "e" / "r1"), project_dir=str(project))
    there = Path(files.run_dir(record))
    (there / "train").mkdir(parents=True)
    rundir.write_json(there / rundir.STATUS, {"state": "RUNNING", "epoch": 1})
    log = rundir.CsvLog(there / "train" / rundir.TRAINING, ["Epoch", "Val Loss"])
    for epoch in range(1, 1001):
        log.write([epoch, 1 / epoch])
    log.sync()

    calls: list[int] = []
    run = files.ssh.run

    def counted(argv, **kwargs):
        result = run(argv, **kwargs)
        calls.append(len(result.stdout))
        return result

    files.ssh.run = counted  # type: ignore[method-assign]
    known: dict = {}
    files.catch_up(record, known)
    first = calls[-1]
    log.write([1001, 0.001])
    log.sync()
    files.catch_up(record, known)
    assert len(calls) == 2  # one round trip per refresh, for every watched file
    assert calls[-1] < 300 < first / 20  # the new row, not the file again
    rows = rundir.read_rows(Path(record.run_dir) / "train" / rundir.TRAINING)
    assert len(rows) == 1001 and rows[-1]["Epoch"] == "1001"
    log.close()
    files.close()


def _cut_the_pod_off(pod: PodSandbox) -> None:
    """The pod's sshd stops listening and every live ssh connection to it drops: its
    sessions end (as when the network goes), and so do this test's shared connections."""
    listener = psutil.Process(int(pod.pidfile.read_text()))
    sessions = listener.children(recursive=True)
    pod.down()
    for process in sessions:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _cut(_connections())


def _first_output(proc: subprocess.Popen, timeout: float) -> str:
    """What ``proc`` printed up to its first newline, read from the pipe itself (so that
    ``communicate`` gets the rest)."""
    fd, seen = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while b"\n" not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        assert chunk, f"no line from {proc.args} in {timeout} s"
        seen += chunk
    return seen.decode(errors="replace")  # a read may end inside a sparkline character


def test_sshd_stopping_during_monitor_sync_and_fetch_is_retried_or_rerun(project, pod_sandbox):
    job = running_long_job(project, 40)
    watch = subprocess.Popen([HPCRUN, "monitor", job["id"], "--interval", "0.5"], cwd=project,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = _first_output(watch, 120)  # the monitor has followed the job once
        _cut_the_pod_off(pod_sandbox)
        lost_at = time.monotonic()
        time.sleep(8)
        pod_sandbox.up()
        back_at = time.monotonic()
        out, err = watch.communicate(timeout=300)
        out = first + out
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, out[-3000:] + err[-3000:]
    assert "connection lost, retrying" in out and "cannot reach" in out, out[-3000:]
    assert "SUCCEEDED" in out and "Traceback" not in out + err
    print(f"\nsshd down {back_at - lost_at:.0f} s during monitor: retried, then followed the "
          "job to SUCCEEDED")

    _cut_the_pod_off(pod_sandbox)
    try:
        for argv in (["fetch", job["id"]], ["sync", "--remote", "runpod"]):
            failed = hp(project, *argv)
            lines = [line for line in failed.stderr.splitlines() if line.strip()]
            assert failed.returncode == 1 and len(lines) == 1, failed.stderr
            assert "cannot reach" in lines[0]
    finally:
        pod_sandbox.up()
    fetched = hp(project, "fetch", job["id"])
    assert fetched.returncode == 0 and "verified against MANIFEST.sha256" in fetched.stdout
    assert hp(project, "sync", "--remote", "runpod").returncode == 0


def test_the_pytorch_example_runs_on_the_pod(project):
    shutil.copytree(REPO / "examples", project / "examples")
    proc = hp(project, "--json", "submit", "--backend", "pod", "--remote", "runpod",
              "examples/pytorch/train.py", "--set", "distributed.nproc_per_node=2", "--",
              "--epochs", "2", "--samples", "1024")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    view = wait_job(project, job["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert view["state"] == "SUCCEEDED", hp(project, "logs", job["id"]).stdout[-3000:]
    once = hpj(project, "monitor", "--once", job["id"])
    assert once["epoch"] == 2 and "accuracy" in once["series"]
    fetched = hp(project, "fetch", job["id"])
    assert fetched.returncode == 0, fetched.stderr
    assert "verified against MANIFEST.sha256" in fetched.stdout
    local = Path(job["run_dir"])
    assert json.loads((local / "metadata.json").read_text())["world_size"] == 2
    assert (local / "train" / "evaluation.csv").is_file() and (local / "system.csv").is_file()
