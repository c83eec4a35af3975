"""Which checkpoint the ranks of a job continue from when they do not see the same files.

Only rank 0 writes checkpoints. With run directories on node-local disks another rank finds
no file, an older one left on its node, or a broken copy; every rank must still continue from
rank 0's (``checkpoint.load_agreed``). Two real processes joined by gloo, each with its own
folder standing for its node's disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcrun.track import checkpoint

WORKER = r"""
import json, sys
from pathlib import Path
import torch.distributed as dist
from hpcrun.track import checkpoint
from hpcrun.track.distributed import current

rank, rendezvous, cases, out = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
ctx = current()
answers = {}
for name, disks in cases.items():  # one scenario after another in one process group
    state = checkpoint.load_agreed(ctx, *(Path(p) for p in disks[rank]))
    answers[name] = None
    if state is not None:
        answers[name] = {"epoch": state["epoch"], "id": state["id"],
                         "weight": float(state["model"]["w"].sum()),
                         "device": str(state["model"]["w"].device)}
Path(out).write_text(json.dumps(answers))
dist.destroy_process_group()
"""


def save(path: Path, epoch: int) -> str:
    """A checkpoint of ``epoch`` at ``path`` whose weight sums to ``epoch``; returns its id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save({"epoch": epoch, "model": {"w": torch.full((4,), epoch / 4)}}, path)
    return torch.load(path, weights_only=True)["id"]


def node(root: Path, case: str, rank: int) -> Path:
    """The checkpoint folder of one run directory as rank ``rank``'s node sees it."""
    return root / case / f"node{rank}" / "run" / "train" / "checkpoints"


def _plant(root: Path) -> dict[str, str]:
    """Every scenario's files; returns the ids of rank 0's checkpoints by scenario."""
    ids = {"missing": save(node(root, "missing", 0) / "last.pt", 3)}
    save(node(root, "older", 1) / "last.pt", 1)  # left on rank 1's node by an earlier job
    ids["older"] = save(node(root, "older", 0) / "last.pt", 5)
    ids["unreadable"] = save(node(root, "unreadable", 0) / "last.pt", 2)
    node(root, "unreadable", 1).mkdir(parents=True)
    (node(root, "unreadable", 1) / "last.pt").write_bytes(b"cut short")
    save(node(root, "only_elsewhere", 1) / "last.pt", 4)  # only another node has one
    save(node(root, "choice", 1) / "best.pt", 1)  # an older best.pt on rank 1's node
    ids["choice"] = save(node(root, "choice", 0) / "last.pt", 6)
    ids["shared"] = save(node(root, "shared", 0) / "last.pt", 2)
    return ids


@pytest.fixture(scope="module")
def agreed(tmp_path_factory) -> tuple[dict[str, list], dict[str, str]]:
    """What each of two ranks continues from in each scenario, and rank 0's ids."""
    root = tmp_path_factory.mktemp("agreement")
    ids = _plant(root)
    last = {case: [[str(node(root, case, r) / "last.pt")] for r in range(2)]
            for case in ("missing", "older", "unreadable", "only_elsewhere")}
    both = {"choice": [[str(node(root, "choice", r) / name) for name in ("best.pt", "last.pt")]
                       for r in range(2)],
            "shared": [[str(node(root, "shared", 0) / "last.pt")]] * 2}
    script = root / "worker.py"
    script.write_text(WORKER)
    outs = [root / f"rank{r}.json" for r in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(root / "rendezvous"),
                               json.dumps(last | both), str(outs[r])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                   "PYTHONPATH": ":".join(sys.path)})
             for r in range(2)]
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    answers = [json.loads(o.read_text()) for o in outs]
    return {case: [answers[0][case], answers[1][case]] for case in answers[0]}, ids


def test_a_rank_without_the_file_continues_from_rank_0s(agreed):
    got, ids = agreed
    assert got["missing"][0] == got["missing"][1] == {
        "epoch": 3, "id": ids["missing"], "weight": 3.0, "device": "cpu"}


def test_a_rank_with_an_older_copy_continues_from_rank_0s(agreed):
    got, ids = agreed
    assert got["older"][0] == got["older"][1]
    assert (got["older"][1]["epoch"], got["older"][1]["id"]) == (5, ids["older"])
    assert got["older"][1]["weight"] == 5.0


def test_a_rank_with_an_unreadable_copy_continues_from_rank_0s(agreed):
    got, ids = agreed
    assert got["unreadable"][0] == got["unreadable"][1]
    assert got["unreadable"][1]["id"] == ids["unreadable"]


def test_when_rank_0_has_none_every_rank_starts_afresh(agreed):
    got, _ = agreed
    assert got["only_elsewhere"] == [None, None]


def test_rank_0_chooses_which_file_and_the_others_follow(agreed):
    """best.pt where rank 0 has it, else last.pt: a rank with an older best.pt of its own
    still takes the file rank 0 chose."""
    got, ids = agreed
    assert got["choice"][0] == got["choice"][1]
    assert got["choice"][1]["id"] == ids["choice"]  # rank 0's last.pt


def test_ranks_that_share_a_disk_read_the_same_file(agreed):
    got, ids = agreed
    assert got["shared"][0] == got["shared"][1] and got["shared"][0]["id"] == ids["shared"]


def test_a_checkpoint_loads_onto_the_cpu_with_rng_states_that_can_be_restored(tmp_path):
    """Whatever device saved it: load_state_dict moves weights where the model lives, and a
    generator's state must be a CPU byte tensor (a CUDA-mapped one cannot be restored)."""
    save(tmp_path / "last.pt", 1)
    state = checkpoint.load(tmp_path / "last.pt")
    assert state["model"]["w"].device.type == "cpu"
    rng = checkpoint.rng_state()
    expected = torch.rand(3)
    checkpoint.set_rng_state(rng)
    assert torch.equal(torch.rand(3), expected)


def test_every_save_has_its_own_id(tmp_path):
    assert save(tmp_path / "a.pt", 1) != save(tmp_path / "a.pt", 1)
