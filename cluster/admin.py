"""What an operator asks of a running cluster: drain a node, lift the fencing tokens.

Each call opens its own short ZooKeeper session, so the CLI never talks to
ZooKeeper itself (kazoo stays inside ``cluster/``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from kazoo.exceptions import NodeExistsError

from taskman.cluster import membership
from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import (
    ZkSecurity,
    connect,
    ensure_namespace,
    fresh_zxid,
    read_token_base,
    wait,
    zk_security,
)
from taskman.config import NodeConfig
from taskman.errors import CoordinationError, TaskNotFoundError
from taskman.store import TaskStore

SESSION_TIMEOUT = 10.0


def request_drain(hosts: str, cluster: str, node_id: str, security: ZkSecurity) -> None:
    """Ask a live node to drain: it stops claiming, lets running tasks finish, then exits."""
    paths = ClusterPaths(cluster)
    client = connect(hosts, SESSION_TIMEOUT, security=security)
    try:
        if wait(client.exists_async(paths.node(node_id))) is None:
            raise TaskNotFoundError(f"no live node {node_id!r} in cluster {cluster!r}")
        wait(client.ensure_path_async(paths.drain_requests))
        with contextlib.suppress(NodeExistsError):  # already asked
            wait(client.create_async(paths.drain(node_id), b"drain"))
    finally:
        client.stop()
        client.close()


@dataclass(frozen=True)
class Rebase:
    """What ``rebase_tokens`` found and did."""

    highest: int  # the highest fencing token or leader epoch the database holds
    zxid: int  # a zxid the ensemble issued after that was read
    base: int  # the token base now stored in the ensemble
    changed: bool


def rebase_tokens(config: NodeConfig, store: TaskStore, *, force: bool) -> Rebase:
    """Store a token base that lifts every later token above the database's highest.

    A rebuilt ensemble restarts its zxids low; nodes refuse to start on it until
    this ran. It only ever raises the base. Refused while nodes are registered,
    unless ``force``.
    """
    paths = ClusterPaths(config.cluster)
    client = connect(config.zookeeper, SESSION_TIMEOUT, security=zk_security(config))
    try:
        ensure_namespace(client, paths, insecure=config.insecure)
        live = membership.members(client, paths)
        if live and not force:
            names = ", ".join(str(m.get("node_id")) for m in live)
            raise CoordinationError(
                f"nodes are running ({names}): stop every node first, or pass --force"
            )
        highest = store.max_token()
        current = read_token_base(client, paths)
        zxid = fresh_zxid(client, paths)
        # Every later zxid is larger than this one, so base + zxid > highest for good.
        base = max(current, highest - zxid + 1)
        if base != current:
            data = str(base).encode()
            try:
                wait(client.create_async(paths.token_base, data))
            except NodeExistsError:
                wait(client.set_async(paths.token_base, data))
    finally:
        client.stop()
        client.close()
    return Rebase(highest=highest, zxid=zxid, base=base, changed=base != current)
