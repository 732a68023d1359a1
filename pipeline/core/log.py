"""Progress and diagnostics of the stages go through `logging` (loggers `distill.STAGE`); the summary a user reads
at the end of a stage is printed.

By default the `distill` logger writes each message as it is to the current standard output (so the stages read
as before, and a redirected or captured stdout gets them); `DISTILL_LOG_LEVEL=WARNING` keeps only warnings, and
an application can attach its own handlers to `distill`. In multi-process training only the main process speaks
(accelerate's `get_logger`).
"""

from __future__ import annotations

import logging
import os
import sys


class _CurrentStdout(logging.StreamHandler):
    """A stream handler bound to whatever sys.stdout is when a record is emitted, not when it was made."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _configure() -> logging.Logger:
    root = logging.getLogger("distill")
    if not root.handlers:
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("DISTILL_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return root


def get_logger(stage: str, *, main_process_only: bool = False):
    """The logger of a stage; main_process_only (training): accelerate's adapter, silent on other ranks."""
    _configure()
    name = f"distill.{stage}"
    if main_process_only:
        from accelerate.logging import get_logger as accelerate_logger

        return accelerate_logger(name)
    return logging.getLogger(name)
