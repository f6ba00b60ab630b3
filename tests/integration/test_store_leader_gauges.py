"""What the leader's gauges read from the store: the oldest queued wait and the schedule lag.

A contract test: every test runs on MariaDB and on SQLite (``store_dsn``). Times
are moved on the database's clock (``shift``), so nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta

import pytest

from taskman import Client, Outcome
from taskman.store import TaskStore
from taskman.store.schedules import ScheduleStore
from tests.integration.backends import db_now, raw, shift

PLUGINS = {"demo": ["1.0"]}


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


@pytest.fixture
def store(dsn: str) -> Iterator[TaskStore]:
    s = TaskStore(dsn)
    try:
        yield s
    finally:
        s.close()


def _queued_for(dsn: str, client: Client, seconds: float) -> int:
    """A queued task that became due ``seconds`` ago (negative: due in the future)."""
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(1, 2))
    shift(dsn, task_id, "run_after", -seconds)
    shift(dsn, task_id, "updated_at", min(-seconds, 0.0))
    return task_id


def test_the_oldest_wait_is_that_of_the_longest_waiting_due_task(
    dsn: str, store: TaskStore
) -> None:
    assert store.oldest_queued_wait() == 0.0  # nothing queued
    with Client(dsn) as client:
        _queued_for(dsn, client, -300)  # not due for 5 min: not waiting yet
        assert store.oldest_queued_wait() == 0.0
        _queued_for(dsn, client, 30)
        oldest = _queued_for(dsn, client, 120)
        assert 120 <= store.oldest_queued_wait() < 125
        # Claimed, it is no longer waiting; the next oldest is.
        assert store.claim(oldest, 0, 100, "n-a", "dc1", "1.0") is not None
        assert 30 <= store.oldest_queued_wait() < 35


def test_a_reclaimed_task_waits_from_its_reclaim_not_its_old_place_in_line(
    dsn: str, store: TaskStore
) -> None:
    with Client(dsn) as client:
        task_id = _queued_for(dsn, client, 600)
    assert store.claim(task_id, 0, 100, "n-a", "dc1", "1.0") is not None
    assert store.take_leadership("reaper", 1, "n1")
    (lost,) = store.running()
    assert store.reclaim(
        lost, outcome=Outcome.NODE_LOST, reason="gone", give_up=False, role="reaper", epoch=1
    )
    # It keeps its old run_after (it goes first in line) but has waited only since now.
    with raw(dsn) as cur:
        cur.execute("SELECT run_after FROM tasks WHERE id = %s", (task_id,))
        row = cur.fetchone()
    assert row is not None
    assert (db_now(dsn) - row["run_after"].replace(tzinfo=UTC)).total_seconds() > 590
    assert store.oldest_queued_wait() < 5


def test_schedule_lag_is_how_late_the_most_overdue_unpaused_tick_is(dsn: str) -> None:
    schedules = ScheduleStore(dsn)
    try:
        assert schedules.lag() == 0.0  # no schedules
        with Client(dsn) as client:
            client.add_schedule("hourly", "demo.tasks:add", plugin="demo", every=3600)
            client.add_schedule("daily", "demo.tasks:add", plugin="demo", every=86400)
            assert schedules.lag() == 0.0  # next ticks in the future
            _tick_due(dsn, "hourly", 90)
            _tick_due(dsn, "daily", 40)
            assert 90 <= schedules.lag() < 95
            client.pause_schedule("hourly")  # a paused schedule is not late
            assert 40 <= schedules.lag() < 45
    finally:
        schedules.db.close()


def _tick_due(dsn: str, name: str, seconds: float) -> None:
    with raw(dsn) as cur:
        cur.execute(
            "UPDATE schedules SET next_tick = %s WHERE name = %s",
            (db_now(dsn) - timedelta(seconds=seconds), name),
        )
