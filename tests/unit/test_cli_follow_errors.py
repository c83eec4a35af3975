"""An error that comes while ``logs --follow`` prints (the pod goes away mid-stream) is one
line and exit 1, after the lines that arrived, never a traceback."""

from __future__ import annotations

import types

from conftest import invoke

from hpcrun import ops
from hpcrun.errors import OperationFailed


def test_an_error_while_following_a_log_is_one_line(monkeypatch):
    record = types.SimpleNamespace(id="abc123")
    monkeypatch.setattr(ops, "log_file", lambda job, rank, cwd: (record, "old\n"))

    def lines(record, rank):
        yield "epoch 1"
        raise OperationFailed("cannot reach 127.0.0.1:22022 (Connection refused)")

    monkeypatch.setattr(ops, "follow_logs", lines)
    answer = invoke("logs", "--follow")
    assert answer.code == 1
    assert answer.out == "epoch 1\n"
    assert answer.err.strip().splitlines() == [
        "hpcrun: error: cannot reach 127.0.0.1:22022 (Connection refused)"], answer.err


def test_a_usage_error_shows_control_characters_escaped():
    answer = invoke("status", "--\x1b[2Jwipe")
    assert answer.code == 2
    assert "\x1b" not in answer.err and "\\x1b[2Jwipe" in answer.err, answer.err
