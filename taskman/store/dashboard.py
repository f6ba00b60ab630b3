"""Read-only queries for the admin web UI (taskman/web/): task pages, counts, throughput.

The task list pages by id, newest first, and must stay fast with millions of rows.
A filter that no index orders by id (a state alone, a function, a datacenter) is
read in bounded id windows: each statement examines at most one window of the
primary key, and a page that has not filled up within the time budget says how far
it searched instead of scanning the whole table in one go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from taskman.errors import ValidationError
from taskman.models import task_fields
from taskman.states import TaskState
from taskman.store.backend import StoreDatabase, make_database

FIRST_WINDOW = 20_000  # ids examined by the first windowed statement of a page
MAX_WINDOW = 100_000  # about 0.1 s of primary-key scan on a laptop-sized server
SCAN_BUDGET = 0.4  # seconds a page may spend on windows before it reports how far it got
MAX_LIMIT = 500


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _naive_utc(value: datetime) -> datetime:
    # The store keeps UTC in DATETIME columns (sessions run at time_zone '+00:00').
    return value.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class TaskFilter:
    state: TaskState | None = None
    plugin: str | None = None
    function: str | None = None
    datacenter: str | None = None  # where it ran, or the datacenter it is pinned to
    since: datetime | None = None  # created at or after (aware)
    until: datetime | None = None  # created before (aware)
    search: str | None = None  # a task id, an idempotency key, or the start of one

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValidationError(f"{name} must be timezone-aware")

    @property
    def timed(self) -> bool:
        return self.since is not None or self.until is not None

    @property
    def index_ordered(self) -> bool:
        """True when one index yields matches in id order, so LIMIT stops early."""
        plain = not (self.state or self.plugin or self.function or self.datacenter)
        plugin_state = bool(self.plugin and self.state and not (self.function or self.datacenter))
        return plain or plugin_state  # tasks_plugin is (plugin, state, id)


@dataclass(frozen=True)
class TaskRow:
    """One line of the task list."""

    id: int
    state: TaskState
    plugin: str
    plugin_version: str | None
    function: str
    datacenter: str | None
    owner: str | None
    owner_datacenter: str | None
    attempt: int
    max_attempts: int
    failures: int
    reclaims: int
    progress: float | None
    progress_message: str | None
    abort_requested: bool
    idempotency_key: str | None
    error_type: str | None
    error_message: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TaskRow:
        return cls(**task_fields(cls, row))


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskRow]
    older: int | None = None  # more matches below this id: the next page is before=<older>
    searched_to: int | None = None  # budget spent: ids below this were not searched yet
    statements: int = 0  # how many SELECTs the page took (for tests and docs)


@dataclass(frozen=True)
class Bucket:
    """Tasks that finished in one 5-minute bucket; ``age`` 0 is the latest bucket."""

    age: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Leadership:
    node: str
    epoch: int
    since: datetime | None


class DashboardStore:
    def __init__(self, db: StoreDatabase | str) -> None:
        self.db = make_database(db) if isinstance(db, str) else db
        self.q = self.db.q  # this backend's statements (queries or queries_sqlite)

    def close(self) -> None:
        self.db.close()

    # -- the task list ---------------------------------------------------------
    def page(
        self,
        flt: TaskFilter,
        *,
        before: int | None = None,
        limit: int = 50,
        first_window: int = FIRST_WINDOW,
        budget: float = SCAN_BUDGET,
    ) -> TaskPage:
        """Up to ``limit`` matching tasks, newest first, with ids below ``before``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        if flt.search:
            return self._search(flt, limit)
        if flt.timed:
            return self._by_time(flt, before, limit)
        if flt.index_ordered:
            sql, args = self._where(self.q.UI_LIST, flt)
            if before is not None:
                sql += self.q.UI_FILTERS["id_below"]
                args.append(before)
            rows = self._rows(sql + self.q.UI_ORDER_ID, [*args, limit + 1])
            return self._cut(rows, limit, statements=1)
        return self._windowed(flt, before, limit, first_window, budget)

    def _where(self, base: str, flt: TaskFilter) -> tuple[str, list[Any]]:
        sql = base
        args: list[Any] = []
        if flt.state is not None:
            sql += self.q.UI_FILTERS["state"]
            args.append(flt.state.value)
        for name in ("plugin", "function"):
            value = getattr(flt, name)
            if value:
                sql += self.q.UI_FILTERS[name]
                args.append(value)
        if flt.datacenter:
            sql += self.q.UI_FILTERS["datacenter"]
            args += [flt.datacenter, flt.datacenter]
        if flt.since is not None:
            sql += self.q.UI_FILTERS["since"]
            args.append(_naive_utc(flt.since))
        if flt.until is not None:
            sql += self.q.UI_FILTERS["until"]
            args.append(_naive_utc(flt.until))
        return sql, args

    def _rows(self, sql: str, args: list[Any]) -> list[TaskRow]:
        return [TaskRow.from_row(r) for r in self.db.query(sql, args)]

    @staticmethod
    def _cut(rows: list[TaskRow], limit: int, *, statements: int) -> TaskPage:
        if len(rows) > limit:
            return TaskPage(rows[:limit], older=rows[limit - 1].id, statements=statements)
        return TaskPage(rows, statements=statements)

    def _windowed(
        self, flt: TaskFilter, before: int | None, limit: int, first_window: int, budget: float
    ) -> TaskPage:
        top = before
        statements = 0
        if top is None:
            found = self.db.query(self.q.UI_MAX_ID)
            statements += 1
            if not found or found[0]["id"] is None:
                return TaskPage([], statements=statements)
            top = int(found[0]["id"]) + 1
        base, base_args = self._where(self.q.UI_LIST, flt)
        rows: list[TaskRow] = []
        window = first_window
        deadline = time.monotonic() + budget
        while top > 0 and len(rows) <= limit:
            floor = max(top - window, 0)
            sql = (
                base
                + self.q.UI_FILTERS["id_below"]
                + self.q.UI_FILTERS["id_from"]
                + self.q.UI_ORDER_ID
            )
            rows += self._rows(sql, [*base_args, top, floor, limit + 1 - len(rows)])
            statements += 1
            top = floor
            window = min(window * 2, max(MAX_WINDOW, first_window))
            if time.monotonic() >= deadline:
                break
        page = self._cut(rows, limit, statements=statements)
        if page.older is None and top > 0:
            return TaskPage(page.rows, searched_to=top, statements=statements)
        return page

    def _by_time(self, flt: TaskFilter, before: int | None, limit: int) -> TaskPage:
        sql, args = self._where(self.q.UI_LIST_BY_TIME, flt)
        statements = 0
        if before is not None:
            found = self.db.query(self.q.UI_CREATED_AT, (before,))
            statements += 1
            if found:  # keyset on (created_at, id), the order tasks_created keeps
                at = found[0]["created_at"]
                sql += self.q.UI_FILTERS["time_cursor"]
                args += [at, at, before]
            else:  # the cursor's task was pruned meanwhile: ids still page correctly enough
                sql += self.q.UI_FILTERS["id_below"]
                args.append(before)
        rows = self._rows(sql + self.q.UI_ORDER_TIME, [*args, limit + 1])
        return self._cut(rows, limit, statements=statements + 1)

    def _search(self, flt: TaskFilter, limit: int) -> TaskPage:
        """Exact id, exact idempotency key, then keys that start with the text."""
        text = (flt.search or "").strip()
        plain = TaskFilter(
            flt.state, flt.plugin, flt.function, flt.datacenter, flt.since, flt.until
        )
        base, base_args = self._where(self.q.UI_LIST, plain)
        rows: list[TaskRow] = []
        statements = 0
        if text.isdigit() and len(text) <= 19:
            rows += self._rows(
                base + self.q.UI_FILTERS["id_is"] + self.q.UI_ORDER_ID, [*base_args, int(text), 1]
            )
            statements += 1
        seen = {r.id for r in rows}
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        sql = base + self.q.UI_FILTERS["key_prefix"] + self.q.UI_ORDER_KEY
        statements += 1
        for row in self._rows(sql, [*base_args, escaped + "%", limit + 1]):
            if row.id not in seen:
                rows.append(row)
                seen.add(row.id)
        # Prefix matches come in key order; an exact key is among them, first.
        return TaskPage(rows[:limit], statements=statements)

    # -- the dashboard -----------------------------------------------------------
    def counts(self) -> dict[str, int]:
        found = {r["state"]: int(r["COUNT(*)"]) for r in self.db.query(self.q.COUNT_BY_STATE)}
        return {s.value: found.get(s.value, 0) for s in TaskState}

    def throughput(self, *, span: int = 3600, bucket: int = 300) -> list[Bucket]:
        """Finished tasks by state per ``bucket`` seconds over the last ``span``, latest first."""
        buckets = [Bucket(age) for age in range(span // bucket)]
        for row in self.db.query(self.q.UI_THROUGHPUT, (bucket, span)):
            age = int(row["bucket"])
            if 0 <= age < len(buckets):
                buckets[age].counts[row["state"]] = int(row["n"])
        return buckets

    def running_owners(self) -> dict[tuple[str, str], int]:
        """(node, datacenter) -> running tasks it owns, as the database sees it."""
        return {
            (str(r["owner"]), str(r["owner_datacenter"] or "?")): int(r["n"])
            for r in self.db.query(self.q.UI_RUNNING_OWNERS)
            if r["owner"] is not None
        }

    def leadership(self) -> Leadership | None:
        found = self.db.query(self.q.UI_LEADERSHIP)
        if not found:
            return None
        row = found[0]
        return Leadership(node=row["node"], epoch=int(row["epoch"]), since=_utc(row["since"]))
