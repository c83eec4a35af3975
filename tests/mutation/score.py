"""Per-module mutation score from the results `mutmut run` leaves in ./mutants.

Run after `mutmut run` (``make mutation`` does both). A mutant counts as killed when a test
failed or timed out on it; "no tests" means no selected test reaches the mutated function.

    python tests/mutation/score.py [--survivors]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["selection", "diagnose", "rundir", "config"]
KILLED = {1, 3, 36, 24, -24, 152, 255}
STATUS = {0: "survived", None: "not checked", 5: "no tests", 33: "no tests", 34: "skipped",
          37: "type check"}


def status(code: int | None) -> str:
    if code in KILLED:
        return "killed"
    return STATUS.get(code, "suspicious")


def main(argv: list[str]) -> int:
    show = "--survivors" in argv
    print(f"{'module':<12} {'killed':>7} {'total':>6} {'score':>7}  other")
    for module in MODULES:
        meta = ROOT / "mutants" / "src" / "hpcrun" / f"{module}.py.meta"
        if not meta.exists():
            print(f"{module:<12} (not measured)")
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status(code) for code in codes.values())
        total = sum(counts.values())
        killed = counts.pop("killed", 0)
        share = f"{100 * killed / total:.1f} %" if total else "-"
        rest = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        print(f"{module:<12} {killed:>7} {total:>6} {share:>7}  {rest}")
        if show:
            for name, code in sorted(codes.items()):
                if status(code) != "killed":
                    print(f"    {status(code):<12} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
