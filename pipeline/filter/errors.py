"""The filter's one error class (stage.py and formats.py both raise it): one line, naming the problem and the fix."""

from __future__ import annotations

from ..core.errors import DistillError


class FilterError(DistillError, ValueError):
    pass
