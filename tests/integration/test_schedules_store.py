"""ScheduleStore and the leader's fire transaction against a real MariaDB and SQLite.

The database's clock decides what is due, so these tests set it: MariaDB's
``SET timestamp`` moves NOW(6) for the store's own session; on SQLite the
database object's ``clock`` does. A contract test: it runs on both (``store_dsn``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from taskman import Client, FencedError, TaskState, ValidationError
from taskman.lab import MariaDBServer
from taskman.schedules import (
    ScheduleConflictError,
    ScheduleNotFoundError,
    ScheduleSpec,
    build_spec,
    tick_key,
)
from taskman.store import SQLiteDatabase, TaskStore
from taskman.store.migrations import migrate, schema_fingerprint
from taskman.store.schedules import Fired, ScheduleStore

ROLE = "reaper"
EPOCH = 7


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


class Clocked:
    """A ScheduleStore whose session clock (NOW(6)) the test sets."""

    def __init__(self, dsn: str) -> None:
        self.store = ScheduleStore(dsn)
        self.tasks = TaskStore(self.store.db)
        assert self.tasks.take_leadership(ROLE, EPOCH, "test-leader")

    def at(self, moment: datetime) -> ScheduleStore:
        db = self.store.db
        if isinstance(db, SQLiteDatabase):
            db.clock = lambda: moment
        else:
            db.execute("SET timestamp = %s", (moment.timestamp(),))
        (row,) = db.query(db.q.NOW)
        assert row["NOW(6)"].replace(tzinfo=UTC) == moment  # the session really moved
        return self.store

    def fire(self, name: str, moment: datetime, epoch: int = EPOCH) -> Fired | None:
        return self.at(moment).fire(name, role=ROLE, epoch=epoch)

    def keys(self, name: str) -> list[str]:
        return [tick_key(name, t.tick) for t in self.store.tick_tasks(name)]


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


@pytest.fixture
def clocked(dsn: str) -> Iterator[Clocked]:
    c = Clocked(dsn)
    yield c
    c.store.close()


def spec(name: str = "s", **overrides: Any) -> ScheduleSpec:
    values: dict[str, Any] = {"plugin": "demo", "every": 60, "args": [1, 2], **overrides}
    return build_spec(name, "demo.tasks:add", **values)


def test_add_is_idempotent_by_name_and_refuses_a_different_definition(
    clocked: Clocked, client: Client
) -> None:
    store = clocked.at(utc(2026, 5, 1, 10, 0, 30))
    first = store.add(spec(), paused=True)
    assert first.next_tick == utc(2026, 5, 1, 10, 1) and first.paused
    # The same definition again: no change, not even to paused.
    assert clocked.at(utc(2026, 5, 1, 10, 5)).add(spec()) == first
    with pytest.raises(ScheduleConflictError, match="different definition"):
        store.add(spec(args=[1, 3]))
    assert store.get("s").spec.args_json == "[1,2]"
    replaced = clocked.at(utc(2026, 5, 1, 10, 7, 10)).add(spec(args=[1, 3]), replace=True)
    assert replaced.spec.args_json == "[1,3]" and replaced.next_tick == utc(2026, 5, 1, 10, 8)
    assert replaced.paused  # replace keeps the paused state
    # Through the client, with its validation.
    with pytest.raises(ValidationError, match="invalid cron expression '61 \\* \\* \\* \\*'"):
        client.add_schedule("c", "demo.tasks:add", plugin="demo", cron="61 * * * *")
    with pytest.raises(ValidationError, match="unknown timezone 'Europe/Atlantis'"):
        client.add_schedule(
            "c", "demo.tasks:add", plugin="demo", cron="0 * * * *", timezone="Europe/Atlantis"
        )
    made = client.add_schedule("c", "demo.tasks:add", plugin="demo", cron="@hourly")
    assert made.spec.cron == "0 * * * *"
    assert [s.name for s in client.list_schedules()] == ["c", "s"]
    assert client.get_schedule("c") == made


def test_unknown_names_raise_not_found(client: Client) -> None:
    for call in (
        client.get_schedule,
        client.pause_schedule,
        client.resume_schedule,
        client.remove_schedule,
    ):
        with pytest.raises(ScheduleNotFoundError, match="no schedule named 'ghost'"):
            call("ghost")


def test_a_due_tick_becomes_one_task_with_the_schedule_options(
    clocked: Clocked, client: Client
) -> None:
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(
        spec(priority=7, timeout=9.5, max_attempts=4, datacenter="dc2", version="1.0")
    )
    assert clocked.fire("s", utc(2026, 5, 1, 10, 0, 59)) is None  # not due yet
    fired = clocked.fire("s", utc(2026, 5, 1, 10, 1, 0, 300000))
    assert fired is not None and fired.ticks == (utc(2026, 5, 1, 10, 1),)
    assert fired.next_tick == utc(2026, 5, 1, 10, 2)
    task = client.get(fired.task_ids[0])
    assert task.state is TaskState.QUEUED
    assert task.idempotency_key == "schedule:s:2026-05-01T10:01:00Z"
    assert (task.function, task.plugin, task.plugin_version) == ("demo.tasks:add", "demo", "1.0")
    assert (task.args, task.priority, task.timeout) == ([1, 2], 7, 9.5)
    assert (task.max_attempts, task.datacenter) == (4, "dc2")
    # The same moment again: nothing is due, nothing doubles.
    assert clocked.fire("s", utc(2026, 5, 1, 10, 1, 0, 400000)) is None
    stored = clocked.store.get("s")
    assert stored.last_tick == utc(2026, 5, 1, 10, 1) and stored.last_task_id == task.id
    assert stored.ticks_fired == 1 and stored.next_tick == utc(2026, 5, 1, 10, 2)
    assert clocked.store.due() == []


def test_a_stale_leader_fires_nothing(clocked: Clocked) -> None:
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(spec())
    assert clocked.tasks.take_leadership(ROLE, EPOCH + 10, "new-leader")
    with pytest.raises(FencedError, match=f"epoch {EPOCH} is no longer current"):
        clocked.fire("s", utc(2026, 5, 1, 10, 1, 1))
    assert clocked.keys("s") == []  # the task insert was rolled back with the advance
    assert clocked.store.get("s").next_tick == utc(2026, 5, 1, 10, 1)
    fired = clocked.fire("s", utc(2026, 5, 1, 10, 1, 1), epoch=EPOCH + 10)
    assert fired is not None and len(fired.task_ids) == 1
    assert clocked.keys("s") == ["schedule:s:2026-05-01T10:01:00Z"]


def test_the_unique_tick_key_refuses_a_second_task_for_a_tick(
    clocked: Clocked, client: Client
) -> None:
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(spec())
    # A task already holds the tick's key (as if another writer had got there first).
    other = client.submit(
        "demo.tasks:add",
        plugin="demo",
        args=(1, 2),
        idempotency_key=tick_key("s", utc(2026, 5, 1, 10, 1)),
    )
    fired = clocked.fire("s", utc(2026, 5, 1, 10, 1, 5))
    assert fired is not None and fired.task_ids == () and fired.existing == 1
    assert [t.task_id for t in clocked.store.tick_tasks("s")] == [other]
    stored = clocked.store.get("s")
    assert stored.last_task_id == other and stored.next_tick == utc(2026, 5, 1, 10, 2)


def test_misfire_policies_on_the_database_clock(clocked: Clocked) -> None:
    added = utc(2026, 5, 1, 9, 59, 30)
    for name, policy in (("skip", "skip"), ("once", "run_once"), ("catch", "catch_up")):
        clocked.at(added).add(spec(name, misfire=policy, max_catch_up=3, misfire_grace=60))
    # No leader from 10:00 to 10:10:30: ticks 10:00-10:09 are missed, 10:10 is on time.
    now = utc(2026, 5, 1, 10, 10, 30)
    results = {name: clocked.fire(name, now) for name in ("skip", "once", "catch")}
    minutes = {name: [t.tick.minute for t in clocked.store.tick_tasks(name)] for name in results}
    assert minutes == {"skip": [10], "once": [0, 10], "catch": [7, 8, 9, 10]}
    skipped = {name: clocked.store.get(name).ticks_skipped for name in results}
    assert skipped == {"skip": 10, "once": 9, "catch": 7}
    for name, fired in results.items():
        assert fired is not None and fired.missed == 10
        assert clocked.store.get(name).next_tick == utc(2026, 5, 1, 10, 11)


def test_dst_days_in_berlin_on_the_database_clock(clocked: Clocked) -> None:
    daily = spec("daily", every=None, cron="30 2 * * *", timezone="Europe/Berlin")
    # Spring forward, 2026-03-29: 02:30 does not exist; it runs at 03:00 CEST (01:00 UTC).
    assert clocked.at(utc(2026, 3, 28, 12)).add(daily).next_tick == utc(2026, 3, 29, 1, 0)
    fired = clocked.fire("daily", utc(2026, 3, 29, 1, 0, 0, 200000))
    assert fired is not None and fired.ticks == (utc(2026, 3, 29, 1, 0),)
    assert fired.next_tick == utc(2026, 3, 30, 0, 30)  # 02:30 CEST
    # Fall back, 2026-10-25: 02:30 happens twice; it runs once, at the first (00:30 UTC).
    clocked.store.remove("daily")
    assert clocked.at(utc(2026, 10, 24, 12)).add(daily).next_tick == utc(2026, 10, 25, 0, 30)
    fired = clocked.fire("daily", utc(2026, 10, 25, 0, 30, 0, 200000))
    assert fired is not None and fired.next_tick == utc(2026, 10, 26, 1, 30)
    assert clocked.fire("daily", utc(2026, 10, 25, 1, 30, 0, 200000)) is None  # the second 02:30
    assert clocked.keys("daily") == [
        "schedule:daily:2026-03-29T01:00:00Z",
        "schedule:daily:2026-10-25T00:30:00Z",
    ]


def test_overlap_skip_waits_for_the_previous_run(clocked: Clocked, client: Client) -> None:
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(spec(overlap="skip"))
    first = clocked.fire("s", utc(2026, 5, 1, 10, 1, 1))
    assert first is not None and len(first.task_ids) == 1
    # The first run is still queued at 10:02: that tick is skipped.
    second = clocked.fire("s", utc(2026, 5, 1, 10, 2, 1))
    assert second is not None and second.task_ids == () and second.overlap_skipped == 1
    client.abort(first.task_ids[0])  # now terminal
    third = clocked.fire("s", utc(2026, 5, 1, 10, 3, 1))
    assert third is not None and third.ticks == (utc(2026, 5, 1, 10, 3),)
    assert [t.tick.minute for t in clocked.store.tick_tasks("s")] == [1, 3]
    assert clocked.store.get("s").ticks_skipped == 1
    # Without overlap control both ticks run.
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(spec("free"))
    clocked.fire("free", utc(2026, 5, 1, 10, 1, 1))
    clocked.fire("free", utc(2026, 5, 1, 10, 2, 1))
    assert len(clocked.store.tick_tasks("free")) == 2


def test_pause_resume_and_remove(clocked: Clocked) -> None:
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(spec())
    paused = clocked.at(utc(2026, 5, 1, 10, 0, 40)).pause("s")
    assert paused.paused
    assert clocked.store.due() == []
    assert clocked.fire("s", utc(2026, 5, 1, 10, 5, 1)) is None
    resumed = clocked.at(utc(2026, 5, 1, 10, 5, 30)).resume("s")
    # Ticks while paused never run: the next one is the first after now.
    assert not resumed.paused and resumed.next_tick == utc(2026, 5, 1, 10, 6)
    assert clocked.store.resume("s") == clocked.store.get("s")  # resuming twice is a no-op
    fired = clocked.fire("s", utc(2026, 5, 1, 10, 6, 1))
    assert fired is not None and fired.missed == 0
    clocked.store.remove("s")
    with pytest.raises(ScheduleNotFoundError):
        clocked.store.remove("s")
    assert clocked.fire("s", utc(2026, 5, 1, 10, 7, 1)) is None
    # Its tasks stay.
    assert [t.tick for t in clocked.store.tick_tasks("s")] == [utc(2026, 5, 1, 10, 6)]


def test_names_that_look_like_like_patterns_stay_apart(clocked: Clocked) -> None:
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(spec("a_b"))
    clocked.at(utc(2026, 5, 1, 10, 0, 30)).add(spec("axb"))
    clocked.fire("axb", utc(2026, 5, 1, 10, 1, 1))
    assert clocked.store.tick_tasks("a_b") == []
    assert len(clocked.store.tick_tasks("axb")) == 1
    assert clocked.store.due(limit=10) == ["a_b"]


def test_schema_sql_and_the_numbered_migrations_agree_on_schedules(mariadb: MariaDBServer) -> None:
    names = [f"m_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    stepwise, fresh = (mariadb.create_database(n) for n in names)
    try:
        assert 4 not in migrate(stepwise, target=3)  # a database from before schedules
        assert 4 in migrate(stepwise)  # gets 0004_schedules.sql
        migrate(fresh)  # gets schema.sql in one go
        one, other = schema_fingerprint(stepwise), schema_fingerprint(fresh)
        assert "KEY `schedules_due` (`paused`,`next_tick`)" in one["schedules"]
        assert one["schedules"] == other["schedules"]
    finally:
        for name in names:
            mariadb.drop_database(name)
