"""Membership: each live node is an ephemeral znode holding its datacenter, slots and plugins."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from taskman.cluster.contracts import JsonValue, Member
from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import wait
from taskman.errors import CoordinationError


def register(
    client: KazooClient,
    paths: ClusterPaths,
    node_id: str,
    info: Mapping[str, JsonValue],
    *,
    wait_for: float,
) -> None:
    """Create this node's member znode. A live node with the same id blocks start-up.

    A node restarted after a crash may find its previous session's znode still
    there until that session expires, so wait up to ``wait_for`` seconds.
    """
    path = paths.node(node_id)
    data = json.dumps(info, sort_keys=True).encode()
    deadline = time.monotonic() + wait_for
    while True:
        try:
            wait(client.create_async(path, data, ephemeral=True))
            return
        except NodeExistsError:
            try:
                _, stat = wait(client.get_async(path))
            except NoNodeError:
                continue
            client_id = client.client_id
            if client_id is not None and stat.ephemeralOwner == client_id[0]:
                wait(client.set_async(path, data))
                return
            if time.monotonic() >= deadline:
                raise CoordinationError(
                    f"node id {node_id!r} is already registered by a live node; "
                    "give every node its own node_id"
                ) from None
            time.sleep(0.25)


def update(
    client: KazooClient, paths: ClusterPaths, node_id: str, info: Mapping[str, JsonValue]
) -> None:
    wait(client.set_async(paths.node(node_id), json.dumps(info, sort_keys=True).encode()))


def unregister(client: KazooClient, paths: ClusterPaths, node_id: str) -> None:
    with contextlib.suppress(NoNodeError):
        wait(client.delete_async(paths.node(node_id)))


def members(client: KazooClient, paths: ClusterPaths) -> list[Member]:
    """Every live node's published info, sorted by datacenter and id."""
    found: list[Member] = []
    for name in wait(client.get_children_async(paths.nodes)):
        try:
            data, _ = wait(client.get_async(paths.node(name)))
        except NoNodeError:
            continue  # left while we were looking
        try:
            info = json.loads(data)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            info = {"node_id": name, "invalid": True}
        found.append(info)
    found.sort(key=lambda i: (str(i.get("datacenter")), str(i.get("node_id"))))
    return found
