"""Writing the run directory under failing storage: a full disk, a file-size limit, a
read-only directory.

Such a write raises ``WriteFailed``, one line that names the file and the cause
("cannot write runs/x/train/checkpoints/last.pt: No space left on device"), instead of whatever
the layer that met the error made of it (torch reports a failed checkpoint write as
"unexpected pos 704 vs 598"). The trainer exits 1 with that line, records it in failure.json
and status.json where they can still be written, and leaves the last complete checkpoint as
it was: every checkpoint goes through a temp file that replaces ``last.pt`` only once whole.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import HpcrunError

_HINTS = {
    errno.ENOSPC: "free space where the run directory lives",
    errno.EDQUOT: "free space or raise the disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
    errno.EROFS: "the filesystem is mounted read-only; make it writable",
    errno.EACCES: "make the run directory writable by this user",
    errno.EPERM: "make the run directory writable by this user",
}


class WriteFailed(HpcrunError):
    """A file of the run directory could not be written."""

    def __init__(self, path: Path, error: OSError):
        cause = error.strerror or str(error)
        hint = _HINTS.get(error.errno or 0, "fix the storage")
        super().__init__(f"cannot write {path}: {cause}",
                         hint=f"{hint}, then run the same command again to resume from the "
                         "last checkpoint")
        self.path = path
        self.errno = error.errno


def os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, or the one it was raised from or while handling.

    torch.save turns a failed write of its file into a RuntimeError raised while the
    ``OSError`` was being handled, so the cause is found on the exception's chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a storage error met while writing ``path`` into ``WriteFailed`` naming it."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as exc:
        error = os_error(exc)
        if error is None:
            raise
        raise WriteFailed(path, error) from exc


class CsvLog(rundir.CsvLog):
    """``rundir.CsvLog`` whose storage errors name the CSV (a failed flush does not)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        with writing(Path(path)):
            super().__init__(path, columns)

    def write(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        with writing(self.path):
            super().write(row)

    def sync(self) -> None:
        with writing(self.path):
            super().sync()
