"""When an idle node looks for work again: woken at once, idle pace, due times, fall-backs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from taskman import TaskState
from taskman.cluster.pacing import LOOP_TICK
from tests.inprocess.harness import InProcessNode

IDLE = 30.0


@pytest.fixture
def idle_node(tmp_path: Path) -> Any:
    """A node whose wake-ups are armed (the local coordinator's stand in for ZooKeeper's)."""
    n = InProcessNode(tmp_path, idle_poll_interval=IDLE)
    n.coord.wakes_armed = lambda: True  # type: ignore[method-assign]
    yield n
    n.close()


def poll(node: InProcessNode) -> int:
    return node.steps.poll(node.clock())


def test_an_idle_node_with_wakeups_waits_the_idle_poll(idle_node: InProcessNode) -> None:
    assert poll(idle_node) == 0
    pacer = idle_node.steps.pacer
    assert pacer.idle and pacer.next_poll == idle_node.clock() + IDLE
    idle_node.clock.advance(IDLE - 1)
    assert not pacer.due(idle_node.clock())
    assert pacer.wait(idle_node.clock()) == LOOP_TICK  # the loop still runs its other duties
    idle_node.clock.advance(1)
    assert pacer.due(idle_node.clock())


def test_a_submit_in_this_process_wakes_the_idle_node_at_once(idle_node: InProcessNode) -> None:
    poll(idle_node)
    pacer = idle_node.steps.pacer
    assert not pacer.due(idle_node.clock())
    task_id = idle_node.client.submit("demo.tasks:add", plugin="demo", args=(1, 2))
    idle_node.steps.drain_events(timeout=0)  # the WAKE the submit queued
    assert pacer.due(idle_node.clock())
    assert poll(idle_node) == 1 and task_id in idle_node.ctx.active
    assert not pacer.idle  # it found work: back to poll_interval
    assert pacer.next_poll == idle_node.clock() + idle_node.config.poll_interval


def test_many_signals_queue_one_wakeup(idle_node: InProcessNode) -> None:
    for _ in range(50):
        idle_node.steps.pacer.signal()
    assert idle_node.ctx.runner_events.qsize() == 1
    idle_node.steps.drain_events(timeout=0)
    idle_node.steps.pacer.signal()  # after the loop took it, a new signal queues again
    assert idle_node.ctx.runner_events.qsize() == 1


def test_without_armed_wakeups_the_node_keeps_the_busy_pace(tmp_path: Path) -> None:
    node = InProcessNode(tmp_path, idle_poll_interval=IDLE)  # embedded: nobody else can signal
    try:
        assert poll(node) == 0
        assert not node.steps.pacer.idle
        assert node.steps.pacer.next_poll == node.clock() + node.config.poll_interval
    finally:
        node.close()


def test_the_idle_node_sleeps_only_until_the_next_task_is_due(idle_node: InProcessNode) -> None:
    later = idle_node.client.now() + timedelta(seconds=5)
    idle_node.client.submit("demo.tasks:add", plugin="demo", args=(1, 2), not_before=later)
    idle_node.steps.drain_events(timeout=0)
    assert poll(idle_node) == 0  # not due yet
    pacer = idle_node.steps.pacer
    assert pacer.idle
    assert idle_node.clock() + 4 < pacer.next_poll <= idle_node.clock() + 5


def test_a_retry_backoff_sets_the_next_poll_to_its_due_time(idle_node: InProcessNode) -> None:
    task_id = idle_node.client.submit(
        "demo.tasks:fail", plugin="demo", max_attempts=2, retry_backoff=3
    )
    assert poll(idle_node) == 1
    idle_node.runner_of(task_id).exit(1)
    idle_node.settle()
    assert idle_node.client.get(task_id).state is TaskState.QUEUED
    (delay,) = [f["delay"] for name, f in idle_node.recorded.events if name == "task.retry"]
    assert poll(idle_node) == 0
    pacer = idle_node.steps.pacer
    # The backoff (jittered) counts from the database's clock at the retry's write.
    assert pacer.idle and idle_node.clock() + delay - 1 < pacer.next_poll
    assert pacer.next_poll <= idle_node.clock() + delay


def test_a_full_concurrency_cap_keeps_the_busy_pace(idle_node: InProcessNode) -> None:
    for _ in range(2):
        idle_node.client.submit(
            "demo.tasks:add", plugin="demo", args=(1, 1), concurrency_key="k", concurrency_limit=1
        )
    assert poll(idle_node) == 1  # the second waits for the permit
    assert poll(idle_node) == 0  # the capped one is left out of the read: nothing found
    pacer = idle_node.steps.pacer
    assert not pacer.idle  # a permit frees without a signal: keep looking
    assert pacer.next_poll == idle_node.clock() + idle_node.config.poll_interval


def test_a_failed_read_keeps_the_busy_pace(idle_node: InProcessNode) -> None:
    from taskman.errors import StoreError

    def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("the database went away")

    idle_node.store.candidates = broken  # type: ignore[method-assign]
    assert poll(idle_node) == 0
    assert not idle_node.steps.pacer.idle
