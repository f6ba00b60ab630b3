"""Strings from task code made safe for every column, JSON encoder and log line.

Task code can produce text that no database accepts: lone surrogates (from
``surrogateescape``-decoded bytes, or written on purpose), NUL characters, values
longer than the column. Every string that came from a runner passes through here
before it is written, so a poison string ends as readable text, never as an
exception in the node (which would take every other attempt down with it).
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 200  # deeper results are refused: the node would recurse on them again


class UnsafeValueError(ValueError):
    """A value from a runner that cannot be made safe (too deep, not JSON)."""


def clean_text(value: str, limit: int | None = None) -> str:
    """Lone surrogates become ``\\udcff`` escapes, NUL becomes ``\\x00``; cut to ``limit``."""
    if limit is not None:
        value = value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    # Escapes make the text longer: cut again so it still fits its column.
    return value if limit is None else value[:limit]


def clean_optional(value: str | None, limit: int | None = None) -> str | None:
    return None if value is None else clean_text(value, limit)


def clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON value with every string (and key) free of lone surrogates.

    NUL stays: JSON escapes it (``\\u0000``) and every JSON column takes that.
    """
    if depth > MAX_DEPTH:
        raise UnsafeValueError(f"the value is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsafeValueError(f"{value} is not a JSON number")
        return value
    if isinstance(value, list | tuple):
        return [clean_json(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {clean_json(str(k), depth + 1): clean_json(v, depth + 1) for k, v in value.items()}
    raise UnsafeValueError(f"{type(value).__name__} is not a JSON value")
