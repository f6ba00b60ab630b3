"""structlog set-up: JSON lines when not on a terminal, readable lines on one.

Secrets (database passwords, plugin environment values) are registered with
``add_secrets`` and scrubbed from every event before it is rendered, whatever
field or message they ended up in.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, overload

import structlog

REDACTED = "***"
_secrets: set[str] = set()
_lock = threading.Lock()
MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
NEVER_SCRUBBED = frozenset({"event", "level", "timestamp"})  # set by code, not data


def add_secrets(values: Iterable[str]) -> None:
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


@overload
def scrub(value: str) -> str: ...
@overload
def scrub(value: None) -> None: ...
@overload
def scrub(value: Any) -> Any: ...
def scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def scrub_secrets(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    return {k: v if k in NEVER_SCRUBBED else scrub(v) for k, v in event.items()}


def configure(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        # One write per line (print() writes the newline apart): a kazoo warning from
        # another thread must never land inside a JSON line.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # kazoo logs through the standard library; keep its warnings, in the same stream.
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s"
    )
