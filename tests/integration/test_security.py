"""Security against real servers: ZooKeeper ACLs, secrets, least privilege, unprivileged runners."""

from __future__ import annotations

from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from taskman import Client, TaskState
from taskman.cluster.layout import ClusterPaths
from taskman.lab import ZooKeeperEnsemble
from taskman.lab.servers import LabError
from tests.integration.cluster_support import wait_state
from tests.integration.conftest import StartNode


def _anonymous(hosts: str) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=5)
    client.start(timeout=10)
    return client


def test_other_clients_of_the_ensemble_can_neither_read_nor_forge(
    start_node: StartNode, client: Client, zookeeper: ZooKeeperEnsemble, cluster_name: str
) -> None:
    start_node("a")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(3,))
    wait_state(client, task_id, TaskState.RUNNING)
    paths = ClusterPaths(cluster_name)
    intruder = _anonymous(zookeeper.hosts)
    try:
        for path in (paths.nodes, paths.claims, paths.leader):
            with pytest.raises(NoAuthError):
                intruder.get_children(path)
        with pytest.raises(NoAuthError):
            intruder.create(f"{paths.claims}/{task_id}.2", b"forged", ephemeral=True)
        with pytest.raises(NoAuthError):
            intruder.create(f"{paths.nodes}/evil", b"{}", ephemeral=True)
        with pytest.raises(NoAuthError):
            intruder.delete(f"{paths.claims}/{task_id}.1")
    finally:
        intruder.stop()
        intruder.close()
    assert wait_state(client, task_id, TaskState.SUCCEEDED).attempt == 1


def test_a_node_refuses_an_open_namespace_unless_insecure(
    start_node: StartNode, zookeeper: ZooKeeperEnsemble, cluster_name: str
) -> None:
    # Someone created the namespace without an ACL (world-writable).
    anonymous = _anonymous(zookeeper.hosts)
    try:
        anonymous.ensure_path(ClusterPaths(cluster_name).base)
    finally:
        anonymous.stop()
        anonymous.close()
    with pytest.raises(LabError, match="open to every client of the ensemble"):
        start_node("a")
    node = start_node("b", zookeeper_auth=None, insecure=True)
    assert node.alive()


def test_a_node_with_the_wrong_identity_is_refused(start_node: StartNode) -> None:
    start_node("a")
    with pytest.raises(LabError, match="belongs to another identity"):
        start_node("b", zookeeper_auth="taskman:wrong-password")


def test_without_zookeeper_auth_the_node_refuses_to_start(start_node: StartNode) -> None:
    with pytest.raises(LabError, match="no 'zookeeper_auth'"):
        start_node("a", zookeeper_auth=None)


def test_secrets_from_files_run_a_node(
    start_node: StartNode, client: Client, dsn: str, tmp_path: Path
) -> None:
    from tests.integration.cluster_support import ZK_AUTH

    (tmp_path / "dsn").write_text(dsn + "\n")
    (tmp_path / "zk").write_text(ZK_AUTH + "\n")
    start_node(
        "a",
        dsn=None,
        zookeeper_auth=None,
        dsn_file=str(tmp_path / "dsn"),
        zookeeper_auth_file=str(tmp_path / "zk"),
    )
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    assert wait_state(client, task_id, TaskState.SUCCEEDED).result == 2
