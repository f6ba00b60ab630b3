"""Benchmark tasks. Standard library only, like any plugin."""

from __future__ import annotations

import time


def stamp() -> float:
    """The wall clock when the task function started: submit-to-start ends here."""
    return time.time()


def noop() -> None:
    return None
