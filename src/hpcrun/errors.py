"""The one family of expected errors. The CLI and the trainer map them to exit codes and
print one line (plus an optional hint) instead of a traceback."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
#: The trainer exits with this code after a preemption signal (SIGUSR1/SIGTERM) once
#: ``last.pt`` is safe on disk: "stopped early on request, requeue me". It is BSD's
#: EX_TEMPFAIL, chosen because no Python or torch failure produces it.
EXIT_REQUEUE = 75


class HpcrunError(Exception):
    """An expected failure: reported as one line, never as a traceback."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class BadInput(HpcrunError):
    """The user's input (config, arguments, data) is wrong; nothing was started."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput):
    """A config file or override is invalid."""


class DataError(BadInput):
    """The training data cannot be used as configured."""


class OperationFailed(HpcrunError):
    """Something that should have worked did not (a command, a transfer, a job)."""
