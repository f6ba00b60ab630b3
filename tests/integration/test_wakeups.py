"""Wake-ups against real MariaDB and ZooKeeper: an idle node with a long idle poll starts
signalled work at once, and still finds work nobody signalled within its idle poll."""

from __future__ import annotations

import time
from pathlib import Path

from taskman import Client, TaskState
from taskman.lab import free_port
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.conftest import StartNode


def settle() -> None:
    time.sleep(1.0)  # past the node's first polls (start, the watch arming): it is idle now


def test_a_signalled_task_starts_long_before_the_idle_poll(
    start_node: StartNode, client: Client, dsn: str, zk_hosts: str, cluster_name: str
) -> None:
    start_node("a", idle_poll_interval=30.0)
    settle()
    # A Client without ZooKeeper signals nothing: the idle node does not look yet.
    quiet = client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    time.sleep(1.5)
    assert client.get(quiet).state is TaskState.QUEUED
    with Client(dsn, zookeeper=zk_hosts, cluster=cluster_name) as signalling:
        for i in range(3):
            task_id = signalling.submit("demo.tasks:add", plugin="demo", args=(i, 1))
            assert wait_state(signalling, task_id, TaskState.SUCCEEDED, timeout=5).result == i + 1
            settle()
        assert signalling.wake_stats()["failed"] == 0
    # The woken node read the whole queue: the unsignalled task ran with the first one.
    assert client.get(quiet).state is TaskState.SUCCEEDED


def test_a_task_whose_signal_was_lost_starts_within_the_idle_poll(
    start_node: StartNode, client: Client
) -> None:
    start_node("a", idle_poll_interval=3.0)
    settle()
    submitted = time.monotonic()
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(2, 3))  # no ZooKeeper
    wait_state(client, task_id, TaskState.SUCCEEDED, timeout=3.0 + 5)
    print(f"\nunsignalled task done {time.monotonic() - submitted:.2f} s after submit (idle 3 s)")


def test_zookeeper_down_does_not_fail_or_hold_a_submit(dsn: str, cluster_name: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here
    started = time.monotonic()
    with Client(dsn, zookeeper=nobody, cluster=cluster_name) as client:
        ids = [client.submit("demo.tasks:add", plugin="demo", args=(i, 1)) for i in range(3)]
        ids += client.submit_many([{"function": "demo.tasks:add", "plugin": "demo"}])
        submitted = time.monotonic() - started
        assert all(client.get(t).state is TaskState.QUEUED for t in ids)
    closed = time.monotonic() - started
    assert submitted < 5.0, submitted  # not the ZooKeeper's connect or session timeout
    assert closed < submitted + 2.0, closed  # close waits for a pending signal, briefly
    assert client.wake_stats()["failed"] >= 1 and client.wake_stats()["sent"] == 0


def test_a_retry_starts_after_its_backoff_with_a_long_idle_poll(
    start_node: StartNode, dsn: str, zk_hosts: str, cluster_name: str, tmp_path: Path
) -> None:
    node = start_node("a", idle_poll_interval=30.0)
    settle()
    with Client(dsn, zookeeper=zk_hosts, cluster=cluster_name) as client:
        task_id = client.submit(
            "demo.tasks:crash_once",
            plugin="demo",
            args=(str(tmp_path / "marker"),),
            max_attempts=2,
            retry_backoff=2.0,
        )
        task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
    first, second = task.attempts
    retry = wait_until(
        lambda: [e for e in node.events() if e["event"] == "task.retry"], 5, "the retry event"
    )
    delay = float(retry[0]["delay"])  # jittered backoff, from the database clock at the write
    assert first.ended_at is not None and second.started_at is not None
    waited = (second.started_at - first.ended_at).total_seconds()
    print(f"\nretry backoff {delay:.2f} s, second attempt started {waited:.2f} s after the first")
    assert delay - 0.05 <= waited <= delay + 5.0
