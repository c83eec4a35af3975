"""What a run produced: fetch (rsync back, verify, summarise), report and compare."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import rundir
from ..backends import backend_for
from ..errors import BadInput, OperationFailed
from ..job import JobRecord, is_terminal
from ..store import JobStore
from .jobs import JobView, _single, views

# --------------------------------------------------------------------------- fetch, report


def _report_files(files: Any) -> dict[str, Any] | None:
    if files is None:
        return None
    return {"html": str(files.html), "pngs": [str(p) for p in files.pngs]}


@dataclass
class FetchResult:
    view: JobView
    run_dir: Path
    verified: bool
    summary: Any
    flags: list[Any] = field(default_factory=list)
    #: the report written into the run directory (``report.ReportFiles``), or why not
    report: Any = None
    report_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.view.to_dict(), "run_dir": str(self.run_dir),
                "verified": self.verified, "summary": self.summary.to_dict(),
                "flags": [f.to_dict() for f in self.flags],
                "report": _report_files(self.report), "report_error": self.report_error}


@dataclass
class ReportResult:
    run_dir: Path
    #: ``report.ReportFiles``: the PNGs and the HTML page, with the summary and flags shown
    files: Any

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "summary": self.files.summary.to_dict(),
                "flags": [f.to_dict() for f in self.files.flags],
                **(_report_files(self.files) or {})}


def flags_of(view: JobView) -> list[Any]:
    """The run's red flags, with the job's state and, for a failure, the end of its log."""
    from ..monitor import run_flags

    sweep = view.record.sweep  # a sweep has no log of its own
    return run_flags(view.record, view.status.state, None if sweep else backend_for(view.record))


def fetch(ref: str | None, project_dir: Path, partial: bool = False,
          store: JobStore | None = None) -> FetchResult:
    """Bring the run back, verify a finished one against its manifest, and write its report.
    A partial fetch (or one of a job still running) is reported too: its curves so far are
    what a researcher fetches it for."""
    from ..report import summarize, write_report

    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    view = views([record], store)[0]
    run = Path(record.run_dir)
    backend = backend_for(record)
    finished = is_terminal(view.status.state)
    backend.pull(record, partial=partial or not finished)  # a remote run: rsync it back
    verified = False
    if finished and not partial:
        problems = rundir.verify_manifest(run)
        if problems:
            raise OperationFailed(f"{run}: {problems[0]}"
                                  + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                     else ""), hint="the run directory was changed after the "
                                  "job wrote its manifest")
        verified = True
    flags = flags_of(view)
    files, problem = None, None
    if run.is_dir():  # a job that never started has nothing to report
        try:
            files = write_report(run, flags=flags)
        except OSError as exc:  # the summary is still worth showing: the CLI exits 1 after it
            problem = f"cannot write the report into {run / 'report'}: {exc.strerror or exc}"
    summary = files.summary if files is not None else summarize(run)
    return FetchResult(view, run, verified, summary, flags, files, problem)


def _is_path(ref: str | None) -> bool:
    """``ref`` names a folder: a path, or a run directory in the current folder (``run``,
    which could also pass for a job id, is the run directory that is there)."""
    if not ref or not Path(ref).is_dir():
        return False
    return "/" in ref or ref.startswith(".") or (Path(ref) / rundir.STATUS).is_file()


def _run_of(ref: str | None, project_dir: Path,
            store: JobStore | None = None) -> tuple[Path, JobRecord | None]:
    """A run directory given as a path, or the run of a job reference (and its job)."""
    if _is_path(ref):
        return Path(ref), None
    store = store or JobStore()
    record = store.resolve(ref, str(project_dir.resolve()))
    _single(record)
    return Path(record.run_dir), record


def report(ref: str | None, project_dir: Path, out_dir: Path | None = None,
           store: JobStore | None = None) -> ReportResult:
    """The report of a run, with its summary and red flags: those of the job (its state and
    log) when a job is named, else what the run directory alone tells."""
    from ..report import write_report

    if store is None and not _is_path(ref):  # a run directory alone needs no job store
        store = JobStore()
    run, record = _run_of(ref, project_dir, store)
    if not (run / rundir.STATUS).exists():
        raise BadInput(f"{run} is not a run directory (no {rundir.STATUS})")
    flags = None
    if record is not None and store is not None:
        flags = flags_of(views([record], store)[0])
    try:
        return ReportResult(run, write_report(run, out_dir, flags=flags))
    except OSError as exc:
        raise OperationFailed(f"cannot write the report of {run}: "
                              f"{exc.filename or ''} {exc.strerror or exc}".strip()) from None


def _not_a_run(path: Path) -> str | None:
    """Why a path given to compare is not a run directory (None when it is one)."""
    if not path.is_dir():
        return "not a directory"
    if not (path / rundir.STATUS).exists():
        return f"no {rundir.STATUS}"
    return None


def compare(refs: Sequence[str], project_dir: Path, metric: str = "auroc",
            mode: str | None = None, out: Path | None = None,
            store: JobStore | None = None) -> Any:
    """Rank runs (run directories, jobs, or a sweep's points) by a metric. Paths that exist
    but are not run directories are skipped with a note: a shell glob over an experiment's
    folder also matches its sweep folders and the comparison written there last time."""
    from ..report import compare as compare_runs
    if mode not in (None, "max", "min"):
        raise BadInput(f"--mode {mode!r}: use max (higher is better) or min")
    store = store or JobStore()
    run_dirs: list[Path] = []
    skipped: list[str] = []
    for ref in refs or ["latest"]:
        path = Path(ref)
        if ref and path.exists():  # what a shell glob gave, rather than a job reference
            why = _not_a_run(path)
            if why is None:
                run_dirs.append(path)
            else:
                skipped.append(f"{ref} ({why})")
            continue
        record = store.resolve(ref, str(project_dir.resolve()))
        if record.sweep:
            points = [store.get(i) for i in record.info.points]
            run_dirs.extend(Path(p.run_dir) for p in points if p is not None)
            out = out or Path(record.run_dir) / "compare.png"
        else:
            run_dirs.append(Path(record.run_dir))
    missing = [str(d) for d in run_dirs if not (d / rundir.STATUS).exists()]
    if missing:
        raise BadInput(f"not a run directory (no {rundir.STATUS}): {missing[0]}",
                       hint="fetch remote runs first")
    if len(run_dirs) < 2:
        left_out = f"; left out {', '.join(skipped)}" if skipped else ""
        raise BadInput(f"compare needs at least two runs (or a sweep){left_out}")
    out = out or run_dirs[0].parent / "compare.png"
    result = compare_runs(run_dirs, metric, mode, out)
    result.skipped = skipped
    return result


