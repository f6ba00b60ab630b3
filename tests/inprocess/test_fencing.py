"""Self-fencing, stale owners and stalls, driven one step at a time."""

from __future__ import annotations

from taskman import Outcome, TaskState
from taskman.cluster.layout import claim_name
from taskman.cluster.reaper import Reaper
from taskman.errors import StoreError
from taskman.runner import EXIT_ORPHANED
from tests.inprocess.harness import InProcessNode


def _leader(node: InProcessNode) -> tuple[Reaper, int]:
    reaper = Reaper(
        node.store,
        node.coord.lease,
        node.coord.members,
        heartbeat_timeout=node.config.heartbeat_timeout,
        max_reclaims=node.config.max_reclaims,
        unrunnable_grace=node.config.unrunnable_grace,
    )
    epoch = node.coord.election().try_acquire(timeout=0)
    assert epoch is not None and reaper.take_office(node.config.node_id, epoch)
    return reaper, epoch


def test_a_stale_owner_is_fenced_and_writes_nothing(node: InProcessNode) -> None:
    """The claim is gone (the session that held it expired); the leader re-queues the
    task; the old owner's next heartbeat learns it, kills its runner, records nothing."""
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    node.claim()
    runner = node.runner_of(task_id)
    old = node.client.get(task_id).fence
    node.coord.lease.revoke(task_id, 1)  # what the ensemble does at session expiry
    reaper, epoch = _leader(node)
    assert reaper.reap(epoch).node_lost == 1
    node.heartbeat()
    assert runner.killed and node.ctx.active[task_id].fenced
    assert ("task.fenced", "heartbeat") in [(n, f.get("write")) for n, f in node.recorded.events]
    runner.succeed("too late")  # it finished anyway: the result is stale
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.QUEUED and task.result is None
    assert [a.outcome for a in task.attempts] == [Outcome.NODE_LOST]
    # The next attempt has a larger token, here or anywhere.
    assert node.claim() == 1
    assert node.client.get(task_id).fence > old


def test_a_silent_session_kills_every_runner_before_it_can_expire(node: InProcessNode) -> None:
    ids = [node.client.submit("demo.tasks:add", plugin="demo", args=(i, 1)) for i in range(3)]
    node.claim()
    guard = node.steps.guard
    node.monitor.quiet_for = node.config.ping_cutoff + 0.1
    node.clock.advance(1.0)
    guard.tick()
    # Past the ping cutoff: no pings, so the runners' watchdogs run down...
    assert all(r.pings == 0 for r in node.runners)
    node.monitor.quiet_for = node.config.self_fence_after + 0.1
    guard.tick()
    guard.tick()
    # ...and past self_fence_after the node kills them itself, once per episode.
    assert all(node.runner_of(i).killed for i in ids)
    assert node.recorded.names().count("node.self_fenced") == 1
    assert not node.steps.may_claim()
    for i in ids:
        node.runner_of(i).exit(-9)
    node.settle()
    for i in ids:
        task = node.client.get(i)
        assert task.state is TaskState.QUEUED
        assert task.attempts[-1].outcome is Outcome.FENCED  # not the task's failure
    node.monitor.quiet_for = 0.0
    node.steps.guard.check_session()
    assert node.steps.may_claim()


def test_self_fencing_comes_before_the_session_can_expire(node: InProcessNode) -> None:
    cfg = node.config
    # The runner's watchdog fires after the last ping; both inside the session.
    assert cfg.ping_cutoff + cfg.runner_watchdog < cfg.session_timeout
    assert cfg.self_fence_after < cfg.session_timeout
    assert cfg.database_fence_after < cfg.heartbeat_timeout


