"""`make bench`: performance figures as ratios measured in one run (never timed assertions).

Trainer rows: epoch time with every diagnostic on vs off (gradient clipping on in both), and
training throughput with 1 vs 2 ranks. Each figure is the median over epochs 2..N of several
alternating runs, read from the runs' own training.csv.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from hpcrun import rundir  # noqa: E402

BENCH_CONFIG = """\
extends: v3
experiment: bench
data: {{rows: {rows}}}
training:
  epochs: {epochs}
  early_stopping: {{enabled: false}}
  checkpoint_every: 0
  logging: {{diagnostics: {diagnostics}}}
pipeline:
  - {{name: train, mode: train_only}}
"""


def run_once(workdir: Path, rows: int, epochs: int, diagnostics: bool, nproc: int) -> list[float]:
    cfg = workdir / f"bench-{diagnostics}-{nproc}.yaml"
    cfg.write_text(BENCH_CONFIG.format(rows=rows, epochs=epochs,
                                       diagnostics=str(diagnostics).lower()))
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    argv = [sys.executable, "-m", "hpcrun.train", "--config", str(cfg), "--run-dir",
            str(run_dir)]
    if nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", *argv[1:]]
    proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench run failed:\n{proc.stderr[-2000:]}")
    rows_ = rundir.read_rows(run_dir / "train" / rundir.TRAINING)
    return [float(r["Epoch Time"]) for r in rows_][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train_rows = int(args.rows * 0.7)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        on: list[float] = []
        off: list[float] = []
        for _ in range(args.repeats):  # alternate so drift hits both sides alike
            off += run_once(work, args.rows, args.epochs, False, 1)
            on += run_once(work, args.rows, args.epochs, True, 1)
        m_on, m_off = statistics.median(on), statistics.median(off)
        table.append(("epoch time, diagnostics on vs off (1 rank, CPU)",
                      f"{m_on * 1000:.1f} ms vs {m_off * 1000:.1f} ms",
                      f"{(m_on / m_off - 1) * 100:+.2f}% overhead"))
        one: list[float] = []
        two: list[float] = []
        for _ in range(max(1, args.repeats - 1)):
            one += run_once(work, args.rows, args.epochs, True, 1)
            two += run_once(work, args.rows, args.epochs, True, 2)
        s1, s2 = train_rows / statistics.median(one), train_rows / statistics.median(two)
        table.append(("training samples/s, 1 rank vs 2 ranks (gloo)",
                      f"{s1:,.0f} vs {s2:,.0f}", f"{s2 / s1:.2f}x"))
    width = max(len(r[0]) for r in table)
    print(f"{'benchmark':<{width}}  {'figures':<28}  ratio")
    for name, figures, ratio in table:
        print(f"{name:<{width}}  {figures:<28}  {ratio}")


if __name__ == "__main__":
    main()
