"""The one base of every user-facing error.

A `DistillError` is bad input or a bad setting: the CLI prints it as one line (`distill STAGE: error: ...`, exit 1;
a `ConfigError` exits 2) and the user fixes what it names. Anything else that escapes a stage is a bug, and the CLI
lets it show its traceback, so that a bug never looks like a config mistake.
"""

from __future__ import annotations


class DistillError(Exception):
    """Bad input or settings, told in one line that names the problem and the fix."""


class DataError(DistillError, ValueError):
    """A problem set, benchmark or training file that cannot be read as given."""


class MissingDependency(DistillError, ImportError):
    """An optional package the chosen setting needs is not installed (the message says how to install it)."""
