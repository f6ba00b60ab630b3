"""Tasks no live node can run: aged by how long they have gone unserved, pins honoured.

The leader fails a queued task nobody can run after ``unrunnable_grace``, so it
does not wait forever (invariant 1). "Nobody can run it" considers the plugin,
its pinned version and the task's datacenter pin. The grace counts from the
moment the task stopped being servable, not from its ``created_at``: a short
gap in membership (the only node with a plugin restarting) must not fail old
queued work, and a task pinned to a datacenter without a node for it must not
wait forever.

The reaper tests run the leader's check against a real store (both backends)
with the membership view it would get from ZooKeeper; the cluster tests run
real nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskman import Client, TaskState
from taskman.cluster.reaper import Reaper
from taskman.plugins import EXAMPLES_DIR
from taskman.store import TaskStore
from tests.integration.backends import shift
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.conftest import StartNode

EPOCH = 3
GRACE = 0.5
DEMO = {"demo": ["1.0"]}
GREETER = {"greeter": ["1.0", "2.0"]}


class Membership:
    """The leader's view of the live nodes (what coord.members returns), set by the test."""

    def __init__(self, *members: dict[str, Any]) -> None:
        self.now = list(members)

    def __call__(self) -> list[dict[str, Any]]:
        return self.now


def _member(node: str, dc: str, plugins: dict[str, list[str]]) -> dict[str, Any]:
    return {"node_id": node, "datacenter": dc, "plugins": plugins, "slots": 4}


@pytest.fixture
def store(store_dsn: str) -> Iterator[TaskStore]:
    s = TaskStore(store_dsn)
    assert s.take_leadership("reaper", EPOCH, "leader")
    try:
        yield s
    finally:
        s.close()


def _reaper(store: TaskStore, members: Membership) -> Reaper:
    # The check reads members and the store only; it never touches the claim lease.
    return Reaper(
        store,
        None,  # type: ignore[arg-type]
        members,
        heartbeat_timeout=60,
        max_reclaims=5,
        unrunnable_grace=GRACE,
    )


def _old_task(
    dsn: str, plugin: str, fn: str, datacenter: str | None = None, version: str | None = None
) -> int:
    """A task queued an hour ago (by the database's clock): far older than the grace."""
    with Client(dsn) as client:
        task_id = client.submit(fn, plugin=plugin, datacenter=datacenter, version=version)
    shift(dsn, task_id, "created_at", -3600)
    shift(dsn, task_id, "run_after", -3600)
    return task_id


def _states(dsn: str, *ids: int) -> list[TaskState]:
    with Client(dsn) as client:
        return [client.get(t).state for t in ids]


def test_a_gap_shorter_than_the_grace_fails_nothing(store_dsn: str, store: TaskStore) -> None:
    members = Membership(_member("a", "dc1", DEMO))
    reaper = _reaper(store, members)
    task_id = _old_task(store_dsn, "demo", "demo.tasks:add")
    reaper.fail_unplaceable(EPOCH)
    members.now = []  # the only node with demo restarts ...
    assert reaper.fail_unplaceable(EPOCH) == 0
    time.sleep(GRACE * 0.6)
    assert reaper.fail_unplaceable(EPOCH) == 0
    members.now = [_member("a", "dc1", DEMO)]  # ... and is back within the grace
    assert reaper.fail_unplaceable(EPOCH) == 0
    members.now = []  # a second gap starts the count again
    assert reaper.fail_unplaceable(EPOCH) == 0
    time.sleep(GRACE * 0.6)
    assert reaper.fail_unplaceable(EPOCH) == 0
    assert _states(store_dsn, task_id) == [TaskState.QUEUED]
    time.sleep(GRACE * 0.6)
    assert reaper.fail_unplaceable(EPOCH) == 1  # now continuously unserved for > grace
    with Client(store_dsn) as client:
        task = client.get(task_id)
    assert task.state is TaskState.FAILED
    assert task.error_type == "PluginError"
    assert task.error_message == (
        f"no live node has plugin 'demo' installed; no node could run it for {GRACE:g} s"
    )


