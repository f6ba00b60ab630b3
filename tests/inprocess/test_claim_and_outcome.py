"""A task's trip through the node's steps: claim, launch, outcome, fenced record, release."""

from __future__ import annotations

import pytest

from taskman import Outcome, TaskState
from taskman.cluster.layout import claim_name
from taskman.errors import CoordinationError, StoreError
from taskman.store import Finish
from tests.inprocess.harness import InProcessNode


def test_a_claimed_task_runs_and_its_outcome_is_recorded_then_released(
    node: InProcessNode,
) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    assert node.claim() == 1
    runner = node.runner_of(task_id)
    assert runner.launched and runner.spec.call.fence == node.client.get(task_id).fence
    assert node.coord.lease.live_claims()
    runner.succeed(5)
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.SUCCEEDED and task.result == 5
    assert not node.ctx.active and not node.coord.lease.live_claims()
    assert node.recorded.names()[:1] == ["task.claimed"]
    assert "task.succeeded" in node.recorded.names()
    assert node.counters.counts["claimed"] == 1 and node.counters.counts["succeeded"] == 1


def test_a_full_node_claims_only_its_free_slots(node: InProcessNode) -> None:
    ids = [node.client.submit("demo.tasks:add", plugin="demo", args=(i, 1)) for i in range(6)]
    assert node.claim() == node.config.slots
    assert node.claim() == 0  # no free slot: nothing more is claimed
    assert len(node.ctx.active) == node.config.slots and set(node.ctx.active) <= set(ids)


def test_a_function_its_plugin_does_not_allow_is_rejected_without_a_runner(
    node: InProcessNode,
) -> None:
    task_id = node.client.submit("os:system", plugin="demo", args=("true",), max_attempts=3)
    assert node.claim() == 1
    node.settle()
    task = node.client.get(task_id)
    assert not node.runners
    assert task.state is TaskState.FAILED  # permanent: no retry can fix it
    assert [a.outcome for a in task.attempts] == [Outcome.REJECTED]
    assert task.error_type == "PluginError"
    assert not node.coord.lease.live_claims()


def test_an_outcome_the_database_refuses_keeps_its_claim_and_is_written_later(
    node: InProcessNode,
) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    node.claim()
    real = node.store.finish_many
    calls = []

    def failing(records: object) -> list[bool]:
        calls.append(records)
        raise StoreError("the database went away")

    node.store.finish_many = failing  # type: ignore[method-assign]
    node.runner_of(task_id).succeed(5)
    node.settle()
    assert calls and node.steps.outcomes.unrecorded
    # Releasing the claim now would let the leader re-run finished work.
    assert node.coord.lease.live_claims()
    assert node.client.get(task_id).state is TaskState.RUNNING
    node.store.finish_many = real  # type: ignore[method-assign]
    node.steps.outcomes.retry_unrecorded()
    node.steps.releases.check()
    assert node.client.get(task_id).state is TaskState.SUCCEEDED
    assert not node.coord.lease.live_claims()


def test_a_claim_the_database_refuses_releases_its_tokens(node: InProcessNode) -> None:
    node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))

    def failing(*args: object, **kwargs: object) -> list[object]:
        raise StoreError("the database went away")

    node.store.claim_many = failing  # type: ignore[method-assign]
    assert node.claim() == 0
    node.steps.releases.flush()
    assert not node.coord.lease.live_claims() and not node.runners


def test_a_message_the_node_cannot_handle_ends_only_its_attempt(node: InProcessNode) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3), max_attempts=1)
    node.claim()
    runner = node.runner_of(task_id)
    runner.say({"t": "progress", "fraction": 0.5, "message": "half"})
    runner.say({"t": "result", "value": object()})  # a value no JSON encoder takes
    runner.exit(0)
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.FAILED and task.error_type == "ProtocolError"
    assert "runner.message_failed" in node.recorded.names()


def test_recorded_claims_are_dropped_in_the_next_claim_batch(node: InProcessNode) -> None:
    first = node.client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    node.claim()
    node.runner_of(first).succeed(2)
    node.steps.drain_events(timeout=0)
    node.steps.outcomes.record_pending()
    assert node.client.get(first).state is TaskState.SUCCEEDED
    assert node.coord.lease.live_claims() == {claim_name(first, 1)}  # queued, not sent
    second = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 2))
    assert node.claim() == 1
    assert node.coord.lease.live_claims() == {claim_name(second, 1)}


def test_a_claim_batch_zookeeper_refuses_keeps_the_releases_it_carried(
    node: InProcessNode,
) -> None:
    first = node.client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    node.claim()
    node.runner_of(first).succeed(2)
    node.steps.drain_events(timeout=0)
    node.steps.outcomes.record_pending()
    node.client.submit("demo.tasks:add", plugin="demo", args=(2, 2))

    def refused(*args: object, **kwargs: object) -> object:
        raise CoordinationError("ZooKeeper did not answer")

    node.coord.lease.acquire_and_release = refused  # type: ignore[method-assign]
    assert node.claim() == 0
    assert node.coord.lease.live_claims() == {claim_name(first, 1)}
    node.steps.releases.flush()  # sent on their own later
    assert not node.coord.lease.live_claims()


def test_endings_written_during_a_claim_are_released_by_the_next_one(
    node: InProcessNode,
) -> None:
    """The loop writes a pass's endings while its claim's multi is in flight: each
    ending is written once, before its release, and the release rides later."""
    first = node.client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    assert node.claim() == 1
    node.runner_of(first).succeed(2)
    node.steps.drain_events(timeout=0)
    second = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 2))
    written: list[list[int]] = []
    real = node.store.finish_many

    def spy(records: list[Finish]) -> list[bool]:
        # Written before the claim's token came back, and its own claim still held.
        assert node.coord.lease.live_claims() >= {claim_name(first, 1)}
        written.append([r.task_id for r in records])
        return real(records)

    node.store.finish_many = spy  # type: ignore[method-assign]
    claimed, _ = node.steps.claimer.claim(node.steps.outcomes.record_pending)
    assert claimed == 1 and written == [[first]]
    assert node.client.get(first).state is TaskState.SUCCEEDED
    assert node.steps.releases.leftover == [(first, 1)]  # for the next multi, not this one
    node.runner_of(second).succeed(4)
    node.settle()
    node.steps.claimer.claim()
    assert written == [[first], [second]]
    assert claim_name(first, 1) not in node.coord.lease.live_claims()


def test_the_overlapped_write_runs_once_even_when_there_is_nothing_to_claim(
    node: InProcessNode,
) -> None:
    calls: list[int] = []
    assert node.steps.claimer.claim(lambda: calls.append(1)) == (0, node.config.slots)
    assert calls == [1]


def test_an_overlapped_write_that_fails_surfaces_after_the_claim_completes(
    node: InProcessNode,
) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(1, 1))

    def broken() -> None:
        raise RuntimeError("the recorder broke")

    with pytest.raises(RuntimeError, match="the recorder broke"):
        node.steps.claimer.claim(broken)
    # The claim itself finished: its row and its runner exist, nothing half-done.
    assert node.client.get(task_id).state is TaskState.RUNNING
    assert node.runner_of(task_id).launched
