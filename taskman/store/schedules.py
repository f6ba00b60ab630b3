"""ScheduleStore: schedules in the database, and the leader's transaction that fires a tick.

Firing is one transaction per schedule: read the row (locked) and the database's
clock, plan the ticks, advance ``next_tick`` with an UPDATE that is optimistic on
the value read and guarded by the leader's epoch, then insert one task per fired
tick under the tick's idempotency key. A stale leader's advance matches 0 rows
and its whole transaction is rolled back; and even a second writer for the same
tick would hit the UNIQUE key. So every tick has at most one task.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from taskman.errors import DuplicateKeyError, FencedError, TaskmanError, TransientStoreError
from taskman.schedules import (
    KEY_PREFIX,
    Misfire,
    Overlap,
    Schedule,
    ScheduleConflictError,
    ScheduleNotFoundError,
    ScheduleSpec,
    plan,
    tick_key,
)
from taskman.store.backend import Cursor, StoreDatabase, make_database

ACTIVE_STATES = ("queued", "running")


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def _naive(value: datetime) -> datetime:
    # DATETIME columns hold UTC (the session's time_zone is +00:00).
    return value.astimezone(UTC).replace(tzinfo=None)


def _spec(row: dict[str, Any]) -> ScheduleSpec:
    return ScheduleSpec(
        name=row["name"],
        plugin=row["plugin"],
        plugin_version=row["plugin_version"],
        function=row["function"],
        args_json=row["args"],
        kwargs_json=row["kwargs"],
        cron=row["cron"],
        timezone=row["timezone"],
        every=None if row["every_seconds"] is None else int(row["every_seconds"]),
        priority=int(row["priority"]),
        timeout=row["timeout_seconds"],
        max_attempts=int(row["max_attempts"]),
        retry_backoff=row["retry_backoff_seconds"],
        datacenter=row["datacenter"],
        misfire=Misfire(row["misfire"]),
        max_catch_up=int(row["max_catch_up"]),
        misfire_grace=int(row["misfire_grace_seconds"]),
        overlap=Overlap(row["overlap"]),
    )


def _schedule(row: dict[str, Any]) -> Schedule:
    return Schedule(
        spec=_spec(row),
        paused=bool(row["paused"]),
        next_tick=_aware(row["next_tick"]),
        last_tick=None if row["last_tick"] is None else _aware(row["last_tick"]),
        last_task_id=None if row["last_task_id"] is None else int(row["last_task_id"]),
        ticks_fired=int(row["ticks_fired"]),
        ticks_skipped=int(row["ticks_skipped"]),
        created_at=_aware(row["created_at"]),
        updated_at=_aware(row["updated_at"]),
    )


def _spec_values(spec: ScheduleSpec) -> tuple[Any, ...]:
    return (
        spec.plugin,
        spec.plugin_version,
        spec.function,
        spec.args_json,
        spec.kwargs_json,
        spec.cron,
        spec.timezone,
        spec.every,
        spec.priority,
        spec.timeout,
        spec.max_attempts,
        spec.retry_backoff,
        spec.datacenter,
        spec.misfire.value,
        spec.max_catch_up,
        spec.misfire_grace,
        spec.overlap.value,
    )


@dataclass(frozen=True)
class Fired:
    """What one leader pass did with one schedule."""

    name: str
    task_ids: tuple[int, ...]  # new tasks, oldest tick first
    ticks: tuple[datetime, ...]  # their ticks
    existing: int  # fired ticks whose task already existed (the UNIQUE key refused a second)
    missed: int  # ticks later than the grace period
    skipped: int  # ticks that got no task: misfire policy or overlap
    overlap_skipped: int
    next_tick: datetime
    exact: bool


@dataclass(frozen=True)
class TickTask:
    tick: datetime
    task_id: int
    state: str
    created_at: datetime


class ScheduleStore:
    def __init__(self, db: StoreDatabase | str) -> None:
        self.db = make_database(db) if isinstance(db, str) else db
        self.q = self.db.q  # this backend's statements (queries or queries_sqlite)

    def close(self) -> None:
        self.db.close()

    def _now(self, cur: Cursor) -> datetime:
        cur.execute(self.q.NOW)
        row = cur.fetchone()
        assert row is not None
        return _aware(next(iter(row.values())))

    # -- management ---------------------------------------------------------------
    def add(self, spec: ScheduleSpec, *, paused: bool = False, replace: bool = False) -> Schedule:
        """Create a schedule; the same definition again is a no-op that returns the stored one.

        A different definition under an existing name raises ScheduleConflictError,
        unless ``replace``: then the new definition ticks from now on.
        """
        timetable = spec.timetable()

        def fn(cur: Cursor) -> Schedule:
            now = self._now(cur)
            cur.execute(self.q.LOCK_SCHEDULE, (spec.name,))
            row = cur.fetchone()
            first = _naive(timetable.next_after(now))
            if row is None:
                try:
                    cur.execute(
                        self.q.INSERT_SCHEDULE, (spec.name, *_spec_values(spec), int(paused), first)
                    )
                except DuplicateKeyError:
                    # A concurrent add of the same name won: compare with its row.
                    raise TransientStoreError("schedule added concurrently; retrying") from None
            elif not _spec(row).same_as(spec):
                if not replace:
                    raise ScheduleConflictError(
                        f"schedule {spec.name!r} already exists with a different definition; "
                        "remove it first or add it with replace=True (CLI: --replace)"
                    )
                cur.execute(self.q.REPLACE_SCHEDULE, (*_spec_values(spec), first, spec.name))
            cur.execute(self.q.GET_SCHEDULE, (spec.name,))
            return _schedule(self._one(cur, spec.name))

        # Safe to repeat after an ambiguous commit: a second run finds the same definition.
        return self.db.run(fn)

    @staticmethod
    def _one(cur: Cursor, name: str) -> dict[str, Any]:
        row = cur.fetchone()
        if row is None:
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        return row

    def get(self, name: str) -> Schedule:
        def fn(cur: Cursor) -> Schedule:
            cur.execute(self.q.GET_SCHEDULE, (name,))
            return _schedule(self._one(cur, name))

        return self.db.run(fn)

    def list_all(self) -> list[Schedule]:
        return [_schedule(r) for r in self.db.query(self.q.LIST_SCHEDULES)]

    def pause(self, name: str) -> Schedule:
        def fn(cur: Cursor) -> Schedule:
            cur.execute(self.q.PAUSE_SCHEDULE, (name,))
            cur.execute(self.q.GET_SCHEDULE, (name,))
            return _schedule(self._one(cur, name))

        return self.db.run(fn)

    def resume(self, name: str) -> Schedule:
        """Unpause; the next tick is the first one after now (ticks while paused never run)."""

        def fn(cur: Cursor) -> Schedule:
            now = self._now(cur)
            cur.execute(self.q.LOCK_SCHEDULE, (name,))
            row = self._one(cur, name)
            if row["paused"]:
                first = _spec(row).timetable().next_after(now)
                cur.execute(self.q.RESUME_SCHEDULE, (_naive(first), name))
            cur.execute(self.q.GET_SCHEDULE, (name,))
            return _schedule(self._one(cur, name))

        return self.db.run(fn)

    def remove(self, name: str) -> None:
        """Delete the schedule; tasks it already created stay."""

        def fn(cur: Cursor) -> int:
            return int(cur.execute(self.q.DELETE_SCHEDULE, (name,)))

        def reread(cur: Cursor) -> int | None:
            cur.execute(self.q.GET_SCHEDULE, (name,))
            return 1 if cur.fetchone() is None else None

        if not self.db.run(fn, on_ambiguous=reread):
            raise ScheduleNotFoundError(f"no schedule named {name!r}")

    def tick_tasks(self, name: str) -> list[TickTask]:
        """The tasks this schedule's ticks created (also before a remove), oldest tick first."""
        pattern = KEY_PREFIX + name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
        rows = self.db.query(self.q.TICK_TASKS, (pattern + ":%",))
        out = []
        for r in rows:
            stamp = r["idempotency_key"].rsplit(":", 3)
            tick = datetime.fromisoformat(":".join(stamp[1:]).replace("Z", "+00:00"))
            out.append(TickTask(tick, int(r["id"]), r["state"], _aware(r["created_at"])))
        return out

    # -- the leader ---------------------------------------------------------------
    def due(self, limit: int = 100) -> list[str]:
        """Names of unpaused schedules whose next tick has come, by the database's clock."""
        return [r["name"] for r in self.db.query(self.q.DUE_SCHEDULES, (limit,))]

    def lag(self) -> float:
        """Seconds the most overdue unpaused schedule's next tick is behind the database's clock."""
        lag_us = self.db.query(self.q.SCHEDULE_LAG)[0]["lag_us"]
        return max(0, int(lag_us or 0)) / 1e6

    def fire(self, name: str, *, role: str, epoch: int) -> Fired | None:
        """Turn the due ticks of one schedule into tasks; None if nothing was due or we may not.

        None also when the schedule was paused, replaced or removed meanwhile.
        FencedError when this leader's epoch is no longer current: nothing was written.
        """
        try:
            # Safe to repeat after an ambiguous commit: a run that finds next_tick
            # already advanced fires nothing twice, and the keys refuse duplicates.
            return self.db.run(lambda cur: self._fire_in(cur, name, role, epoch))
        except _ScheduleChangedError:
            return None

    def _fire_in(self, cur: Cursor, name: str, role: str, epoch: int) -> Fired | None:
        now = self._now(cur)
        cur.execute(self.q.LOCK_SCHEDULE, (name,))
        row = cur.fetchone()
        if row is None or row["paused"]:
            return None
        spec = _spec(row)
        current = _aware(row["next_tick"])
        if current > now:
            return None
        step = plan(
            spec.timetable(),
            next_tick=current,
            now=now,
            misfire=spec.misfire,
            max_catch_up=spec.max_catch_up,
            grace=spec.misfire_grace,
        )
        last_id = None if row["last_task_id"] is None else int(row["last_task_id"])
        made = self._insert_ticks(cur, spec, step.fire, last_id)
        skipped = step.skipped + made.overlap_skipped
        advance = (
            _naive(step.next_tick),
            None if made.last_tick is None else _naive(made.last_tick),
            made.last_id,
            len(made.new_ids) + made.existing,
            skipped,
            name,
            _naive(current),
            role,
            epoch,
        )
        if not cur.execute(self.q.ADVANCE_SCHEDULE, advance):
            self._why_not_advanced(cur, name, role, epoch)  # raises: rolls the tasks back
        return Fired(
            name=name,
            task_ids=tuple(made.new_ids),
            ticks=tuple(made.new_ticks),
            existing=made.existing,
            missed=step.missed,
            skipped=skipped,
            overlap_skipped=made.overlap_skipped,
            next_tick=step.next_tick,
            exact=step.exact,
        )

    def _insert_ticks(
        self, cur: Cursor, spec: ScheduleSpec, ticks: Iterable[datetime], last_id: int | None
    ) -> _Inserted:
        """A task per tick, except while the last one is still active under overlap=skip."""
        made = _Inserted(last_id=last_id)
        for tick in ticks:
            if spec.overlap is Overlap.SKIP and made.last_id is not None:
                cur.execute(self.q.TASK_STATE, (made.last_id,))
                prev = cur.fetchone()
                if prev is not None and prev["state"] in ACTIVE_STATES:
                    made.overlap_skipped += 1
                    continue
            task_id, created = self._insert_tick(cur, spec, tick)
            made.last_id, made.last_tick = task_id, tick
            if created:
                made.new_ids.append(task_id)
                made.new_ticks.append(tick)
            else:
                made.existing += 1
        return made

    def _why_not_advanced(self, cur: Cursor, name: str, role: str, epoch: int) -> NoReturn:
        """The schedule did not advance: this leader was replaced, or the schedule changed."""
        cur.execute(self.q.LEADERSHIP, (role,))
        leader = cur.fetchone()
        if leader is None or int(leader["epoch"]) != epoch:
            raise FencedError(
                f"leader epoch {epoch} is no longer current; schedule {name!r} not fired"
            )
        raise _ScheduleChangedError

    def _insert_tick(self, cur: Cursor, spec: ScheduleSpec, tick: datetime) -> tuple[int, bool]:
        """Insert the tick's task; (id, True), or the existing task's (id, False)."""
        key = tick_key(spec.name, tick)
        try:
            cur.execute(
                self.q.INSERT_TICK_TASK,
                (
                    uuid.uuid4().hex,
                    key,
                    spec.plugin,
                    spec.plugin_version,
                    spec.function,
                    spec.args_json,
                    spec.kwargs_json,
                    spec.priority,
                    spec.datacenter,
                    spec.timeout,
                    spec.max_attempts,
                    spec.retry_backoff,
                ),
            )
            return int(cur.lastrowid), True
        except DuplicateKeyError:
            pass  # the tick's task exists: its id is read below
        cur.execute(self.q.TASK_ID_BY_KEY, (key,))
        row = cur.fetchone()
        if row is None:  # the holder of the key was deleted in between
            raise TransientStoreError(f"duplicate key {key!r}, but no row holds it; retrying")
        return int(row["id"]), False


@dataclass
class _Inserted:
    """What one fire inserted."""

    last_id: int | None
    last_tick: datetime | None = None
    new_ids: list[int] = field(default_factory=list)
    new_ticks: list[datetime] = field(default_factory=list)
    existing: int = 0
    overlap_skipped: int = 0


class _ScheduleChangedError(TaskmanError):
    """The schedule changed under the leader (pause, replace, remove): roll back, fire nothing."""