def test_a_task_is_aged_from_when_it_became_unservable(store_dsn: str, store: TaskStore) -> None:
    reaper = _reaper(store, Membership(_member("a", "dc1", DEMO)))
    old = _old_task(store_dsn, "nope", "x.y:z")
    assert reaper.fail_unplaceable(EPOCH) == 0  # an hour old, but unserved for 0 s
    time.sleep(GRACE * 1.2)
    with Client(store_dsn) as client:
        fresh = client.submit("x.y:z", plugin="nope")
    assert reaper.fail_unplaceable(EPOCH) == 1
    # The group has been unserved for longer than the grace; the fresh task not yet.
    assert _states(store_dsn, old, fresh) == [TaskState.FAILED, TaskState.QUEUED]


def test_datacenter_pins_are_honoured(store_dsn: str, store: TaskStore) -> None:
    members = Membership(_member("a", "dc1", DEMO), _member("c", "dc2", GREETER))
    reaper = _reaper(store, members)
    nowhere = _old_task(store_dsn, "demo", "demo.tasks:add", "dc9")
    lacking = _old_task(store_dsn, "demo", "demo.tasks:add", "dc2")
    wrong_version = _old_task(store_dsn, "greeter", "greeter:greet", "dc2", version="3.0")
    fine = [
        _old_task(store_dsn, "demo", "demo.tasks:add"),
        _old_task(store_dsn, "demo", "demo.tasks:add", "dc1"),
        _old_task(store_dsn, "demo", "demo.tasks:add", "dc1", version="1.0"),
        _old_task(store_dsn, "greeter", "greeter:greet", "dc2"),
        _old_task(store_dsn, "greeter", "greeter:greet", "dc2", version="1.0"),
    ]
    assert reaper.fail_unplaceable(EPOCH) == 0
    time.sleep(GRACE * 1.2)
    assert reaper.fail_unplaceable(EPOCH) == 3
    assert _states(store_dsn, *fine) == [TaskState.QUEUED] * len(fine)
    with Client(store_dsn) as client:
        failed = {t: client.get(t) for t in (nowhere, lacking, wrong_version)}
    assert [t.state for t in failed.values()] == [TaskState.FAILED] * 3
    assert failed[nowhere].error_type == failed[lacking].error_type == "PlacementError"
    assert failed[wrong_version].error_type == "PluginError"  # no node anywhere has 3.0
    assert failed[nowhere].error_message == (
        "pinned to datacenter 'dc9', where no node is live (live datacenters: dc1, dc2); "
        f"no node could run it for {GRACE:g} s"
    )
    assert failed[lacking].error_message == (
        "no live node in datacenter 'dc2' has plugin 'demo' installed (nodes in dc1 have it); "
        f"no node could run it for {GRACE:g} s"
    )
    assert failed[wrong_version].error_message == (
        "no live node in datacenter 'dc2' has plugin 'greeter' version 3.0 installed; "
        f"no node could run it for {GRACE:g} s"
    )


# -- the cluster ----------------------------------------------------------------------------

FAST = {"drain_timeout": 0.5}
ONLY_DEMO = [str(EXAMPLES_DIR / "demo")]
ONLY_GREETER = [str(EXAMPLES_DIR / "greeter-1")]


