"""A process stalled inside a transaction (SIGSTOP, a VM pause) holds its row locks.

A leader paused between a guarded write and its COMMIT keeps a shared lock on
the ``leadership`` row (InnoDB locks what a DML statement's subquery reads). Its
successor's ``take_leadership`` needs that row: without a bound it waited out
``innodb_lock_wait_timeout`` (50 s), and the cluster had no leader for as long
(seen once in CI: no new leader 20 s after pausing the old one). The server must
end such a transaction after ``IDLE_TRANSACTION_LIMIT`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from taskman.errors import StoreError, TransientStoreError
from taskman.store import TaskStore, make_database
from taskman.store import queries as q
from taskman.store.connection import IDLE_TRANSACTION_LIMIT, MySQLCursor

# The successor's own retries and round trips on top of the limit.
SLACK = 3.0


@pytest.fixture
def stores(dsn: str) -> Iterator[tuple[TaskStore, TaskStore]]:
    old, new = TaskStore(make_database(dsn)), TaskStore(make_database(dsn, retry_deadline=60))
    yield old, new
    old.close()
    new.close()


def test_a_leader_stalled_mid_transaction_does_not_keep_its_successor_out(
    stores: tuple[TaskStore, TaskStore],
) -> None:
    old, new = stores
    assert old.take_leadership("reaper", 10, "a")
    in_transaction, wake = threading.Event(), threading.Event()
    zombie_error: list[BaseException] = []

    def stall(cur: MySQLCursor) -> None:
        cur.execute(q.EXPIRE_DUE, ("reaper", 10, 100))  # guarded by epoch 10: locks the row
        in_transaction.set()
        wake.wait(60)  # stopped: the process sends nothing, its COMMIT included

    def zombie() -> None:
        try:
            old.db.run_once(stall)
        except StoreError as exc:
            zombie_error.append(exc)

    stalled = threading.Thread(target=zombie)
    stalled.start()
    try:
        assert in_transaction.wait(10)
        taken: list[bool] = []
        started = time.monotonic()
        successor = threading.Thread(
            target=lambda: taken.append(new.take_leadership("reaper", 11, "b"))
        )
        successor.start()
        successor.join(IDLE_TRANSACTION_LIMIT + SLACK)
        waited = time.monotonic() - started
        assert taken == [True], f"no successor after {waited:.1f} s: the stalled lock holds"
    finally:
        wake.set()
        stalled.join(30)
    # The server ended the stalled transaction: the zombie learns it when it wakes,
    # as an error its caller retries (and its retry is fenced by epoch 10).
    assert len(zombie_error) == 1 and isinstance(zombie_error[0], TransientStoreError)
    assert old.db.query(q.LEADERSHIP, ("reaper",))[0]["epoch"] == 11


def test_a_connection_idle_between_transactions_is_left_alone(
    stores: tuple[TaskStore, TaskStore],
) -> None:
    """The bound applies inside a transaction only: an idle node keeps its connection."""
    old, _ = stores
    old.db.query("SELECT 1 AS one")
    connection_id = old.db.query("SELECT CONNECTION_ID() AS id")[0]["id"]
    time.sleep(IDLE_TRANSACTION_LIMIT + 1.5)
    assert old.db.query("SELECT CONNECTION_ID() AS id")[0]["id"] == connection_id
