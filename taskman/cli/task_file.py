"""`taskman submit --from-file FILE`: many tasks as JSON lines, submitted in one transaction.

One JSON object per line with ``Client.submit``'s keyword arguments (``function``,
``plugin``, ``args``, ``kwargs``, ``version``, ``priority``, ``not_before``,
``not_after``, ``timeout``, ``max_attempts``, ``retry_backoff``,
``idempotency_key``, ``datacenter``, ``limits``, ``concurrency_key``,
``concurrency_limit``); times are ISO 8601 strings with a timezone. Blank lines
are skipped. Every error names the file and the line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskman.cli.common import emit, parse_time, signalling_client
from taskman.cli.exitcodes import Exit
from taskman.client import Client
from taskman.errors import ValidationError

TIME_FIELDS = ("not_before", "not_after")

FROM_FILE_EPILOG = """With --from-file FILE (- for stdin), one task per line as a JSON object of
submit's fields: function, plugin, args, kwargs, version, priority, not_before,
not_after (ISO 8601 with timezone), timeout, max_attempts, retry_backoff,
idempotency_key, datacenter, limits, concurrency_key, concurrency_limit. All are
checked first and inserted in one transaction, all or none; an error names the
line. It prints the ids in line order (--json: {"ids": [...]}). At most 100,000
tasks per file:
  {"function": "demo.tasks:add", "plugin": "demo", "args": [2, 3]}
  {"function": "demo.tasks:add", "plugin": "demo", "args": [4, 5], "priority": 5}
"""

# Fields of one task: with --from-file each line has its own (dest, flag, default).
PER_TASK_FLAGS: tuple[tuple[str, str, object], ...] = (
    ("plugin", "--plugin", None),
    ("args", "--args", None),
    ("kwargs", "--kwargs", None),
    ("plugin_version", "--version", None),
    ("priority", "--priority", 0),
    ("not_before", "--not-before", None),
    ("not_after", "--not-after", None),
    ("timeout", "--timeout", None),
    ("max_attempts", "--max-attempts", None),
    ("retry_backoff", "--retry-backoff", None),
    ("idempotency_key", "--idempotency-key", None),
    ("datacenter", "--datacenter", None),
    ("limit", "--limit", []),
    ("concurrency_limit", "--concurrency-limit", None),
    ("concurrency_key", "--concurrency-key", None),
    ("wait", "--wait", False),
    ("wait_timeout", "--wait-timeout", None),
)


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


def submit_file(args: argparse.Namespace) -> int:
    """``submit --from-file``: every task of the file in one transaction; print their ids."""
    given = [flag for dest, flag, default in PER_TASK_FLAGS if getattr(args, dest) != default]
    if given:
        args.usage_error(
            f"--from-file takes each task's fields from its line; {', '.join(given)} "
            "cannot be given with it"
        )
    tasks = read_task_file(args.from_file)
    with signalling_client(args) as client:
        ids = tasks.submit(client, allow_unserved=args.allow_unserved)
    if args.json:
        emit({"ids": ids})
    else:
        for task_id in ids:
            print(task_id)
    return int(Exit.OK)