def test_old_work_survives_a_restart_of_the_only_node_with_its_plugin(
    start_node: StartNode, client: Client, dsn: str
) -> None:
    grace = 8.0  # the restart must fit in it, on a loaded machine too
    leader = start_node("l", "dc1", plugin_dirs=ONLY_GREETER, unrunnable_grace=grace, **FAST)
    leader.wait_for_event("leader.elected", timeout=15)
    a = start_node("a", "dc2", plugin_dirs=ONLY_DEMO, slots=1, unrunnable_grace=grace, **FAST)
    busy = client.submit("demo.tasks:sleep", plugin="demo", args=(30,))
    wait_state(client, busy, TaskState.RUNNING, timeout=15)
    waiting = client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    # Queued (and due) an hour ago, behind the busy slot: far older than the grace.
    shift(dsn, waiting, "created_at", -3600)
    shift(dsn, waiting, "run_after", -3600)
    time.sleep(1.0)  # a few reaper passes see it served
    assert client.get(waiting).state is TaskState.QUEUED

    gone = time.monotonic()  # an upper bound of the gap: it includes a's drain
    a.stop(timeout=15)  # the only node with demo leaves ...
    start_node("a", "dc2", plugin_dirs=ONLY_DEMO, slots=2, unrunnable_grace=grace, **FAST)
    gap = time.monotonic() - gone
    print(f"\nthe only node with demo was gone for {gap:.1f} s (grace {grace:g} s)")
    assert gap < grace - 1, f"the restart took {gap:.1f} s: too slow for this test's grace"

    task = wait_until(lambda: (t := client.get(waiting)).state.terminal and t, 15, "the end")
    assert task.state is TaskState.SUCCEEDED, task.error_message
    assert task.result == 5
    assert client.get(busy).state is TaskState.RUNNING  # given up, then claimed again


def test_a_pin_no_live_node_can_serve_fails_after_the_grace(
    start_node: StartNode, client: Client
) -> None:
    grace = 2.0
    start_node("a", "dc1", plugin_dirs=ONLY_DEMO, unrunnable_grace=grace)
    start_node("c", "dc2", plugin_dirs=ONLY_GREETER, unrunnable_grace=grace)
    # Queued anyway: the client would refuse both pins at submit.
    misspelt = client.submit(
        "demo.tasks:add", plugin="demo", args=(1, 1), datacenter="dc9", allow_unserved=True
    )
    lacking = client.submit(
        "demo.tasks:add", plugin="demo", args=(1, 1), datacenter="dc2", allow_unserved=True
    )
    for task_id, reason in [
        (
            misspelt,
            "pinned to datacenter 'dc9', where no node is live (live datacenters: dc1, dc2)",
        ),
        (lacking, "no live node in datacenter 'dc2' has plugin 'demo' installed"),
    ]:
        task = wait_state(client, task_id, TaskState.FAILED, timeout=grace + 10)
        assert task.error_type == "PlacementError"
        assert reason in (task.error_message or "")
        assert task.attempt == 0
        assert task.created_at is not None and task.finished_at is not None
        assert (task.finished_at - task.created_at).total_seconds() >= grace


def test_a_task_whose_placement_is_fine_runs(start_node: StartNode, client: Client) -> None:
    """Servable tasks, pinned or not, that wait in the queue past the grace still run."""
    grace = 2.0
    start_node("a", "dc1", plugin_dirs=ONLY_DEMO, slots=1, unrunnable_grace=grace)
    both = [*ONLY_DEMO, *ONLY_GREETER]
    start_node("c", "dc2", plugin_dirs=both, slots=1, unrunnable_grace=grace)
    # One long task per node keeps every slot busy, so the rest queue past the grace.
    busy = [
        client.submit("demo.tasks:sleep", plugin="demo", args=(grace + 2,), datacenter=dc)
        for dc in ("dc1", "dc2")
    ]
    for task_id in busy:
        wait_state(client, task_id, TaskState.RUNNING, timeout=15)
    waiting = [
        client.submit("demo.tasks:add", plugin="demo", args=(1, 2)),
        client.submit("demo.tasks:add", plugin="demo", args=(1, 2), datacenter="dc1"),
        client.submit("demo.tasks:add", plugin="demo", args=(1, 2), datacenter="dc2"),
        client.submit("greeter:greet", plugin="greeter", args=("x",), datacenter="dc2"),
        client.submit("greeter:greet", plugin="greeter", args=("x",), version="1.0"),
    ]
    for task_id in [*busy, *waiting]:
        task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=grace + 20)
        assert task.started_at is not None and task.created_at is not None
    # They did wait longer than the grace before they ran.
    first = client.get(waiting[0])
    assert first.started_at is not None and first.created_at is not None
    assert (first.started_at - first.created_at).total_seconds() > grace
