"""``python -m hpcrun.train --config FILE --stage NAME|all`` — the trainer every backend launches.

Run it under torchrun for DDP (``torchrun --nproc_per_node=2 -m hpcrun.train ...``) or alone
for a single process. Exit codes: 0 success, 1 failure (failure.json written), 2 bad input,
75 preempted (last.pt saved; requeue and run the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

from .. import rundir
from ..errors import EXIT_BAD_INPUT, EXIT_FAILED, BadInput, HpcrunError
from ..track import records

log = logging.getLogger("hpcrun.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hpcrun.train",
        description="Train and evaluate an experiment's pipeline, writing a run directory.")
    parser.add_argument("--config", required=True,
                        help="experiment name or YAML file (resolved like `hpcrun submit`)")
    parser.add_argument("--stage", default="all", help="one stage of the pipeline, or 'all'")
    parser.add_argument("--run-dir", help="run directory to create or resume (default: a new "
                        "one under runs_dir/<experiment>/)")
    parser.add_argument("--resume", action="store_true",
                        help="resume the latest run of the experiment (or --run-dir); a run "
                        "directory holding last.pt is always resumed. Without --run-dir the "
                        "run continues with its own config.yaml: --set is checked against it, "
                        "and one that changes it is refused")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.epilog = ("Every stage of a run uses the run's config.yaml: a stage started in an "
                     "existing run directory with a config whose seed, data, model, training "
                     "or pipeline differ from it (another --config or --set) is refused with "
                     "exit code 2; start a new run for other values.")
    return parser.parse_args(argv)


def _configure_console(rank: int) -> None:
    handler = logging.StreamHandler(sys.stderr if rank else sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    if rank:  # other ranks report warnings and errors only on the console
        handler.setLevel(logging.WARNING)
    log.propagate = False


def _say_error(message: str, hint: str | None = None) -> None:
    text = f"hpcrun.train: error: {message}"
    if hint:
        text += f" (hint: {hint})"
    print(text, file=sys.stderr, flush=True)


#: what a collective reports when the process at the other end has gone away
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe",
              "nccl communicator was aborted")


def _recorded_failure(holder: dict[str, Any]) -> rundir.Failure | None:
    """failure.json, when another rank has already written it in this run (a rerun moves
    the previous run's record aside before the ranks start)."""
    run = holder.get("run_dir")
    return rundir.read_failure(run.failure) if run is not None and holder.get("started") \
        else None


def _ended_peers(holder: dict[str, Any], ctx: Any, exc: BaseException) -> list[dict[str, Any]]:
    """Ranks whose process ended without a failure record, when ``exc`` is this rank losing
    them: the record and the error line then name the rank that died, not the one that
    noticed."""
    run = holder.get("run_dir")
    if run is None or ctx is None or not ctx.distributed:
        return []
    from .pipeline import ended_ranks

    lost = any(text in str(exc).lower() for text in _PEER_LOST)
    try:
        return ended_ranks(run, ctx, wait=2.0 if lost else 0.0)
    except Exception:  # noqa: BLE001 - naming the cause must not hide the failure
        return []


def _peer_message(ended: list[dict[str, Any]], ctx: Any, exc: BaseException) -> str:
    first = ended[0]
    return (f"rank {first['rank']} on {first['host']} (pid {first['pid']}) ended without "
            f"recording a failure (killed?); rank {ctx.rank} lost its connection to it: "
            f"{type(exc).__name__}: {exc}")


def _record_failure(holder: dict[str, Any], ctx: Any, exc: BaseException,
                    ended: list[dict[str, Any]] | None = None) -> None:
    """failure.json (first failing rank wins), status FAILED, manifest — best effort.

    With ``ended`` (peers found dead), the record names the first of them as the failing
    rank and keeps this rank's view under ``reported_by``.
    """
    run = holder.get("run_dir")
    if run is None:
        return
    rank = getattr(ctx, "rank", 0)
    info = {
        "rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
        "stage": None, "epoch": None,
        "exception": f"{type(exc).__name__}: {exc}".strip(),
        "traceback": "".join(traceback.format_exception(exc)).splitlines()[-25:],
        "time": time.time(),
    }
    if ended:
        reporter = {key: info[key] for key in ("rank", "host", "pid", "exception")}
        info.update(ended[0], exception=_peer_message(ended, ctx, exc), reported_by=reporter,
                    ended_ranks=[peer["rank"] for peer in ended])
    status = rundir.read_json(run.status) or {}
    # the stage this process was working on; status.json may still name an earlier one
    info["stage"] = holder.get("stage") or status.get("stage")
    if status.get("stage") == info["stage"]:
        info["epoch"] = status.get("epoch")
    cause = info["exception"]
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        records.create_exclusive(run.failure, json.dumps(info, indent=2))
    except FileExistsError:
        # another rank failed first: its record is the root cause, and status.json keeps
        # saying so (this rank's error is often only the lost connection to that rank)
        first = rundir.read_failure(run.failure)
        cause = (first.exception if first else None) or cause
    except OSError as err:
        print(f"hpcrun.train: could not write {run.failure}: {err}", file=sys.stderr)
    state = holder.get("run")
    try:
        if state is not None:
            state.fail(cause)
        elif status:
            from .pipeline import mark_failed

            mark_failed(status, cause)
            rundir.write_json(run.status, status)
        if getattr(ctx, "is_main", True) and run.root.exists():
            rundir.write_manifest(run.root)
    except OSError as err:
        print(f"hpcrun.train: could not record the failure: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0") or 0)
    # A file-size limit (ulimit -f) must fail the write with EFBIG, which the trainer reports
    # and records, rather than kill the process with SIGXFSZ, which leaves the run looking
    # alive. CPython ignores the signal at start-up already; this keeps it so however the
    # interpreter was started.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _configure_console(rank)
    from ..config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except HpcrunError as exc:
        if rank == 0:
            _say_error(exc.message, exc.hint)
        return exc.exit_code
    if cfg.training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    import torch

    if cfg.training.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    from .context import init_distributed
    from .pipeline import check_run_config, choose_run_dir, resume_config, run_pipeline

    holder: dict[str, Any] = {}
    ctx = None
    code = EXIT_FAILED
    try:
        ctx = init_distributed(cfg.distributed)
        run = choose_run_dir(ctx, cfg, args.run_dir, args.resume)
        if run.config.exists() and args.run_dir is None and args.resume:
            cfg = resume_config(run, args.overrides)
        check_run_config(ctx, cfg, run)  # before anything is written into the run
        holder["run_dir"] = run
        code = run_pipeline(ctx, cfg, args.stage, run, holder)
    except BadInput as exc:
        if ctx is None or ctx.is_main:
            _say_error(exc.message, exc.hint)
        if holder.get("run") is not None:
            _record_failure(holder, ctx, exc)
        code = exc.exit_code
    except HpcrunError as exc:
        _say_error(exc.message, exc.hint)
        _record_failure(holder, ctx, exc)
        code = exc.exit_code
    except BaseException as exc:  # noqa: BLE001 - every failure must leave failure.json
        first = _recorded_failure(holder)
        ended = [] if first else _ended_peers(holder, ctx, exc)
        if first:  # this rank only lost its peer: repeat the cause, not the lost connection
            _say_error(f"rank {ctx.rank if ctx else rank} stopped: rank {first.rank} "
                       f"failed first: {first.exception}")
        elif ended:
            _say_error(_peer_message(ended, ctx, exc))
        else:
            rank_text = f"rank {ctx.rank}" if ctx is not None else f"rank {rank}"
            _say_error(f"{rank_text} on {socket.gethostname()}: {type(exc).__name__}: {exc}")
        log.error("training failed:\n%s", "".join(traceback.format_exception(exc)))
        _record_failure(holder, ctx, exc, ended)
        code = EXIT_FAILED if not isinstance(exc, BadInput) else EXIT_BAD_INPUT
    finally:
        if ctx is not None:
            ctx.close()
    return code


def entry() -> None:
    """Exit without running interpreter teardown: flush what we wrote, then ``os._exit``.

    gloo worker threads occasionally abort the process during normal interpreter shutdown
    after training has finished; leaving through ``os._exit`` makes the exit code the one the
    trainer decided.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
