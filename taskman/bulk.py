"""What ``Client.submit_many`` checks before it writes anything. Pure: no I/O.

A batch is a list of items, each a mapping with the keyword arguments of
``Client.submit`` (``TaskRequest`` spells them out for type checkers). Every item
goes through the same validation as a single submit (``build_task``), and the
first bad one fails the whole batch: its error is the kind a single submit would
raise, with ``item`` set to its index ("item 3: ...").

Idempotency keys inside one batch: a key repeated with the same request (function,
plugin, pinned version, arguments) names one task, as two submits with that key
would, and both items get its id; repeated with a different request it is an
``IdempotencyConflictError`` naming both items.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Required, TypedDict

from taskman.errors import IdempotencyConflictError, PayloadTooLargeError, ValidationError
from taskman.validation import DEFAULT_MAX_PAYLOAD, NewTask, build_task

MAX_BATCH_ITEMS = 100_000
# Arguments of the whole batch, bytes of JSON: one transaction replicates as one Galera
# write set, held in memory on every node until it commits.
MAX_BATCH_PAYLOAD = 64 * 1024 * 1024
REQUEST_PREFIX_BYTES = 10  # 80 random bits, then 12 hex digits of item index: 32 characters


class TaskRequest(TypedDict, total=False):
    """One item of ``Client.submit_many``: the keyword arguments of ``Client.submit``.

    Only ``function`` and ``plugin`` are required; ``allow_unserved`` is the batch's,
    not an item's. A plain dict with these keys is the same thing.
    """

    function: Required[str]
    plugin: Required[str]
    args: list[Any] | tuple[Any, ...]
    kwargs: dict[str, Any] | None
    version: str | None
    priority: int
    not_before: datetime | None
    not_after: datetime | None
    timeout: float | None
    max_attempts: int | None
    retry_backoff: float | None
    idempotency_key: str | None
    datacenter: str | None
    limits: dict[str, int] | None
    concurrency_key: str | None
    concurrency_limit: int | None


ITEM_FIELDS = frozenset(TaskRequest.__annotations__)
REQUIRED_FIELDS = ("function", "plugin")


@dataclass(frozen=True)
class Batch:
    """A validated batch: one NewTask per item, and which item's task each item gets.

    ``twins[i]`` is ``i``, or the index of the earlier item with the same
    idempotency key and request, whose task item ``i`` shares. The request ids are
    a random prefix of the batch and the item's index in fixed-width hex: unique,
    and in one range of the request-id index, where one read finds them all.
    """

    tasks: tuple[NewTask, ...]
    twins: tuple[int, ...]

    @property
    def own(self) -> list[int]:
        """The items that make (or find) a task of their own, in item order."""
        return [i for i, twin in enumerate(self.twins) if twin == i]


def build_batch(
    items: Iterable[Mapping[str, Any]],
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    now: datetime | None = None,
) -> Batch:
    """Validate every item; the first problem raises, naming the item (``ValidationError.item``)."""
    listed = _listed(items)
    current = now or datetime.now(UTC)  # one clock for the batch: not_after "in the past"
    prefix = secrets.token_hex(REQUEST_PREFIX_BYTES)
    tasks = []
    total = 0
    for index, item in enumerate(listed):
        try:
            task = build_task(
                **_fields(item),
                now=current,
                max_payload=max_payload,
                request_id=f"{prefix}{index:012x}",
            )
        except ValidationError as exc:
            raise exc.at_item(index) from None
        tasks.append(task)
        total += len(task.args_json.encode()) + len(task.kwargs_json.encode())
    if total > MAX_BATCH_PAYLOAD:
        raise PayloadTooLargeError(
            f"the batch's arguments are {total} bytes of JSON, over the limit of "
            f"{MAX_BATCH_PAYLOAD} bytes for one submit_many; split it into smaller batches"
        )
    return Batch(tuple(tasks), tuple(twins_of(tasks)))


def _listed(items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(items, Mapping | str | bytes):
        raise ValidationError("submit_many takes a list of items (one mapping per task)")
    listed = []
    for item in items:
        listed.append(item)
        if len(listed) > MAX_BATCH_ITEMS:  # a generator may be endless: stop reading
            raise ValidationError(
                f"a batch holds at most {MAX_BATCH_ITEMS} tasks; split it into smaller batches"
            )
    return listed


def _fields(item: object) -> Mapping[str, Any]:
    """The item's keyword arguments for build_task; unknown or missing keys are refused."""
    if type(item) is not dict and not isinstance(item, Mapping):  # the ABC check is slow
        raise ValidationError(
            f"an item must be a mapping of submit's arguments, got {type(item).__name__}"
        )
    if not ITEM_FIELDS.issuperset(item):
        unknown = sorted(str(key) for key in item if key not in ITEM_FIELDS)
        hint = (
            " (allow_unserved is the whole batch's: submit_many(..., allow_unserved=True),"
            " taskman submit --from-file FILE --allow-unserved)"
        )
        raise ValidationError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
            + (hint if "allow_unserved" in unknown else "")
            + f"; known fields: {', '.join(sorted(ITEM_FIELDS))}"
        )
    missing = [name for name in REQUIRED_FIELDS if item.get(name) is None]
    if missing:
        raise ValidationError(f"missing {' and '.join(missing)}")
    return item  # build_task(**item) copies it


def twins_of(tasks: list[NewTask]) -> list[int]:
    """For each task the index of the first one with its idempotency key (itself if none).

    The same key with a different request raises IdempotencyConflictError for the later item.
    """
    first: dict[str, int] = {}
    twins = []
    for index, task in enumerate(tasks):
        key = task.idempotency_key
        twin = index if key is None else first.setdefault(key, index)
        if twin != index and not task.same_request(tasks[twin].request_fields):
            raise IdempotencyConflictError(
                f"idempotency key {key!r} is also item {twin}'s, with a different function, "
                "plugin or arguments"
            ).at_item(index)
        twins.append(twin)
    return twins
