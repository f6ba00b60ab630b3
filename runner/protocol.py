"""The JSON-lines protocol between a node and its runner child. Standard library only.

child -> node: ready, hb, progress, result, error
node -> child: spec (first line), ping, abort
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINE = 8 * 1024 * 1024  # a result larger than this is refused by the child


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode()


def decode(line: bytes) -> dict[str, Any]:
    value = json.loads(line)
    if not isinstance(value, dict) or "t" not in value:
        raise ValueError("not a protocol message")
    return value
