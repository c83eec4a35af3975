"""The healthy v3 run (a real 2-rank torchrun) raises no red flag (the flags themselves are
checked on planted run directories in tests/unit/test_diagnose.py)."""

from __future__ import annotations

import pytest

from hpcrun import rundir
from hpcrun.diagnose import diagnose


@pytest.mark.slow
def test_the_real_v3_run_raises_no_flag(v3_run):
    assert diagnose(v3_run) == []
    memory = rundir.read_rows(v3_run / "finetune" / rundir.GPU_MEMORY)
    assert all(float(r["host_total_mb"]) > float(r["host_rss_mb"]) > 0 for r in memory)
