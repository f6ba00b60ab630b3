"""BulkStore: a validated batch of tasks (``taskman.bulk``) inserted in one transaction.

All or nothing: the batch's idempotency keys are looked up first, then the new
rows go in with multi-row INSERTs of at most ``ROWS_PER_STATEMENT`` rows (and
``BYTES_PER_STATEMENT`` of arguments, to stay under MySQL's max_allowed_packet),
then their ids are read back by request id, and one COMMIT makes them durable.

Ids are read back, not counted from the first: with ``innodb_autoinc_lock_mode=2``
(Galera's) and ``auto_increment_increment`` (one per Galera node) a statement's
rows need not be consecutive. They do grow in row order, so the new tasks' ids
grow in item order. The read-back is one row per range of request ids (all
``id:request_id`` pairs as one text), not one row per task.

The time of a batch goes to the server's INSERTs (parsing and index upkeep,
about half), validation and rendering the statements' values (client CPU); the
round trips are few: one per chunk, one per read-back range, the COMMIT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from typing import Any, TypeVar

from taskman.bulk import Batch
from taskman.errors import (
    DuplicateKeyError,
    IdempotencyConflictError,
    StoreError,
    TransientStoreError,
)
from taskman.store.backend import Cursor, StoreDatabase
from taskman.validation import NewTask

ROWS_PER_STATEMENT = 1000
BYTES_PER_STATEMENT = 4 * 1024 * 1024  # of args + kwargs JSON; MariaDB's packet limit is 16 MiB
KEYS_PER_STATEMENT = 500  # idempotency keys per IN (...)
# Request ids per read-back: its "id:request_id," pairs (at most 54 bytes each) stay
# under group_concat_max_len, 1 MiB (queries.SESSION_SETUP).
READ_BACK_ITEMS = 10_000
T = TypeVar("T")
R = TypeVar("R")


class BulkStore:
    def __init__(self, db: StoreDatabase) -> None:
        self.db = db
        self.q = db.q
        self._columns = list(self.q.BULK_COLUMNS)
        fields = list(self.q.BULK_COLUMNS.values())
        self._values = attrgetter(*fields)  # a task's values, in BULK_COLUMNS order
        self._not_before = fields.index("not_before")

    def insert(self, batch: Batch) -> list[int]:
        """Insert the batch's new tasks; the task id of every item, in item order.

        An item whose idempotency key already names a task with the same request
        gets that task's id; with a different request the whole batch fails
        (IdempotencyConflictError naming the item) and nothing is written. A retry
        after an ambiguous COMMIT finds the batch's rows by request id instead of
        inserting them twice.
        """
        own = batch.own
        if not own:
            return []

        def fn(cur: Cursor) -> list[int]:
            found = self._by_key(cur, batch, own)
            new = [i for i in own if i not in found]
            chunks = [[batch.tasks[i] for i in chunk] for chunk in _chunks(batch.tasks, new)]
            # The next chunk's statement renders (client CPU) while the server runs this one.
            for sql, args in _ahead(chunks, lambda tasks: self._render_chunk(cur, tasks)):
                self._insert_chunk(cur, sql, args)
            found.update(self._by_request_id(cur, batch, new))
            return _ids(batch, found)

        def reread(cur: Cursor) -> list[int] | None:
            # A COMMIT is all or nothing: if any row of ours is there, all are, and
            # the other items were found by their keys; if none is, run it again.
            found = self._by_request_id(cur, batch, own)
            if not found:
                return None
            found.update(self._by_key(cur, batch, [i for i in own if i not in found]))
            return _ids(batch, found)

        return self.db.run(fn, on_ambiguous=reread)

    def _render_chunk(self, cur: Cursor, tasks: list[NewTask]) -> tuple[str, Sequence[Any] | None]:
        by_column = list(zip(*map(self._values, tasks), strict=True))
        kept = [i for i, values in enumerate(by_column) if values.count(None) < len(tasks)]
        values = [by_column[i] for i in kept]
        run_after = self.q.BULK_RUN_AFTER
        if self._not_before in kept:
            values.append(by_column[self._not_before])
            run_after = self.q.BULK_RUN_AFTER_NOT_BEFORE
        statement = self.q.BULK_INSERT_TASKS.format(
            columns=", ".join([self._columns[i] for i in kept])
        )
        row = self.q.BULK_TASK_ROW.format(values=", ".join(["%s"] * len(kept)), run_after=run_after)
        return cur.render_rows(statement, row, values)

    def _insert_chunk(self, cur: Cursor, sql: str, args: Sequence[Any] | None) -> None:
        try:
            cur.execute(sql, args)
        except DuplicateKeyError:
            # Another submit took one of the batch's idempotency keys after we looked
            # them up (request ids are the batch's own): look again, in a new transaction.
            raise TransientStoreError(
                "an idempotency key of the batch was taken meanwhile; retrying"
            ) from None

    def _by_request_id(self, cur: Cursor, batch: Batch, items: list[int]) -> dict[int, int]:
        """Item index -> id of the row its own request id made, for the items that have one.

        ``items`` ascend, and so do their request ids: a batch's share a random prefix
        (Batch), then the item's index. A range of them holds the batch's rows only;
        the lookup below ignores any other.
        """
        index = {batch.tasks[i].request_id: i for i in items}
        found: dict[int, int] = {}
        for part in _slices(items, READ_BACK_ITEMS):
            first, last = batch.tasks[part[0]].request_id, batch.tasks[part[-1]].request_id
            cur.execute(self.q.TASK_IDS_BY_REQUEST_ID_RANGE, (first, last))
            row = cur.fetchone()
            pairs = row["pairs"] if row else None
            for pair in (pairs or "").split(","):
                task_id, _, request_id = pair.partition(":")
                item = index.get(request_id)
                if item is not None:
                    found[item] = int(task_id)
        return found

    def _by_key(self, cur: Cursor, batch: Batch, items: list[int]) -> dict[int, int]:
        """Item index -> id of the task its idempotency key already names (same request).

        A key that names a different request fails the batch, naming the item.
        """
        index = {key: i for i in items if (key := batch.tasks[i].idempotency_key) is not None}
        found: dict[int, int] = {}
        for part in _slices(list(index), KEYS_PER_STATEMENT):
            cur.execute(self.q.TASKS_BY_IDEMPOTENCY_KEYS.format(keys=_marks(part)), part)
            for row in cur.fetchall():
                item = index[row["idempotency_key"]]
                if not batch.tasks[item].same_request(row):
                    raise IdempotencyConflictError(
                        f"idempotency key {row['idempotency_key']!r} already names task "
                        f"{row['id']} with a different function, plugin or arguments"
                    ).at_item(item)
                found[item] = int(row["id"])
        return found


def _ids(batch: Batch, found: dict[int, int]) -> list[int]:
    """Every item's id: its own task's, or its twin's."""
    missing = [i for i in batch.own if i not in found]
    if missing:  # a row of this very transaction vanished: the store is not what it says
        raise StoreError(f"inserted tasks of items {missing[:5]} were not found again")
    return [found[twin] for twin in batch.twins]


