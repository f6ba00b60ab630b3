"""A claim release queued before a session was lost must never delete a claim of another session.

kazoo queues requests made while disconnected and sends them once it is connected
again, under whatever session it then has. A release of attempt n sent late by a
node whose session expired could delete the claim another node has since taken
for the same attempt; the leader would then reclaim a live attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient, KazooState

from taskman.cluster.layout import ClusterPaths
from taskman.cluster.lease import ClaimLease
from taskman.cluster.zk import connect, ensure_namespace, wait
from tests.integration.cluster_support import wait_until


@pytest.fixture
def paths() -> ClusterPaths:
    return ClusterPaths(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def clients(zk_hosts: str, paths: ClusterPaths) -> Iterator[list[KazooClient]]:
    made: list[KazooClient] = []

    def make() -> KazooClient:
        client = connect(zk_hosts, 4.0)
        made.append(client)
        return client

    first = make()
    ensure_namespace(first, paths, insecure=True)
    yield [first, make()]
    for client in made:
        client.stop()
        client.close()


def _expire(client: KazooClient, hosts: str) -> None:
    """End ``client``'s session from the server's side, as an expiry would."""
    old = client.client_id
    states: list[str] = []
    client.add_listener(states.append)
    twin = KazooClient(hosts=hosts, client_id=old)
    twin.start(timeout=10)
    twin.stop()
    twin.close()
    wait_until(lambda: KazooState.LOST in states, 15, "the session to be lost")
    wait_until(
        lambda: client.connected and client.client_id and client.client_id != old,
        15,
        "a new session",
    )


def test_a_release_sent_after_the_session_changed_deletes_nothing_of_another_node(
    clients: list[KazooClient], paths: ClusterPaths, zk_hosts: str
) -> None:
    a_client, b_client = clients
    a = ClaimLease(a_client, paths, "a")
    b = ClaimLease(b_client, paths, "b")
    a.open_session()
    b.open_session()
    assert a.acquire(7, 1) is not None
    _expire(a_client, zk_hosts)  # a's claim of 7.1 goes with its session...
    token = b.acquire(7, 1)  # ...and b takes the same attempt
    assert token is not None
    # a's release of the old claim reaches ZooKeeper only now, under a new session.
    result = wait(a.release_many_async([(7, 1)]))
    assert isinstance(result[0], Exception)  # refused as a whole
    assert b.token_of(7, 1) == token, "a deleted the claim b holds"
    a.release(7, 1)  # the single release is guarded the same way
    assert b.token_of(7, 1) == token, "a deleted the claim b holds"
    # Under its new session a releases its own claims as before.
    a.open_session()
    assert a.acquire(8, 1) is not None
    assert all(r is True for r in wait(a.release_many_async([(8, 1)]))[1:])
    assert a.token_of(8, 1) is None
