"""The simulator's one error type."""
from __future__ import annotations


class SimError(ValueError):
    """A simulator setting or run that cannot work; the message names the
    offending value and, where known, the fix."""
