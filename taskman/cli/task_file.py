"""`taskman submit --from-file FILE`: many tasks as JSON lines, submitted in one transaction.

One JSON object per line with ``Client.submit``'s keyword arguments (``function``,
``plugin``, ``args``, ``kwargs``, ``version``, ``priority``, ``not_before``,
``not_after``, ``timeout``, ``max_attempts``, ``retry_backoff``,
``idempotency_key``, ``datacenter``, ``limits``, ``concurrency_key``,
``concurrency_limit``); times are ISO 8601 strings with a timezone. Blank lines
are skipped. Every error names the file and the line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskman.cli.common import parse_time
from taskman.client import Client
from taskman.errors import ValidationError

TIME_FIELDS = ("not_before", "not_after")


@dataclass(frozen=True)
class TaskFile:
    """The tasks of one file, and the line each came from."""

    name: str  # as errors name it: the path, or <stdin>
    items: list[dict[str, Any]]
    lines: list[int]

    def submit(self, client: Client, *, allow_unserved: bool) -> list[int]:
        """All tasks in one transaction; a bad one fails them all, naming its line."""
        try:
            return client.submit_many(self.items, allow_unserved=allow_unserved)
        except ValidationError as exc:
            if exc.item is not None:
                exc.args = (f"{self.name} line {self.lines[exc.item]}: {exc.reason}",)
            raise


def read_task_file(path: str) -> TaskFile:
    """Parse FILE (``-``: stdin) into submit_many's items; a bad line raises ValidationError."""
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {name}: {exc}") from None
    items: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append(_item(line, f"{name} line {number}"))
            lines.append(number)
    return TaskFile(name, items, lines)


def _item(line: str, where: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise ValidationError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(item, dict):
        raise ValidationError(
            f"{where}: expected a JSON object of a task's fields, got {type(item).__name__}"
        )
    for key in TIME_FIELDS:
        value = item.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValidationError(
                f"{where}: {key} must be an ISO 8601 time with a timezone, as a string"
            )
        try:
            item[key] = parse_time(value, key)
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None
    return item
