"""The use cases behind each command. They return values and raise ``HpcrunError``s; they
never print. The CLI renders what they return.

- :mod:`~hpcrun.ops.submission`: ``submit`` (a job or a sweep), ``resume``,
  ``resubmit_failed``, ``config_show``;
- :mod:`~hpcrun.ops.jobs`: jobs as they are now (``views``, ``status``, ``list_jobs``,
  ``triage``), ``log_file``/``follow_logs``, ``cancel``, ``open_monitor``, ``notify``;
- :mod:`~hpcrun.ops.results`: ``fetch``, ``report``, ``compare``;
- :mod:`~hpcrun.ops.remotes`: ``sync``, ``setup``, ``doctor``.
"""

from __future__ import annotations

from .jobs import (
    JobView,
    Triage,
    cancel,
    follow_logs,
    list_jobs,
    log_file,
    notify,
    open_monitor,
    status,
    triage,
    views,
)
from .remotes import Check, doctor, setup, sync
from .results import FetchResult, ReportResult, compare, fetch, flags_of, report
from .submission import (
    SubmitResult,
    config_show,
    parse_sweep,
    resubmit_failed,
    resume,
    submit,
    sweep_points,
)

__all__ = [
    "Check", "FetchResult", "JobView", "ReportResult", "SubmitResult", "Triage", "cancel",
    "compare", "config_show", "doctor", "fetch", "flags_of", "follow_logs", "list_jobs",
    "log_file", "notify", "open_monitor", "parse_sweep", "report", "resubmit_failed", "resume",
    "setup", "status", "submit", "sweep_points", "sync", "triage", "views",
]
