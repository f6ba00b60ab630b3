"""A reclaimed task keeps its place in line (invariant 6).

An attempt lost to its node's trouble (the node died, its heartbeat stopped, or
it gave the attempt up itself) goes back to the queue where it stood: ahead of
every task of its priority submitted after it. Before, a reclaim set
``run_after = NOW()`` and sent it to the back, so with a full queue a dead
datacenter's work ran again only after everything queued meanwhile.

The store tests run on both backends (``store_dsn``); the cluster test kills a
node under a saturated queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman import Client, Outcome, TaskState
from taskman.store import Ending, Finish, RunningTask, TaskStore
from tests.integration.backends import seconds_from_now, shift
from tests.integration.cluster_support import FAST_NODE, wait_until
from tests.integration.conftest import StartNode

FN = "demo.tasks:add"
PLUGINS = {"demo": ["1.0"]}
DC = "dc1"
EPOCH = 7
SESSION = FAST_NODE["session_timeout"]


@pytest.fixture
def store(store_dsn: str) -> Iterator[TaskStore]:
    s = TaskStore(store_dsn)
    assert s.take_leadership("reaper", EPOCH, "leader")
    try:
        yield s
    finally:
        s.close()


def _submit(dsn: str, priority: int = 0) -> int:
    with Client(dsn) as client:
        return client.submit(FN, plugin="demo", args=[1, 2], priority=priority, max_attempts=5)


def _order(store: TaskStore) -> list[int]:
    return [c.task_id for c in store.candidates(DC, PLUGINS, 100)]


def _claim(store: TaskStore, task_id: int, fence: int) -> RunningTask:
    (seen,) = [c for c in store.candidates(DC, PLUGINS, 100) if c.task_id == task_id]
    assert store.claim(task_id, seen.attempt, fence, "n-a", DC, "1.0") is not None
    (running,) = [t for t in store.running() if t.task_id == task_id]
    return running


def _reclaim(store: TaskStore, task: RunningTask, outcome: Outcome) -> None:
    assert store.reclaim(
        task, outcome=outcome, reason="owner gone", give_up=False, role="reaper", epoch=EPOCH
    )


@pytest.mark.parametrize("outcome", [Outcome.NODE_LOST, Outcome.HEARTBEAT_TIMEOUT])
def test_a_reclaimed_task_goes_back_ahead_of_later_work(
    store_dsn: str, store: TaskStore, outcome: Outcome
) -> None:
    first = _submit(store_dsn)
    second = _submit(store_dsn)
    lost = _claim(store, first, 100)
    later = [_submit(store_dsn) for _ in range(3)]
    assert _order(store) == [second, *later]

    _reclaim(store, lost, outcome)
    assert _order(store) == [first, second, *later]


def test_an_attempt_the_node_gave_up_keeps_its_place(store_dsn: str, store: TaskStore) -> None:
    first = _submit(store_dsn)
    _claim(store, first, 100)
    later = [_submit(store_dsn) for _ in range(3)]
    # What a node writes when it stops a runner for its own trouble (self-fencing, shutdown).
    assert store.finish(
        Finish(
            first,
            1,
            100,
            Ending(
                Outcome.FENCED,
                TaskState.QUEUED,
                error_type="NodeGaveUp",
                error_message="the node stopped the runner",
                retry_delay=0.0,
                counts_as_failure=False,
            ),
        )
    )
    assert _order(store) == [first, *later]


def test_a_reclaimed_task_stays_in_its_priority_class(store_dsn: str, store: TaskStore) -> None:
    low = _submit(store_dsn, priority=0)
    lost = _claim(store, low, 100)
    urgent = _submit(store_dsn, priority=5)
    low_later = _submit(store_dsn, priority=0)
    _reclaim(store, lost, Outcome.NODE_LOST)
    assert _order(store) == [urgent, low, low_later]


def test_a_retry_after_the_tasks_own_failure_keeps_its_backoff(
    store_dsn: str, store: TaskStore
) -> None:
    failing = _submit(store_dsn)
    _claim(store, failing, 100)
    later = _submit(store_dsn)
    assert store.finish(
        Finish(
            failing,
            1,
            100,
            Ending(
                Outcome.ERROR,
                TaskState.QUEUED,
                error_type="ValueError",
                error_message="boom",
                retry_delay=30.0,
            ),
        )
    )
    assert _order(store) == [later]
    assert 25 < seconds_from_now(store_dsn, failing, "run_after") <= 30


def test_the_wait_of_a_reclaimed_attempt_counts_from_its_requeue(
    store_dsn: str, store: TaskStore
) -> None:
    # The place in line is the original due time; the queue-wait metric of the new
    # attempt still measures from when it went back to the queue, not from submit.
    task_id = _submit(store_dsn)
    lost = _claim(store, task_id, 100)
    shift(store_dsn, task_id, "run_after", -60)
    _reclaim(store, lost, Outcome.NODE_LOST)
    claim = store.claim(task_id, 1, 200, "n-b", DC, "1.0")
    assert claim is not None
    assert 0 <= claim.waited < 5


# -- the cluster ----------------------------------------------------------------------------


def test_a_killed_nodes_work_restarts_ahead_of_a_full_queue(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    """Two nodes of 4 slots, far more queued work than slots; one node is killed.

    Its attempts must start again within the recovery bound, and no task submitted
    after one of them may start between its reclaim and its restart.
    """
    fast = {"drain_timeout": 0.5}  # teardown gives running attempts up instead of waiting
    a = start_node("a", "dc1", **fast)
    b = start_node("b", "dc2", **fast)
    work = [
        client.submit("demo.tasks:sleep", plugin="demo", args=(3,), max_attempts=1)
        for _ in range(16)
    ]

    def held_by_a() -> list[int] | None:
        ids = [t for t in work if client.get(t).owner == "a"]
        return ids if len(ids) == 4 else None

    held: list[int] = wait_until(held_by_a, 15, "node a to fill its 4 slots")
    more = [
        client.submit("demo.tasks:sleep", plugin="demo", args=(3,), max_attempts=1)
        for _ in range(12)
    ]
    a.kill()
    killed_at = time.time()

    def restarted() -> bool:
        return all(len(client.get(t).attempts) >= 2 for t in held)

    wait_until(restarted, SESSION + 15, "a's attempts to start again")
    tasks = {t: client.get(t) for t in work + more}
    recovery, overtaken = [], {}
    for task_id in held:
        lost, again = tasks[task_id].attempts[:2]
        assert lost.node == "a" and lost.outcome is Outcome.NODE_LOST
        assert again.node == "b"
        assert lost.ended_at is not None and again.started_at is not None
        recovery.append(again.started_at.timestamp() - killed_at)
        # Everything submitted after this task that started once it was back in the
        # queue jumped the line.
        jumped = [
            other.id
            for other in tasks.values()
            if other.id > task_id
            and other.attempts
            and other.attempts[0].started_at is not None
            and lost.ended_at < other.attempts[0].started_at < again.started_at
        ]
        if jumped:
            overtaken[task_id] = jumped
    print(f"\nrestart of a killed node's attempts under a full queue: max {max(recovery):.2f} s")
    assert overtaken == {}, f"reclaimed tasks overtaken by later ones: {overtaken}"
    assert max(recovery) < SESSION + 5
    assert b.alive()
