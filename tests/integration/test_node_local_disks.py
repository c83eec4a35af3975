"""A two-node job whose run directory lives on each node's own disk.

Two torchrun agents on this host stand for two nodes; the second runs in its own mount
namespace where the runs folder is another, empty folder (its node-local disk). Only rank 0
writes checkpoints, so after a preemption rank 1 finds no last.pt, and later stages find no
best.pt of the stage before on its disk: every rank must still continue from rank 0's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import free_port, read_status, trainer_env, wait_for, write_config

from hpcrun import rundir

pytestmark = pytest.mark.slow

CONFIG = """\
extends: v3
experiment: local
data: {rows: 20000}
training:
  early_stopping: {enabled: false}
  checkpoint_every: 0
pipeline:
  - name: pretrain
    mode: train_only
    overrides:
      training:
        epochs: 3
        loss: {components: {reconstruction: 1.0, classification: 0.0}}
  - {name: finetune, mode: train_only, init_from: pretrain, overrides: {training: {epochs: 2}}}
  - {name: eval, mode: eval_only, init_from: finetune, eval_splits: [val, test]}
"""


def _can_unshare() -> str | None:
    probe = subprocess.run(["unshare", "--mount", "--", "mount", "--bind", "/tmp", "/mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else probe.stderr.strip() or "unshare failed"


@pytest.fixture(scope="module")
def namespaces() -> None:
    why = _can_unshare()
    if why:
        message = f"needs mount namespaces (unshare --mount as root): {why}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def start_nodes(cwd: Path, disk1: Path, *args: str) -> list[subprocess.Popen]:
    """torchrun for node 0 (this host's folders) and node 1 (``disk1`` over ``cwd/runs``)."""
    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}"]
    procs = []
    for node in (0, 1):
        argv = [*launcher, f"--node_rank={node}", "-m", "hpcrun.train", *args]
        if node == 1:
            argv = ["unshare", "--mount", "--", "sh", "-c",
                    'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
                    str(disk1), str(cwd / "runs"), *argv]
        log = open(cwd / f"node{node}.log", "a")  # noqa: SIM115
        procs.append(subprocess.Popen(argv, cwd=cwd, env=trainer_env(), stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Exit codes; a node still running after ``timeout`` (a rank waiting in a collective the
    other never entered) is killed and reported as None."""
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            codes.append(None)
    return codes


def test_ranks_on_node_local_disks_resume_and_chain_stages_from_rank_0s_checkpoints(
        tmp_path, namespaces):
    cfg = write_config(tmp_path / "local.yaml", CONFIG)
    (tmp_path / "runs").mkdir()
    disk1 = tmp_path / "node1-disk"
    disk1.mkdir()
    run = tmp_path / "runs" / "local" / "r1"
    args = ("--config", str(cfg), "--run-dir", str(run))

    nodes = start_nodes(tmp_path, disk1, *args)
    assert wait_for(lambda: read_status(run).get("epoch", 0) >= 1 or nodes[0].poll() is not None,
                    180), "no epoch finished"
    rank0 = [p for p in psutil.Process(nodes[0].pid).children(recursive=True)
             if "hpcrun.train" in " ".join(p.cmdline())]
    assert len(rank0) == 1
    rank0[0].send_signal(signal.SIGUSR1)
    codes = finish(nodes, 120)
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert None not in codes, logs  # torchrun ends with 1 when its rank ended with 75
    assert all("exitcode  : 75" in log for log in logs), logs
    stopped = read_status(run)
    assert stopped["state"] == "PREEMPTED"
    assert not (disk1 / "local" / "r1" / "pretrain" / "checkpoints").exists()  # only rank 0 saves

    nodes = start_nodes(tmp_path, disk1, *args)
    codes = finish(nodes, 300)
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    status = read_status(run)
    assert status["state"] == "SUCCEEDED"
    assert status["stages"] == {
        "pretrain": "SUCCEEDED", "finetune": "SUCCEEDED", "eval": "SUCCEEDED"}
    for stage, epochs in (("pretrain", 3), ("finetune", 2)):
        rows = (run / stage / rundir.TRAINING).read_text().splitlines()[1:]
        assert [row.split(",")[0] for row in rows] == [str(e) for e in range(1, epochs + 1)]
    evaluation = (run / "eval" / rundir.EVALUATION).read_text()
    assert "val" in evaluation and "test" in evaluation
    # rank 1 saw none of rank 0's checkpoints on its own disk and said so
    rank1 = (disk1 / "local" / "r1" / rundir.rank_log(1)).read_text()
    assert "continuing from rank 0's" in rank1, rank1[-3000:]
