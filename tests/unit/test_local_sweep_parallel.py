"""``--parallel K`` on the local backend: the sweep's driver script (rendered by
``ops.submit --dry-run``) runs every point, never more than K at once. The driver runs for
real here; each point's job script is replaced by a stub that counts the points running."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpcrun import ops

#: a point: mark itself running, note how many are running, hold a moment, unmark itself
POINT = """#!/usr/bin/env bash
touch {board}/running.$$
ls {board} | grep -c '^running\\.' >> {board}/seen
sleep 0.25
rm {board}/running.$$
"""


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def run(points: int, parallel: int | None) -> list[int]:
        """How many points were running as each started (one line per point)."""
        values = ",".join(f"0.{i + 1}" for i in range(points))
        result = ops.submit("v3", backend="local", sweeps=[f"training.lr={values}"],
                            parallel=parallel, dry_run=True, project_dir=tmp_path)
        [driver] = [p for p in result.plans if p.kind == "driver"]
        board = tmp_path / f"board-{parallel}"
        board.mkdir()
        for plan in result.plans:
            if plan.kind != "driver":
                script = Path(plan.script_path)
                script.parent.mkdir(parents=True, exist_ok=True)
                script.write_text(POINT.format(board=board))
        Path(driver.script_path).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", driver.script], check=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        assert Path(driver.files["exit_file"]).read_text() == "0\n"
        return [int(line) for line in (board / "seen").read_text().split()]
    return run


def test_parallel_2_runs_every_point_two_at_a_time(sweep):
    seen = sweep(5, 2)
    assert len(seen) == 5  # every point ran
    assert max(seen) == 2  # two at once, never three


def test_parallel_1_runs_the_points_one_after_another(sweep):
    assert sweep(3, 1) == [1, 1, 1]


def test_without_parallel_a_local_sweep_runs_one_point_at_a_time(sweep):
    assert sweep(3, None) == [1, 1, 1]
