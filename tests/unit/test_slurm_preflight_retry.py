"""The ``sbatch --test-only`` preflight: a controller that does not answer is asked again after
1, 2 and 4 s, then named ("cannot reach the SLURM controller"); a refusal is reported at once.
sbatch answered in memory, the waits recorded instead of slept."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from hpcrun.backends import slurm as slurm_backend
from hpcrun.backends.slurm import SlurmBackend
from hpcrun.errors import BadInput, OperationFailed
from hpcrun.render import SubmitPlan
from hpcrun.shell import CommandFailed, Result

BUSY = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
REFUSED = "sbatch: error: Batch job submission failed: Invalid partition name specified"
SCRIPT = "#!/bin/bash\n#SBATCH --job-name=exp-all\necho hi\n"


class Sbatch:
    """``sbatch --test-only`` fails with ``errors`` in turn, then accepts."""

    def __init__(self, *errors: str):
        self.errors = list(errors)
        self.calls: list[tuple[list[str], str | None]] = []

    def run(self, argv, *, input=None, check=True, **kwargs):
        self.calls.append((list(argv), input))
        if self.errors:
            raise CommandFailed(argv, 1, self.errors.pop(0))
        return Result(tuple(argv), 0, "sbatch: Job 9 to start at now\n", "")


@pytest.fixture
def waits(monkeypatch):
    seen: list[float] = []
    monkeypatch.setattr(slurm_backend, "time", SimpleNamespace(
        sleep=seen.append, monotonic=time.monotonic, time=time.time))
    return seen


def _plans() -> list[SubmitPlan]:
    return [SubmitPlan(job_id="c" * 12, script=SCRIPT, script_path="/runs/exp/r/job-all.sbatch",
                       argv=("sbatch", "--parsable", "--output=/runs/exp/r/logs/slurm-%j.out",
                             "--chdir=/runs/exp/r", "--dependency=afterok:{train}",
                             "/runs/exp/r/job-all.sbatch"),
                       files={}, stage="all")]


def test_a_silent_controller_is_asked_after_1_2_and_4_s_then_named(waits):
    sbatch = Sbatch(*[BUSY] * 10)
    with pytest.raises(OperationFailed) as error:
        SlurmBackend(runner=sbatch).preflight(_plans())
    assert not isinstance(error.value, BadInput)  # not the job's fault
    assert waits == [1, 2, 4]
    assert len(sbatch.calls) == 4
    assert error.value.message.startswith("cannot reach the SLURM controller: ")
    assert "Socket timed out" in error.value.message


def test_a_controller_that_answers_on_a_retry_lets_the_preflight_pass(waits):
    sbatch = Sbatch(BUSY, "")  # no message at all counts as no answer too
    SlurmBackend(runner=sbatch).preflight(_plans())
    assert waits == [1, 2] and len(sbatch.calls) == 3


def test_a_refusal_is_not_retried(waits):
    sbatch = Sbatch(REFUSED, *[BUSY] * 5)
    with pytest.raises(BadInput) as error:
        SlurmBackend(runner=sbatch).preflight(_plans())
    assert waits == [] and len(sbatch.calls) == 1
    assert error.value.message.startswith("slurm refused partition")


def test_the_preflight_tests_the_script_without_queueing_it(waits):
    sbatch = Sbatch()
    SlurmBackend(runner=sbatch).preflight(_plans())
    [(argv, given)] = sbatch.calls
    # the script goes on stdin; no --parsable, no dependency on a stage not queued yet
    assert argv == ["sbatch", "--test-only", "--output=/runs/exp/r/logs/slurm-%j.out",
                    "--chdir=/runs/exp/r"]
    assert given == SCRIPT
