"""Wake-up signals under a slow ZooKeeper (real MariaDB and ZooKeeper, a stalling proxy)."""

from __future__ import annotations

import time

import pytest

from taskman import Client, TaskState
from tests.faults.support import FreezableProxy
from tests.integration.cluster_support import wait_state
from tests.integration.conftest import StartNode

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_a_signal_waits_for_a_slow_connection_instead_of_being_dropped(
    start_node: StartNode, dsn: str, zk_hosts: str, cluster_name: str
) -> None:
    """A Client's first submit often comes before its ZooKeeper connection is up (a loaded
    machine, a far ensemble). Its signal must go out once the connection is, not be
    dropped and leave the task to the nodes' idle poll (seen failing in CI)."""
    start_node("a", idle_poll_interval=60.0)
    time.sleep(1.0)  # the node is idle, its watch armed
    host, port = zk_hosts.split(",", maxsplit=1)[0].rsplit(":", 1)
    proxy = FreezableProxy(host, int(port))
    proxy.freeze()  # the Client's connection hangs in its handshake
    try:
        with Client(dsn, zookeeper=f"127.0.0.1:{proxy.port}", cluster=cluster_name) as client:
            task_id = client.submit("demo.tasks:add", plugin="demo", args=(2, 2))
            time.sleep(1.5)
            assert client.get(task_id).state is TaskState.QUEUED  # nobody has signalled yet
            proxy.thaw()
            assert wait_state(client, task_id, TaskState.SUCCEEDED, timeout=15).result == 4
            assert client.wake_stats()["sent"] >= 1
    finally:
        proxy.close()
