"""The commands about what a job leaves behind: ``fetch``, ``report`` and ``compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_FAILED
from . import views
from .core import output, run_op
from .options import JobRef


def fetch(
    ctx: typer.Context,
    job: JobRef = "latest",
    partial: Annotated[bool, typer.Option(
        "--partial", help="Only the CSVs and status (a job still running); nothing is "
        "verified. The report is written all the same, from the epochs so far.")] = False,
) -> None:
    """Bring a job's run directory back, verify it and report on it.

    rsync for a remote job, a check against MANIFEST.sha256, the run summary and red flags
    printed, and the report written (PNG plots and a self-contained HTML page into
    RUN/report, as `hpcrun report` does)."""
    from .. import ops

    result = run_op(lambda: ops.fetch(job, Path.cwd(), partial=partial))
    views.fetched(output(ctx), result, partial)
    if result.report_error:
        raise typer.Exit(EXIT_FAILED)


def report(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(
        metavar="RUN", help="A run directory, or a job id/prefix/handle/'latest'.")] = "latest",
    out_dir: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="DIR", help="Where to write (default: RUN/report).")] = None,
) -> None:
    """Print a run's summary and red flags, and write its report.

    PNG plots and a self-contained HTML page (which shows both); their paths are printed."""
    from .. import ops

    views.reported(output(ctx), run_op(lambda: ops.report(run, Path.cwd(), out_dir)))


def compare(
    ctx: typer.Context,
    runs: Annotated[list[str], typer.Argument(
        metavar="RUN", help="Run directories, jobs, or a sweep job. A name that exists on "
        "disk is a path; paths that are not run directories (files, sweep folders) are "
        "skipped with a note.")],
    metric: Annotated[str, typer.Option(
        "--metric", "-m", metavar="METRIC", help="What to rank by: an evaluation metric "
        "(auroc, auprc, accuracy, sensitivity, specificity, precision, recall, f1, mcc; from "
        "the final evaluation, test split first, else val), loss (the lowest validation loss "
        "of the last training stage), or any metric the runs write: a 'Val <name>' column of "
        "training.csv (its best value) or an evaluation.csv column (rmse, ...).")] = "auroc",
    mode: Annotated[str | None, typer.Option(
        "--mode", metavar="max|min", help="max (higher is better) or min; default: min for "
        "loss, max otherwise.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="PNG", help="PNG of the runs' validation loss curves "
        "(default: beside the runs, or in the sweep's folder).")] = None,
) -> None:
    """Rank runs by a metric and show the config keys that differ.

    Their validation loss curves are overlaid in one PNG."""
    from .. import ops

    views.compared(output(ctx), run_op(lambda: ops.compare(runs, Path.cwd(), metric, mode, out)))
