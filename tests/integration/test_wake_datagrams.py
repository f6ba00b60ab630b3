"""Datagram wake-ups against real MariaDB and ZooKeeper: a node with ``wake_address``
publishes it (readable without the cluster's identity), a datagram alone wakes it, and a
Client with ``zookeeper`` sends one after each submit."""

from __future__ import annotations

import socket
import time

from kazoo.client import KazooClient

from taskman import Client, TaskState
from taskman.cluster.layout import ClusterPaths
from taskman.cluster.wake_datagrams import MAGIC, DatagramSender
from taskman.lab import free_port
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.conftest import StartNode
from tests.integration.scrape_support import get, sample

FLOOD_SECONDS = 3.0


def _published(zk_hosts: str, cluster: str) -> dict[str, str]:
    """The wake addresses as anyone reads them: a ZooKeeper client with no identity."""
    paths = ClusterPaths(cluster)
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        if not zk.exists(paths.wake_addresses):
            return {}
        return {
            child: zk.get(paths.wake_address(child))[0].decode()
            for child in zk.get_children(paths.wake_addresses)
        }
    finally:
        zk.stop()
        zk.close()


def test_a_datagram_alone_wakes_an_idle_node(
    start_node: StartNode, client: Client, zk_hosts: str, cluster_name: str
) -> None:
    node = start_node("a", idle_poll_interval=30.0, wake_address="127.0.0.1:0")
    address = wait_until(lambda: _published(zk_hosts, cluster_name).get("a"), 10, "published")
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    time.sleep(1.0)  # idle now: its next poll is 30 s away
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(2, 3))  # signals nothing
    time.sleep(1.0)
    assert client.get(task_id).state is TaskState.QUEUED
    sender = DatagramSender()
    sender.set_addresses([address])
    sender.send()
    sender.close()
    assert wait_state(client, task_id, TaskState.SUCCEEDED, timeout=5).result == 5
    node.stop(timeout=15)
    # The address went with the node's session.
    wait_until(lambda: "a" not in _published(zk_hosts, cluster_name), 10, "address gone")


def test_a_client_with_zookeeper_sends_datagrams_to_every_published_address(
    start_node: StartNode, dsn: str, zk_hosts: str, cluster_name: str
) -> None:
    start_node("a", idle_poll_interval=30.0, wake_address="127.0.0.1:0")
    start_node("b", idle_poll_interval=30.0)  # no wake_address: the bump still wakes it
    wait_until(lambda: _published(zk_hosts, cluster_name).get("a"), 10, "published")
    time.sleep(1.0)
    with Client(dsn, zookeeper=zk_hosts, cluster=cluster_name) as signalling:
        # Read once its connection is up (the bump covers a submit made before that).
        datagrams = getattr(signalling._waker, "datagrams", None)
        assert datagrams is not None
        wait_until(lambda: datagrams.addresses == 1, 10, "the Client read the address")
        for i in range(3):
            task_id = signalling.submit("demo.tasks:add", plugin="demo", args=(i, 1))
            assert wait_state(signalling, task_id, TaskState.SUCCEEDED, timeout=5).result == i + 1
            time.sleep(0.5)
        assert datagrams.sent == 3 and datagrams.failed == 0


def _polls(url: str) -> float:
    _, text = get(url)
    return sample(text, "taskman_polls_total", pace="idle") + sample(
        text, "taskman_polls_total", pace="busy"
    )


def test_a_flood_of_forged_datagrams_is_not_a_query_storm(
    start_node: StartNode, client: Client, dsn: str, zk_hosts: str, cluster_name: str
) -> None:
    """A datagram carries no authority: anyone who can reach the address can send one.
    Each woke the node for one read of the queue, so a flood read it 500 times a second
    (MIN_GAP) for as long as it lasted. Wake-ups that find nothing now back off, and a
    real submit during the flood still starts at once (its ZooKeeper bump)."""
    port = free_port()
    start_node(
        "a",
        idle_poll_interval=30.0,
        wake_address="127.0.0.1:0",
        metrics_address=f"127.0.0.1:{port}",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    address = wait_until(lambda: _published(zk_hosts, cluster_name).get("a"), 10, "published")
    time.sleep(1.0)  # idle: its next poll of its own is 30 s away
    host, port_text = address.rsplit(":", 1)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = _polls(url)
    try:
        with Client(dsn, zookeeper=zk_hosts, cluster=cluster_name) as signalling:
            wait_until(lambda: signalling._waker is not None, 10, "the Client's waker")
            deadline = time.monotonic() + FLOOD_SECONDS
            submitted_at = time.monotonic() + FLOOD_SECONDS / 2
            task_id = None
            while time.monotonic() < deadline:
                for _ in range(20):
                    flood.sendto(MAGIC, (host, int(port_text)))
                if task_id is None and time.monotonic() >= submitted_at:
                    task_id = signalling.submit("demo.tasks:add", plugin="demo", args=(1, 1))
                    started = time.monotonic()
                time.sleep(0.001)
            polls = _polls(url) - before
            assert task_id is not None
            task = wait_state(signalling, task_id, TaskState.SUCCEEDED, timeout=5)
            assert task.started_at is not None
    finally:
        flood.close()
    # Unchecked, MIN_GAP allows FLOOD_SECONDS / 0.002 = 1,500 reads.
    assert polls <= 40, f"{polls:.0f} reads of the queue in {FLOOD_SECONDS} s of forged datagrams"
    assert time.monotonic() - started < FLOOD_SECONDS  # it ran during the flood, not after
