"""Checks on what applications submit. Pure functions: no I/O, fast unit tests."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from taskman.errors import PayloadTooLargeError, ValidationError

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # bytes of JSON for args + kwargs
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_BACKOFF = 1.0  # a node's default seconds before the first retry; doubles each time

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
FUNCTION_REF = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
VERSION = re.compile(r"^\d+(\.\d+){0,5}$")
DATACENTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Resource limits a plugin sets under [limits] and a task may override.
LIMIT_KEYS = {
    "memory_mb": "address space of the runner, MiB (RLIMIT_AS)",
    "cpu_seconds": "CPU time of the runner, seconds (RLIMIT_CPU)",
    "open_files": "open file descriptors (RLIMIT_NOFILE)",
    "output_bytes": "bytes the task may print to stdout and stderr",
}
MAX_CONCURRENCY = 10_000
# json.dumps with options builds a new encoder per call; submit_many encodes thousands.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _reused_encoder() -> Callable[[object], str] | None:
    """``_JSON.encode`` for lists and dicts, without its set-up on every call.

    JSONEncoder.encode builds its C encoder anew on each call, 2 of its 3 us for
    small arguments. This one is built once, with _JSON's options; without a
    circular-reference check (a shared check could keep an entry after an error):
    a value that contains itself fails with RecursionError instead. None where
    the C accelerator is missing or takes other arguments.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encode = make(
            None, _JSON.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
    except TypeError:
        return None
    return lambda value: "".join(encode(value, 0))


_ENCODE = _reused_encoder() or _JSON.encode


class NewTask(NamedTuple):
    """A validated submission, ready for the store.

    A NamedTuple, not a frozen dataclass: as immutable, and made three times faster
    (a frozen dataclass sets each field through object.__setattr__), which counts
    when submit_many validates 10,000 of them.
    """

    request_id: str
    plugin: str
    plugin_version: str | None
    function: str
    args_json: str
    kwargs_json: str
    priority: int
    datacenter: str | None
    not_before: datetime | None  # naive UTC, as stored
    not_after: datetime | None
    timeout: float | None
    max_attempts: int
    retry_backoff: float | None
    idempotency_key: str | None
    limits_json: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None

    @property
    def request_fields(self) -> dict[str, Any]:
        """What an idempotency key stands for, named as the tasks table's columns."""
        return {
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "function": self.function,
            "args": self.args_json,
            "kwargs": self.kwargs_json,
        }

    def same_request(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` (a stored task, or ``request_fields``) asks for the same work.

        One idempotency key may name one request only: the same function of the
        same plugin and pinned version, with equal arguments. The other fields
        (priority, times, limits) of a repeated submit do not count.
        """
        return bool(
            row["plugin"] == self.plugin
            and row["plugin_version"] == self.plugin_version
            and row["function"] == self.function
            and json.loads(row["args"]) == json.loads(self.args_json)
            and json.loads(row["kwargs"]) == json.loads(self.kwargs_json)
        )


def check_function(function: object) -> str:
    if not isinstance(function, str) or not FUNCTION_REF.match(function):
        raise ValidationError(
            f"malformed function reference {function!r}: expected 'package.module:callable'"
        )
    return function


def check_plugin(plugin: object) -> str:
    if not isinstance(plugin, str) or not PLUGIN_NAME.match(plugin):
        raise ValidationError(f"invalid plugin name {plugin!r}")
    return plugin


def check_version(version: object) -> str | None:
    if version is None:
        return None
    if not isinstance(version, str) or not VERSION.match(version):
        raise ValidationError(
            f"invalid plugin version {version!r}: expected dotted numbers, e.g. 1.2"
        )
    return version


def check_aware(name: str, value: object) -> datetime | None:
    """Timezone-aware datetimes only; stored as naive UTC."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValidationError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"{name} is a naive datetime; pass a timezone-aware one (e.g. datetime.now(UTC))"
        )
    return value.astimezone(UTC).replace(tzinfo=None)


def encode_json(name: str, value: list[Any] | dict[str, Any]) -> str:
    try:
        return _ENCODE(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValidationError(
            f"{name} is not JSON-serialisable: it contains itself, or is nested too deeply"
        ) from None


def build_task(
    function: object,
    *,
    plugin: object,
    args: Any = (),
    kwargs: Any = None,
    version: object = None,
    priority: object = 0,
    not_before: object = None,
    not_after: object = None,
    timeout: object = None,
    max_attempts: object = None,
    retry_backoff: object = None,
    idempotency_key: object = None,
    datacenter: object = None,
    limits: object = None,
    concurrency_key: object = None,
    concurrency_limit: object = None,
    now: datetime | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    request_id: str | None = None,
) -> NewTask:
    """Validate one submission; every problem is a ValidationError that says what is wrong.

    ``request_id`` (32 characters, unique) defaults to a fresh uuid4's hex.
    """
    fn = check_function(function)
    plugin_name = check_plugin(plugin)
    pinned = check_version(version)
    args_json, kwargs_json = _encode_arguments(args, kwargs, max_payload)
    checked_priority = _check_priority(priority)
    nb, na = _check_window(not_before, not_after, now)
    return NewTask(
        request_id=request_id or uuid.uuid4().hex,
        plugin=plugin_name,
        plugin_version=pinned,
        function=fn,
        args_json=args_json,
        kwargs_json=kwargs_json,
        priority=checked_priority,
        datacenter=_check_datacenter(datacenter),
        not_before=nb,
        not_after=na,
        timeout=_positive("timeout", timeout, allow_none=True),
        max_attempts=_check_attempts(max_attempts),
        # None: the claiming node's retry_backoff applies.
        retry_backoff=_positive("retry_backoff", retry_backoff, allow_none=True, allow_zero=True),
        idempotency_key=_check_key(idempotency_key),
        limits_json=None if limits is None else encode_json("limits", check_limits(limits)),
        concurrency_key=_check_concurrency_key(concurrency_key, concurrency_limit),
        concurrency_limit=check_concurrency_limit("concurrency_limit", concurrency_limit),
    )


def _encode_arguments(args: Any, kwargs: Any, max_payload: int) -> tuple[str, str]:
    """args and kwargs as JSON, within ``max_payload`` bytes together."""
    if isinstance(args, str | bytes) or not isinstance(args, list | tuple):
        raise ValidationError("args must be a list or tuple")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValidationError("kwargs must be a dict with string keys")
    args_json = encode_json("args", list(args))
    kwargs_json = encode_json("kwargs", kwargs) if kwargs else "{}"
    size = len(args_json.encode()) + len(kwargs_json.encode())
    if size > max_payload:
        raise PayloadTooLargeError(
            f"arguments are {size} bytes of JSON, over the limit of {max_payload} bytes; "
            "store large data elsewhere and pass a reference"
        )
    return args_json, kwargs_json


def _check_priority(priority: object) -> int:
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not -(2**31) <= priority < 2**31
    ):
        raise ValidationError(f"priority must be a 32-bit integer, got {priority!r}")
    return priority


def _check_window(
    not_before: object, not_after: object, now: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """(not_before, not_after) as naive UTC; not_after must be later than both."""
    nb = check_aware("not_before", not_before)
    na = check_aware("not_after", not_after)
    if na is None:
        return nb, na
    if nb is not None and na <= nb:
        raise ValidationError("not_after must be later than not_before")
    current = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    if na <= current:
        raise ValidationError(f"not_after {na.isoformat()}Z is already in the past")
    return nb, na


def check_limits(value: object, where: str = "limits") -> dict[str, int]:
    """Resource limits: known keys, positive integers."""
    if not isinstance(value, dict):
        raise ValidationError(f"{where} must be a table of limits ({', '.join(LIMIT_KEYS)})")
    checked = {}
    for key, number in value.items():
        if key not in LIMIT_KEYS:
            raise ValidationError(
                f"{where}: unknown limit {key!r}; known limits: {', '.join(LIMIT_KEYS)}"
            )
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValidationError(f"{where}: {key} must be a positive integer, got {number!r}")
        checked[key] = number
    return checked


def check_concurrency_limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ValidationError(
            f"{name} must be an integer from 1 to {MAX_CONCURRENCY}, got {value!r}"
        )
    return value


def _check_concurrency_key(key: object, limit: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= 200:
        raise ValidationError(
            "concurrency_key must be a non-empty string of at most 200 characters"
        )
    if limit is None:
        raise ValidationError("concurrency_key needs a concurrency_limit")
    return key


def _check_datacenter(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not DATACENTER.match(value):
        raise ValidationError(f"invalid datacenter name {value!r}")
    return value


def _check_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise ValidationError(
            "idempotency_key must be a non-empty string of at most 255 characters"
        )
    return value


def _check_attempts(value: object) -> int:
    if value is None:
        return DEFAULT_MAX_ATTEMPTS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValidationError(f"max_attempts must be an integer from 1 to 1000, got {value!r}")
    return value


def _positive(
    name: str,
    value: object,
    *,
    default: float | None = None,
    allow_none: bool = False,
    allow_zero: bool = False,
) -> Any:
    if value is None:
        if allow_none:
            return None
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValidationError(f"{name} must be positive, got {value!r}")
    return float(value)
