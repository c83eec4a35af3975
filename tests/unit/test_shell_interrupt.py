"""Ctrl-C while hpcrun waits for a command: the command gets to end by itself (rsync keeps
the part of a file it has), is asked once more, and only then killed; the interrupt then
reaches hpcrun's caller."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from hpcrun import shell


def _ctrl_c_after(seconds: float, to_child: bool) -> None:
    """As a terminal's Ctrl-C: SIGINT to the command (when ``to_child``), and hpcrun's own
    KeyboardInterrupt."""
    def fire() -> None:
        time.sleep(seconds)
        if to_child:
            for child in psutil.Process().children():
                child.send_signal(signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # hpcrun's own: KeyboardInterrupt while it waits
    threading.Thread(target=fire, daemon=True).start()


@pytest.mark.parametrize("method", ["run", "stream"])
def test_an_interrupted_command_ends_by_itself_first(tmp_path, method):
    kept = tmp_path / "kept"
    script = f'trap "sleep 0.3; echo partial > {kept}; exit 130" INT; while :; do sleep 0.05; done'
    _ctrl_c_after(0.5, to_child=True)
    with pytest.raises(KeyboardInterrupt):
        getattr(shell.LocalRunner(), method)(["bash", "-c", script], timeout=30)
    assert kept.read_text() == "partial\n"  # its clean-up ran: it was not killed at once


def test_a_command_that_ignores_the_interrupt_is_asked_again_then_killed(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(shell, "INTERRUPT_GRACE_S", 0.3)
    asked = tmp_path / "asked"
    # ignores the terminal's SIGINT; the second one (hpcrun's) it counts, and stays anyway
    script = f'n=0; trap \'n=$((n+1)); echo $n > {asked}\' INT; while :; do sleep 0.05; done'
    _ctrl_c_after(0.3, to_child=True)
    with pytest.raises(KeyboardInterrupt):
        shell.LocalRunner().run(["bash", "-c", script], timeout=30)
    assert asked.read_text() == "2\n"  # the terminal's SIGINT, then hpcrun's
    assert not psutil.Process().children()  # then killed: hpcrun does not wait on it


def test_a_timeout_does_not_wait_for_what_the_command_started():
    """``sh`` is killed at the timeout; the ``sleep`` it started keeps the output pipe open
    for 30 s more, and is not waited for."""
    began = time.monotonic()
    with pytest.raises(shell.CommandFailed) as failed:
        shell.LocalRunner().run(["sh", "-c", "sleep 30; echo late"], timeout=1)
    assert failed.value.returncode == 124
    assert time.monotonic() - began < 15  # far from the 30 s a wait for the pipe would take