def test_a_database_that_accepts_no_heartbeat_gives_every_attempt_up(node: InProcessNode) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3), max_attempts=1)
    node.claim()

    def failing(*args: object, **kwargs: object) -> list[object]:
        raise StoreError("the database stalls")

    real = node.store.heartbeat
    node.store.heartbeat = failing  # type: ignore[method-assign]
    node.clock.advance(node.config.database_fence_after / 2)
    node.heartbeat()
    assert not node.runner_of(task_id).killed
    node.clock.advance(node.config.database_fence_after / 2 + 0.1)
    node.steps.guard.tick()  # the guard, even while the loop is stuck in a call
    runner = node.runner_of(task_id)
    assert runner.killed
    node.store.heartbeat = real  # type: ignore[method-assign]
    runner.exit(-9)
    node.settle()
    task = node.client.get(task_id)
    # Given up by the node: re-queued, and a max_attempts=1 task still has its attempt.
    assert task.state is TaskState.QUEUED
    assert task.attempts[-1].outcome is Outcome.FENCED


def test_a_runner_killed_by_its_watchdog_during_a_stall_is_not_the_tasks_failure(
    node: InProcessNode,
) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3), max_attempts=1)
    node.claim()
    runner = node.runner_of(task_id)
    node.clock.advance(node.config.runner_watchdog * 1.5)  # the node stalls, no pings
    runner.exit(-9)  # the watchdog's way out: SIGKILL to its own group
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.QUEUED
    assert task.attempts[-1].outcome is Outcome.FENCED
    assert "task.orphaned_by_stall" in node.recorded.names()


def test_a_runner_that_outlived_a_stall_keeps_its_result(node: InProcessNode) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3), max_attempts=1)
    node.claim()
    runner = node.runner_of(task_id)
    node.clock.advance(node.config.runner_watchdog * 1.5)
    node.steps.guard.tick()  # the node wakes and pings: the silence is on record
    assert runner.longest_silence >= node.config.runner_watchdog
    runner.succeed(5)
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.SUCCEEDED and task.result == 5
    assert "task.orphaned_by_stall" not in node.recorded.names()


def test_a_crash_that_is_not_the_watchdogs_counts_against_the_task(node: InProcessNode) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3), max_attempts=1)
    node.claim()
    node.clock.advance(node.config.runner_watchdog * 1.5)
    node.runner_of(task_id).exit(-11)  # SIGSEGV: the task's own doing
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.FAILED
    assert task.attempts[-1].outcome is Outcome.CRASHED
    assert EXIT_ORPHANED != -11


def test_a_timeout_terminates_then_kills_after_the_grace(node: InProcessNode) -> None:
    task_id = node.client.submit(
        "demo.tasks:add", plugin="demo", args=(2, 3), timeout=5, max_attempts=1
    )
    node.claim()
    runner = node.runner_of(task_id)
    supervisor = node.steps.supervisor
    node.clock.advance(4.9)
    supervisor.enforce_limits(node.clock())
    assert not runner.terminated
    node.clock.advance(0.2)
    supervisor.enforce_limits(node.clock())
    assert runner.terminated and runner.abort_requested and not runner.killed
    node.clock.advance(node.config.kill_grace + 0.1)
    supervisor.enforce_limits(node.clock())
    assert runner.killed
    runner.exit(-9)
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.FAILED and task.attempts[-1].outcome is Outcome.TIMEOUT


def test_an_abort_reaches_the_runner_on_the_next_heartbeat(node: InProcessNode) -> None:
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    node.claim()
    node.client.abort(task_id)
    node.heartbeat()
    runner = node.runner_of(task_id)
    assert runner.terminated and runner.abort_requested
    runner.exit(-15)
    node.settle()
    task = node.client.get(task_id)
    assert task.state is TaskState.ABORTED and task.attempts[-1].outcome is Outcome.ABORTED


def test_a_task_whose_old_attempt_is_still_ending_here_is_not_claimed_again(
    node: InProcessNode,
) -> None:
    """Claiming it now would replace the old attempt's entry: its exit would go
    unhandled and its claim and permit never released."""
    task_id = node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    node.claim()
    old_runner = node.runner_of(task_id)
    node.coord.lease.revoke(task_id, 1)
    reaper, epoch = _leader(node)
    reaper.reap(epoch)
    node.heartbeat()  # fenced; its runner is killed but has not exited yet
    assert node.claim() == 0
    old_runner.exit(-9)
    node.settle()
    assert node.claim() == 1
    assert node.runner_of(task_id) is not old_runner
    # The old attempt's claim went with its session; only the new one is held.
    assert node.coord.lease.live_claims() == {claim_name(task_id, 2)}
