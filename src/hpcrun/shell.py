"""The one place hpcrun starts processes.

Every external command (git, ssh, rsync, sbatch, torchrun, ...) goes through a runner, which
records the argv, accepts the caller's success codes and raises ``CommandFailed`` with the
argv, exit code and the tail of stderr otherwise.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OperationFailed


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(OperationFailed):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = " | ".join(stderr.strip().splitlines()[-3:]) if stderr.strip() else "no output"
        super().__init__(f"{shlex.join(self.argv)} exited with {returncode}: {tail}")


class LocalRunner:
    """Runs commands on this machine."""

    def run(self, argv: Sequence[str], *, cwd: str | None = None,
            env: Mapping[str, str] | None = None, input: str | None = None,
            timeout: float | None = None, ok_codes: Sequence[int] = (0,),
            check: bool = True) -> Result:
        try:
            proc = subprocess.run(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                                  input=input, capture_output=True, text=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(argv, 124, f"timed out after {exc.timeout:.0f}s") from None
        result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode not in ok_codes:
            raise CommandFailed(argv, proc.returncode, proc.stderr)
        return result

    def spawn_detached(self, argv: Sequence[str], *, cwd: str, output: str,
                       env: Mapping[str, str] | None = None) -> int:
        """Start ``argv`` in a new session (it outlives this process and the terminal) with
        stdin from /dev/null and stdout+stderr appended to ``output``; return its pid."""
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "ab") as out:
            try:
                proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, close_fds=True,
                                        env=dict(env) if env is not None else None)
            except FileNotFoundError:
                raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
        return proc.pid

    @staticmethod
    def which(name: str) -> str | None:
        return shutil.which(name)
