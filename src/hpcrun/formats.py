"""Names and formats that reach job scripts, scheduler directives, paths, log lines and the
terminal: ONE type, ``Format``, for every such check. It matches the WHOLE value
(``re.fullmatch``: a ``$`` would let a final newline through, and a newline ends ``#SBATCH``
parsing) and refuses every control character whatever its pattern says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: C0 and C1 controls, DEL, and the Unicode line and paragraph separators
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with its control characters (escape sequences, carriage returns, ...) shown
    as Python escapes (``\\x1b``), except those in ``keep`` (e.g. newlines of a text block):
    text from files, logs and users reaches a terminal as text, never as commands to it."""
    return CONTROL.sub(lambda m: m.group() if m.group() in keep else repr(m.group())[1:-1],
                       text)


@dataclass(frozen=True)
class Format:
    pattern: str
    #: what a value must be, completing "<what> <value> must ..."
    rule: str
    flags: int = re.ASCII
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.pattern, self.flags))

    def matches(self, value: object) -> bool:
        return (isinstance(value, str) and CONTROL.search(value) is None
                and self._compiled.fullmatch(value) is not None)

    def parse(self, value: str) -> re.Match[str] | None:
        """The whole-value match (its groups), or None."""
        return self._compiled.fullmatch(value) if self.matches(value) else None

    def check(self, value: str, what: str) -> str:
        """``value`` itself, or ValueError naming ``what`` and the rule."""
        if not self.matches(value):
            raise ValueError(f"{what} {value!r} must {self.rule}")
        return value


NAME = Format(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
              "be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
#: a stage's name is a folder of the run directory and a key in scheduler dependency
#: templates (``{stage}``): no dots
STAGE = Format(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
               "be 1-64 letters, digits, '_' or '-', starting with a letter or digit")
# Python identifiers may be non-ASCII words
FACTORY = Format(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*",
                 "look like package.module:factory", 0)
MODULE = Format(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", "be a dotted module name", 0)
MEMORY = Format(r"\d+(\.\d+)?[KMGT]?B?", "look like 16G, 4000M or 512000K",
                re.ASCII | re.IGNORECASE)
TIME = Format(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", "look like MM, HH:MM:SS or D-HH:MM:SS")
DIRECTIVE = Format(r"-[-A-Za-z0-9].*", "be one option starting with '-' (e.g. --exclusive, "
                   "-l place=scatter) on one line")
CONSTRAINT = Format(r"[A-Za-z0-9_&|\[\]*:,.()!-]+",
                    "use only letters, digits and & | [ ] * : , . ( ) ! - _")
HOST = Format(r"[A-Za-z0-9_.:\[\]][A-Za-z0-9_.:\[\]-]*",
              "be a host name, address or ssh alias")
USER = Format(r"[A-Za-z_][A-Za-z0-9_.-]*", "be a user name")
ENV_NAME = Format(r"[A-Za-z_][A-Za-z0-9_]*",
                  "be one environment variable's name (letters, digits, '_'; no patterns)")
SSH_OPTION = Format(r"[A-Za-z]+=.*", "look like Name=value")
KEY_PART = Format(r"[A-Za-z0-9_-]+", "be letters, digits, '_' or '-'")
