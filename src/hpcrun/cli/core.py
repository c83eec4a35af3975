"""The Typer app itself: its help style, the global ``--json``, the one place where expected
errors become a message and an exit code, and the console script's entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand

from ..errors import HpcrunError
from ..formats import escape_controls
from . import views

T = TypeVar("T")


def _usage(param: TyperArgument) -> str:
    """An argument as click writes it: NAME when required, [NAME] when not, ``...`` after
    one that takes several values."""
    label = param.metavar or (param.name or "").upper()
    if not param.required:
        label = f"[{label}]"
    return label + ("..." if param.nargs != 1 else "")


class Command(TyperCommand):
    """A command whose help names its arguments the way its usage line does (``NAME``,
    ``[JOB]``, ``RUN...``), with no Python type beside them."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(_usage(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: typer.Context, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                arguments.append((_usage(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


# Help is plain text (rich_markup_mode=None): no markup is read in it, a paragraph is
# re-wrapped to the terminal, a flag shows no metavar, and rich is not imported for --help.
app = typer.Typer(
    name="hpcrun",
    help="Submit, watch and fetch PyTorch training jobs on this machine, SLURM/PBS clusters "
    "and ssh GPU pods.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect experiment configs.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(config_app, name="config")


@app.callback()
def main_callback(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (one JSON "
                                 "document per result)."),
) -> None:
    ctx.obj = views.Output(as_json)


def output(ctx: typer.Context) -> views.Output:
    return ctx.obj if isinstance(ctx.obj, views.Output) else views.Output(False)


def run_op(fn: Callable[[], T]) -> T:
    """Run a use case; expected errors become one line on stderr and the exit code."""
    try:
        return fn()
    except HpcrunError as exc:
        views.error(exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("hpcrun: interrupted", err=True)
        raise typer.Exit(130) from None


def _global_json_first(args: list[str]) -> list[str]:
    """``--json`` is global: accept it after the command too (``hpcrun status --json``)."""
    head, sep, tail = (args[:args.index("--")], ["--"], args[args.index("--") + 1:]) \
        if "--" in args else (args, [], [])
    if "--json" not in head:
        return args
    return ["--json", *(a for a in head if a != "--json"), *sep, *tail]


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors become one line and exit code 2."""
    args = _global_json_first(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args, prog_name="hpcrun", standalone_mode=False)
    except typer.Abort:
        typer.echo("hpcrun: interrupted", err=True)
        code = 130
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, ...
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "hpcrun"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message:  # empty when the help was shown for a bare command group
            typer.echo(escape_controls(f"hpcrun: error: {message} (hint: {command} --help)"),
                       err=True)
        code = getattr(exc, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)
