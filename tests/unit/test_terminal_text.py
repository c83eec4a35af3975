"""Text from run directories, logs, configs and file names reaches the terminal as text: rich
never reads it as markup (`[/x]` raised a MarkupError after the job had started, and a file
named `a[bold red]credentials` was reported as `acredentials`), and its escape sequences (a
clipboard write, a screen clear) are shown escaped; `hpcrun logs` writes them unchanged only
when piped or with --raw."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time

import pytest
from conftest import HPCRUN, invoke

from hpcrun.formats import escape_controls

ATTACK = "\x1b]52;c;cHduZWQ=\x07\x1b[2J"
SCRIPT = f"""import sys
sys.stderr.write("boom {ATTACK.encode('unicode_escape').decode()} [/x] [bold red]done\\n")
raise SystemExit(3)
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "train.py").write_text(SCRIPT)
    (root / "a[bold red]credentials").write_text("x\n")
    monkeypatch.chdir(root)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")
    return root


def _finished(job: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = json.loads(invoke("--json", "status", job).out)[0]
        if view["state"] in ("SUCCEEDED", "FAILED"):
            return view
        time.sleep(0.5)
    raise AssertionError("the job never ended")


def test_markup_and_escape_sequences_from_values_are_printed_as_text(project):
    answer = invoke("submit", "scripts/train.py", "--backend", "local",
                    "--set", 'runs_dir="r[/x]"', "--sweep", "params.tag=[/y],b")
    assert answer.code == 0, answer.err
    assert "held back (secret filter): a[bold red]credentials" in answer.out
    assert f"{project}/r[/x]/train/" in answer.out.replace("\n", "")
    assert "[params.tag=[/y]]" in answer.out.replace("\n", ""), answer.out
    jobs = json.loads(invoke("--json", "list").out)
    [sweep] = jobs  # a sweep's points are listed inside it
    points = [job["id"] for job in sweep["points"]]
    assert len(points) == 2
    for job in points:
        assert _finished(job)["state"] == "FAILED"
    for argv in (("list",), ("status",), ("status", points[0])):
        shown = invoke(*argv)
        assert shown.code in (0, 1) and "Traceback" not in shown.err, (argv, shown.err)
        assert "\x1b" not in shown.out and "\x07" not in shown.out, argv
    triage = invoke("status", points[0]).out
    assert "boom \\x1b]52;c;cHduZWQ=\\x07\\x1b[2J [/x] [bold red]done" in triage


def test_logs_escape_on_a_terminal_and_pass_bytes_when_piped(project):
    answer = invoke("--json", "submit", "scripts/train.py", "--backend", "local")
    job = json.loads(answer.out)["jobs"][0]["id"]
    _finished(job)
    piped = invoke("logs", job).out
    assert ATTACK in piped  # a pipe or a file gets the log as it is
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([HPCRUN, "logs", job], stdout=slave, stderr=subprocess.PIPE,
                              cwd=project, timeout=60, env=os.environ)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, proc.stderr
    text = seen.decode()
    assert "\x1b" not in text and "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J" in text
    raw = subprocess.run(["script", "-qec", f"{HPCRUN} logs --raw {job}", "/dev/null"],
                         capture_output=True, cwd=project, timeout=60)
    assert ATTACK.encode() in raw.stdout


def test_escape_controls_keeps_only_what_it_is_told():
    assert escape_controls("a\x1b[31mb\tc\nd\r") == "a\\x1b[31mb\\tc\\nd\\r"
    assert escape_controls("a\x1b[31mb\tc\nd", "\n\t") == "a\\x1b[31mb\tc\nd"
    assert escape_controls("\u2028\x85") == "\\u2028\\x85"



def test_piped_output_keeps_paths_whole_and_a_big_sweep_short(project, monkeypatch):
    """Piped (no terminal, no COLUMNS) a line or a table cell is not folded mid-path, and a
    sweep shows its first points and a count of the rest."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.delenv("COLUMNS", raising=False)
    deep = "d" * 60
    answer = invoke("submit", "scripts/train.py", "--backend", "local", "--set",
                    f"runs_dir={deep}/{deep}", "--sweep", "params.tag=" + ",".join(
                        f"t{i}" for i in range(14)))
    assert answer.code == 0, answer.err
    try:
        exe = str(Path(sys.executable).parent / "hpcrun")
        env = {k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"}
        out = subprocess.run([exe, "list"], cwd=project, capture_output=True, text=True,
                             env=env, timeout=120).stdout
        rows = out.splitlines()
        assert any(f"{deep}/{deep}/train/" in row for row in rows), out
        assert sum("  " + "p0" in row or "-p0" in row for row in rows) == 10, out
        assert "4 more points (hpcrun status" in out
    finally:  # the sweep's 14 local jobs must not outlive the test
        assert invoke("cancel", "latest").code == 0
