"""The JSON-lines protocol between a node and its runner child (the child speaks it on its own).

child -> node: ready, hb, progress, result, error
node -> child: spec (first line), ping, abort
pooled runners only: node -> child: spec (the next attempt), stop

A runner tags each message about an attempt with that attempt's fence (``f``), so a
pooled runner's messages are never taken for another attempt's.

What a runner sends is task-controlled input: ``from_runner`` keeps only the
messages and fields the node uses, with every string made safe to store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from taskman.text import UnsafeValueError, clean_json, clean_text

MAX_LINE = 8 * 1024 * 1024  # a result larger than this is refused by the child
# The widths of the columns these land in (error_type is VARCHAR(255)).
MAX_ERROR_TYPE = 255
MAX_ERROR_MESSAGE = 10_000
MAX_TRACEBACK = 200_000
MAX_PROGRESS_MESSAGE = 1000


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if not isinstance(value, dict) or "t" not in value:
        raise ValueError("not a protocol message")
    return value


def _text(value: Any, limit: int) -> str:
    return clean_text(value if isinstance(value, str) else str(value), limit)


def from_runner(line: bytes) -> dict[str, Any] | None:
    """A runner's line as the node may use it; None for anything else (ignored).

    Raises UnsafeValueError for a final message that cannot be stored: the
    attempt then ends with that reason.
    """
    try:
        message = decode(line)
    except ValueError:  # UnicodeDecodeError included
        return None
    kind = message.get("t")
    if kind in ("hb", "ready"):
        cleaned: dict[str, Any] | None = {"t": kind}
    else:
        cleaner = _CLEANERS.get(kind) if isinstance(kind, str) else None
        # None: not a runner's message (a forged "exit", a node's "spec"): ignored.
        cleaned = None if cleaner is None else cleaner(message)
    fence = message.get("f")
    if cleaned is not None and isinstance(fence, int) and not isinstance(fence, bool):
        cleaned["f"] = fence  # the attempt it is about (a pooled runner runs many)
    return cleaned


def _progress(message: dict[str, Any]) -> dict[str, Any] | None:
    fraction = message.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        return None
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        return None
    text = _text(message.get("message", ""), MAX_PROGRESS_MESSAGE)
    return {"t": "progress", "fraction": float(fraction), "message": text}


def _result(message: dict[str, Any]) -> dict[str, Any]:
    value = clean_json(message.get("value"))
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        raise UnsafeValueError(f"the result cannot be stored: {exc}") from exc
    return {"t": "result", "value": value}


def _error(message: dict[str, Any]) -> dict[str, Any]:
    traceback = message.get("traceback")
    return {
        "t": "error",
        "type": _text(message.get("type", "Error"), MAX_ERROR_TYPE) or "Error",
        "message": _text(message.get("message", ""), MAX_ERROR_MESSAGE),
        "traceback": None if traceback is None else _text(traceback, MAX_TRACEBACK),
        "permanent": message.get("permanent") is True,
    }


_CLEANERS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "progress": _progress,
    "result": _result,
    "error": _error,
}
