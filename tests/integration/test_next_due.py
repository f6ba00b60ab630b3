"""How long an idle node may sleep: ``TaskStore.next_due_in`` on both backends.

The node reads the queue, then asks when the next task becomes due. A task that
became due between those two reads must count as due now: were it left out of
both, the node would sleep its whole idle poll (found, once, at 30 s).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from taskman import Client
from taskman.store import TaskStore, make_database
from taskman.store.tasks import DUE_GRACE


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


def _store(dsn: str) -> TaskStore:
    return TaskStore(make_database(dsn))


def test_nothing_queued_means_no_wake_up_is_due(dsn: str) -> None:
    store = _store(dsn)
    try:
        assert store.next_due_in() is None
    finally:
        store.close()


def test_a_task_due_later_is_due_in_its_time(client: Client, dsn: str) -> None:
    client.submit(
        "demo.tasks:add", plugin="demo", not_before=datetime.now(UTC) + timedelta(seconds=30)
    )
    store = _store(dsn)
    try:
        due_in = store.next_due_in()
        assert due_in is not None and 25 < due_in <= 30
    finally:
        store.close()


def test_a_task_that_just_became_due_is_due_now(client: Client, dsn: str) -> None:
    client.submit(
        "demo.tasks:add", plugin="demo", not_before=datetime.now(UTC) + timedelta(seconds=0.2)
    )
    time.sleep(0.4)  # due now, and nobody claimed it: as if it fell between two reads
    store = _store(dsn)
    try:
        assert store.next_due_in() == 0.0
    finally:
        store.close()


def test_a_task_long_due_that_this_node_did_not_claim_does_not_keep_it_awake(
    client: Client, dsn: str
) -> None:
    # Due long ago but still queued: another node's plugin, a full cap. Polling for it
    # at poll_interval for ever would undo the idle pace.
    client.submit(
        "demo.tasks:add", plugin="demo", not_before=datetime.now(UTC) + timedelta(seconds=0.1)
    )
    time.sleep(DUE_GRACE + 0.3)
    store = _store(dsn)
    try:
        assert store.next_due_in() is None
    finally:
        store.close()
