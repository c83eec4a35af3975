"""Arguments and options that several commands take, declared once (name, metavar, help).

Every value-taking option names its value in upper case (``--set KEY=VALUE``); Typer's
default would show the Python type (``<list[str]>``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer


def remote_option(help: str) -> Any:  # noqa: A002 - Typer's own keyword
    """``--remote/-r REMOTE``; each command says what it does with the remote."""
    return typer.Option("--remote", "-r", metavar="REMOTE", help=help)


Experiment = Annotated[str, typer.Argument(
    metavar="NAME", help="Experiment name (configs/NAME.yaml) or path, or your own script "
    "(train.py), run as the job.")]
ScriptArgs = Annotated[list[str] | None, typer.Argument(
    metavar="-- SCRIPT ARGS", help="After --: arguments for the script, passed unchanged.")]
JobRef = Annotated[str, typer.Argument(
    metavar="JOB", help="Job id, prefix, handle or 'latest'.")]
Overrides = Annotated[list[str], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a key: KEY=VALUE (repeatable).")]
Allow = Annotated[list[str], typer.Option(
    "--allow", metavar="GLOB", help="Ship files the secret filter would hold back (glob, "
    "repeatable).")]
Remote = Annotated[str, remote_option("Remote from configs/remotes.yaml.")]
