"""The ``hpcrun`` command. Each command parses its options, calls one function of ``ops`` (or
``monitor.watch``) and hands the result to ``views``, which prints it: rich tables, plain lines
when not a terminal, or JSON with ``--json``.

- ``core``: the Typer app, its help style, ``--json``, errors to exit codes, ``main``;
- ``options``: the arguments and options several commands share;
- ``views``: every line printed, the live dashboard and the watch sinks;
- ``submit``, ``jobs``, ``results``, ``remote``: the commands, registered below in the order
  ``hpcrun --help`` lists them.

Nothing heavy is imported at module level: ``hpcrun --help`` imports neither torch nor pandas.
"""

from __future__ import annotations

from . import jobs, remote, results, submit
from .core import Command, app, config_app, main

for function, name in ((submit.submit, "submit"), (remote.sync, "sync"),
                       (remote.setup, "setup"), (jobs.status, "status"),
                       (jobs.list_jobs, "list"), (jobs.logs, "logs"), (jobs.cancel, "cancel"),
                       (jobs.monitor, "monitor"), (results.fetch, "fetch"),
                       (results.report, "report"), (results.compare, "compare"),
                       (remote.doctor, "doctor")):
    app.command(name, cls=Command)(function)
config_app.command("show", cls=Command)(submit.config_show)

__all__ = ["app", "main"]
