"""``python -m hpcrun.rank --run-dir RUN --stage NAME (--script F|--module M|--command) -- ARGS``

One rank of your own program: what the launcher runs in each torchrun worker (or once per
node with ``launcher: python``) in place of hpcrun's trainer. It

- skips the stage when the run directory says it succeeded already (a resumed pipeline);
- tells the program where it runs: ``HPCRUN_RUN_DIR`` (the stage's directory),
  ``HPCRUN_RUN_ROOT``, ``HPCRUN_STAGE``, ``HPCRUN_EXPERIMENT``, ``HPCRUN_PARAMS`` (JSON),
  ``HPCRUN_RESUMED`` (1 when the stage ran before), beside torchrun's ``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``;
- starts it, writes ``logs/rank<N>.pid`` (where a job script forwards SIGUSR1) and copies its
  output to ``logs/train.rank<N>.log`` (rank 0's also to the job's output);
- forwards SIGTERM, SIGINT, SIGUSR1, SIGUSR2 and SIGHUP to it;
- records what happened for a program that never imports hpcrun: status.json (rank 0), and
  failure.json with its traceback's last line when it fails; exit code 75 is a preemption
  (status PREEMPTED: a SLURM job requeues itself). MANIFEST.sha256 at the end (rank 0).

It exits with the program's exit code (128 + N when signal N ended it).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from . import rundir
from .errors import EXIT_BAD_INPUT, EXIT_REQUEUE
from .track import records

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
#: how much of the program's output is kept to find its traceback
_TAIL_BYTES = 64 * 1024
#: a stage in one of these states has run before: starting it again is a resume
_STARTED = ("RUNNING", "FAILED", "PREEMPTED", "CANCELLED")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpcrun.rank",
                                     description="Run one rank of your own program as a stage "
                                     "of an hpcrun job.")
    parser.add_argument("--run-dir", required=True, help="the run directory (its top)")
    parser.add_argument("--stage", required=True, help="the stage this program is")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--script", help="a Python file, run with this interpreter")
    what.add_argument("--module", help="a module, run with python -m")
    what.add_argument("--command", action="store_true", help="ARGS are a whole command")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the program's arguments")
    args = parser.parse_args(argv)
    if args.args and args.args[0] == "--":
        args.args = args.args[1:]
    if args.command and not args.args:
        parser.error("--command needs the command after --")
    return args


def _first_number(names: tuple[str, ...], default: int) -> int:
    """The first of these environment variables that holds a whole number."""
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def _rank() -> int:
    """torchrun's RANK; with ``launcher: python``, the node's rank."""
    return _first_number(("RANK", "HPCRUN_NODE_RANK"), 0)


def _world_size() -> int:
    return _first_number(("WORLD_SIZE", "NNODES"), 1)


def _config(root: Path) -> dict:
    """The run's config.yaml (its experiment, params and pipeline), {} when unreadable."""
    try:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        data = yaml.load((root / rundir.CONFIG).read_text(), Loader=loader)  # noqa: S506
    except Exception:  # noqa: BLE001 - the program runs all the same, with fewer facts
        return {}
    return data if isinstance(data, dict) else {}


def _program(args: argparse.Namespace) -> list[str]:
    if args.script is not None:
        return [sys.executable, args.script, *args.args]
    if args.module is not None:
        return [sys.executable, "-m", args.module, *args.args]
    return list(args.args)