def insert_params(task: NewTask) -> tuple[Any, ...]:
    """INSERT_TASKS_ROW's parameters, in order (the same as INSERT_TASK's)."""
    return (
        task.request_id,
        task.idempotency_key,
        task.plugin,
        task.plugin_version,
        task.function,
        task.args_json,
        task.kwargs_json,
        task.priority,
        task.datacenter,
        task.not_before,
        task.not_after,
        task.not_before,
        task.timeout,
        task.max_attempts,
        task.retry_backoff,
        task.limits_json,
        task.concurrency_key,
        task.concurrency_limit,
    )


def _chunks(tasks: Sequence[NewTask], items: list[int]) -> Iterator[list[int]]:
    """The items in order, cut into statements of bounded rows and argument bytes."""
    chunk: list[int] = []
    size = 0
    for i in items:
        task = tasks[i]
        task_bytes = len(task.args_json.encode()) + len(task.kwargs_json.encode())
        if chunk and (len(chunk) >= ROWS_PER_STATEMENT or size + task_bytes > BYTES_PER_STATEMENT):
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += task_bytes
    if chunk:
        yield chunk


def _ahead(items: list[T], render: Callable[[T], R]) -> Iterator[R]:
    """``render`` of each item in order; the next one renders in a thread while the
    caller uses this one (its round trip releases the GIL)."""
    if len(items) < 2:
        yield from map(render, items)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="taskman-bulk-render") as pool:
        upcoming = pool.submit(render, items[0])
        for item in items[1:]:
            current = upcoming.result()
            upcoming = pool.submit(render, item)
            yield current
        yield upcoming.result()


def _slices(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(values: list[str]) -> str:
    return ", ".join(["%s"] * len(values))
