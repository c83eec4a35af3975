"""A failed job's triage: the signal that killed a process, and the log lines worth showing."""

from __future__ import annotations

from hpcrun.ops.jobs import _signal_of, _trainer_lines

TORCHRUN_END = """\
hpcrun launcher: host=n1 nnodes=1 node_rank=0 nproc=2 rdzv=standalone
2026 INFO [rank 0] epoch 3/10 train loss 0.41
W1201 torch/distributed/elastic/multiprocessing/api.py] Sending process 812 closing signal SIGTERM
E1201 elastic/multiprocessing/api.py] failed (exitcode: -9) local_rank: 1 (pid: 813)
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
hpcrun.train FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 813)
  traceback : Signal 9 (SIGKILL) received by PID 813
============================================================
"""


def test_the_signal_is_read_from_torchruns_summary_or_the_exit_code():
    assert _signal_of(TORCHRUN_END, 1) == "SIGKILL"
    assert _signal_of("exitcode  : -15 (pid: 9)\n", 1) == "SIGTERM"
    assert _signal_of("nothing here", 137) == "SIGKILL"  # a shell's 128 + 9
    assert _signal_of("nothing here", 1) is None
    assert _signal_of("nothing here", None) is None


def test_the_log_tail_stops_before_torchruns_own_traceback():
    lines = _trainer_lines(TORCHRUN_END.splitlines())
    assert lines[-1].startswith("E1201") and "exitcode: -9" in lines[-1]
    assert not any("ChildFailedError" in line or line.startswith("Traceback") for line in lines)
    plain = ["a", "Traceback (most recent call last):", "ValueError: x"]
    assert _trainer_lines(plain) == plain  # a trainer's own traceback is kept
