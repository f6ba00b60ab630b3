"""What task code imports inside a runner: ``from taskman import runtime``.

Standard library only: the runner loads this file into plugin interpreters that
do not have taskman installed. Outside a runner, ``progress`` does nothing and
the identity functions raise RuntimeError, so task code stays testable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

PROGRESS_MIN_INTERVAL = 0.1  # seconds; the node throttles database writes further


class PermanentError(Exception):
    """Raise this (or a subclass) from task code to fail the task now, without retries."""


class Terminated(BaseException):
    """Raised in the task's main thread when the node stops it (abort or timeout).

    A BaseException, so ordinary ``except Exception`` blocks do not swallow it;
    ``finally`` blocks still run for clean-up.
    """


class _Context:
    def __init__(self) -> None:
        self.task_id: int | None = None
        self.attempt: int | None = None
        self.fence: int | None = None
        self.send: Callable[[dict[str, Any]], None] | None = None
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.last_sent = 0.0
        self.pending: dict[str, Any] | None = None


_ctx = _Context()


def _bind(task_id: int, attempt: int, fence: int, send: Callable[[dict[str, Any]], None]) -> None:
    """Called once by the runner before the task function starts."""
    _ctx.task_id, _ctx.attempt, _ctx.fence, _ctx.send = task_id, attempt, fence, send


def _flush() -> None:
    """Send a progress update held back by throttling (the runner calls this on each heartbeat)."""
    with _ctx.lock:
        pending, _ctx.pending = _ctx.pending, None
    if pending is not None and _ctx.send is not None:
        _ctx.send(pending)
        _ctx.last_sent = time.monotonic()


def progress(fraction: float, message: str = "") -> None:
    """Report progress from 0.0 to 1.0 with an optional message; cheap to call often."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError("progress fraction must be a number between 0 and 1")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress fraction {fraction} is outside 0..1")
    if _ctx.send is None:
        return
    update = {"t": "progress", "fraction": float(fraction), "message": str(message)[:1000]}
    with _ctx.lock:
        now = time.monotonic()
        if now - _ctx.last_sent < PROGRESS_MIN_INTERVAL:
            _ctx.pending = update
            return
        _ctx.pending = None
        _ctx.last_sent = now
    _ctx.send(update)


def _require(value: int | None) -> int:
    if value is None:
        raise RuntimeError("not running inside a taskman runner")
    return value


def task_id() -> int:
    return _require(_ctx.task_id)


def attempt() -> int:
    """The attempt number, from 1."""
    return _require(_ctx.attempt)


def fencing_token() -> int:
    """This attempt's fencing token: larger than every earlier attempt's.

    Pass it to your own side effects (e.g. ``UPDATE ... WHERE fence < %s``) to make
    a stale attempt's writes harmless.
    """
    return _require(_ctx.fence)


def should_abort() -> bool:
    """True once the node has asked this attempt to stop (abort or timeout)."""
    return _ctx.abort.is_set()