class _Output:
    """Copies the program's output to its rank log (and rank 0's to our stdout), keeping the
    last bytes to find a traceback in."""

    def __init__(self, source: int, log: Path, echo: bool):
        self.source = source
        self.log = open(log, "ab")  # noqa: SIM115 - closed when the stream ends
        self.echo = echo
        self.tail: collections.deque[bytes] = collections.deque()
        self.kept = 0
        self.thread = threading.Thread(target=self._copy, daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        while True:
            try:
                chunk = os.read(self.source, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            try:
                self.log.write(chunk)
                self.log.flush()
            except OSError:
                pass
            if self.echo:
                try:
                    os.write(1, chunk)
                except OSError:
                    pass
            self.tail.append(chunk)
            self.kept += len(chunk)
            while self.kept > _TAIL_BYTES and len(self.tail) > 1:
                self.kept -= len(self.tail.popleft())
        os.close(self.source)
        self.log.close()

    def lines(self) -> list[str]:
        return b"".join(self.tail).decode("utf-8", "replace").splitlines()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.run_dir)
    stage = args.stage
    rank = _rank()
    is_main = rank == 0
    config = _config(root)
    experiment = str(config.get("experiment") or root.resolve().parent.name)
    stages = [s.get("name") for s in config.get("pipeline") or [] if isinstance(s, dict)] \
        or [stage]
    run = records.RunRecords(root)
    status = run.load()
    if run.stage_done(stage):
        if is_main:
            print(f"hpcrun: stage {stage} already finished; skipping", flush=True)
        return 0
    resumed = (status.get("stages") or {}).get(stage) in _STARTED or \
        bool(os.environ.get("SLURM_RESTART_COUNT"))
    stage_dir = root / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    (root / rundir.LOGS).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    if is_main:
        records.set_aside_failure(root)
        run.start(experiment, stages, world_size=_world_size(), hosts=[host], host=host,
                  extra={"program": _program(args)[1:] if not args.command else args.args})
        run.begin_stage(stage)

    env = dict(os.environ)
    env.update({
        "HPCRUN_RUN_DIR": str(stage_dir.resolve()), "HPCRUN_RUN_ROOT": str(root.resolve()),
        "HPCRUN_STAGE": stage, "HPCRUN_EXPERIMENT": experiment,
        "HPCRUN_PARAMS": json.dumps(config.get("params") or {}, sort_keys=True),
        "HPCRUN_RESUMED": "1" if resumed else "0",
        "HPCRUN_RANK_WRAPPED": "1",  # hpcrun.track: the rank log and pid file are taken care of
        "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1"),
    })
    # signals are forwarded from before the program starts: one that comes while it starts
    # is handed on as soon as it runs
    told: list[int] = []
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        told.append(signum)
        for child in started:
            try:
                child.send_signal(signum)
            except OSError:
                pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(_program(args), env=env, stdin=subprocess.DEVNULL,
                                 stdout=write_end, stderr=write_end)
        started.append(child)
        for signum in told:
            child.send_signal(signum)
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        message = f"cannot start {_program(args)[0]}: {exc.strerror or exc}"
        print(f"hpcrun: rank {rank}: {message}", file=sys.stderr, flush=True)
        _failed(run, root, rank, stage, message, [])
        return EXIT_BAD_INPUT if isinstance(exc, FileNotFoundError) else 1
    os.close(write_end)
    output = _Output(read_end, root / rundir.rank_log(rank), echo=is_main)
    rundir.write_atomic(root / rundir.rank_pid(rank),
                        f"{host} {child.pid}\n".encode())

    code = child.wait()
    output.thread.join(timeout=5)
    if code < 0:
        code = 128 - code

    if code == 0:
        if is_main:
            run.load()
            run.end_stage(stage)
    elif code == EXIT_REQUEUE or run.load().get("state") == "PREEMPTED":
        if is_main:
            run.load()
            if run.status.get("state") != "PREEMPTED":
                run.preempted(stage, f"stage {stage} stopped to be requeued (exit code "
                              f"{EXIT_REQUEUE}); it resumes from its last checkpoint")
    elif told and code - 128 in told:
        if is_main:  # stopped from outside (cancel, or torchrun after another rank failed)
            run.load()
            if run.status.get("state") == "RUNNING":
                name = signal.Signals(code - 128).name
                run.finish("CANCELLED", f"stage {stage} stopped by {name}")
    else:
        lines = output.lines()
        name = args.script or args.module or args.args[0]
        cause = records.last_exception_line(lines) or f"{name} exited with code {code}"
        if not is_main:  # rank 0's output is the job's; the others' is in their logs only
            sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in lines[-10:]))
        _failed(run, root, rank, stage, cause, lines, code)
    if is_main:
        try:
            rundir.write_manifest(root)
        except OSError as exc:
            print(f"hpcrun: could not write {rundir.MANIFEST}: {exc}", file=sys.stderr)
    sys.stdout.flush()
    return code


def _failed(run: records.RunRecords, root: Path, rank: int, stage: str, cause: str,
            lines: list[str], code: int | None = None) -> None:
    """failure.json (unless a rank, or the program through hpcrun.track, wrote it first) and
    status FAILED."""
    status = run.load()
    epoch = status.get("epoch") if isinstance(status.get("epoch"), int) else None
    epoch = epoch or None  # 0: no epoch was recorded (a program that does not track them)
    info = records.failure_record(rank=rank, exception=cause, trace=lines, stage=stage,
                                  epoch=epoch, exit_code=code)
    try:
        written = records.record_failure(root, info)
        if not written:
            first = rundir.read_failure(run.dir.failure)
            cause = (first.exception if first else None) or cause
        if status.get("state") not in ("FAILED", "PREEMPTED"):
            if not status.get("stage"):
                status["stage"] = stage
            run.fail(cause)
    except OSError as exc:
        print(f"hpcrun: could not record the failure: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
