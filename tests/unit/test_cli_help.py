"""Every command's --help reads as plain help: values named in words (``--set KEY=VALUE``,
``NAME``, ``[JOB]``), never as Python types (``<bool>``, ``<list[str]>``) or Typer's
``{name}``, and the command list gives each command one whole sentence."""

import re

import pytest
from conftest import invoke

#: a Python type where a value's name belongs: <bool>, <str>, <list[str]>, <float range>...
PYTHON_TYPE = re.compile(r"<(bool|str|int|float|path|Path|list\[|tuple|datetime|choice)\b")


def _commands() -> list[tuple[str, ...]]:
    import typer

    from hpcrun.cli import app

    found: list[tuple[str, ...]] = []

    def walk(command, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


@pytest.mark.parametrize("columns", ["80", "200"])
def test_every_help_names_its_values_in_words(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    commands = _commands()
    assert ("submit",) in commands and ("config", "show") in commands
    for path in commands:
        answer = invoke(*path, "--help")
        assert answer.code == 0, (path, answer.err)
        text = answer.out
        assert "Usage: hpcrun" in text, (path, text)
        assert not PYTHON_TYPE.search(text), (path, text)
        assert not re.search(r"(?<!\$)\{", text), (path, text)  # ${VAR} is the config's own
        assert max(len(line) for line in text.splitlines()) <= 80, (path, text)


def test_the_command_list_gives_each_command_a_whole_sentence(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = invoke("--help").out
    listed = text.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in listed if line.strip()]
    assert names[:3] == ["submit", "sync", "setup"] and "config" in names
    for line in listed:
        if line.strip():
            assert line.rstrip().endswith(".") and not line.rstrip().endswith("..."), line


def test_a_usage_line_names_arguments_the_click_way():
    assert "Usage: hpcrun submit [OPTIONS] NAME [-- SCRIPT ARGS]..." in invoke(
        "submit", "--help").out
    assert "Usage: hpcrun cancel [OPTIONS] JOB\n" in invoke("cancel", "--help").out
    assert "Usage: hpcrun monitor [OPTIONS] [JOB]\n" in invoke("monitor", "--help").out
    assert "Usage: hpcrun compare [OPTIONS] RUN...\n" in invoke("compare", "--help").out
    flags = invoke("monitor", "--help").out
    assert re.search(r"^  --once +Print one snapshot", flags, re.M), flags


def test_compare_help_names_the_metrics_hpcrun_computes():
    """The help is static text (no import of the run-directory contract for --help): it
    must list exactly ``rundir.METRICS``."""
    from hpcrun import rundir

    text = " ".join(invoke("compare", "--help").out.split())
    listed = re.search(r"an evaluation metric \(([a-z0-9, ]+);", text)
    assert listed, text
    assert tuple(listed.group(1).split(", ")) == rundir.METRICS
