"""The cluster as the UI shows it: live members from ZooKeeper, lost ones from memory and the DB.

ZooKeeper only knows live nodes (each is an ephemeral znode). A node is shown as
*lost* when this UI saw it live earlier and its znode is gone, or when the
database still has running tasks owned by a node that is not live (the leader
re-queues those at session expiry).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskman.errors import CoordinationError

if TYPE_CHECKING:  # imported when used: a UI without ZooKeeper never loads kazoo
    from taskman.cluster.observer import ClusterObserver
    from taskman.cluster.zk import ZkSecurity

RECONNECT_AFTER = 5.0  # seconds between connection attempts while ZooKeeper is down
FORGET_LOST_AFTER = 3600.0  # a lost node leaves the dashboard an hour after it was last seen


@dataclass
class NodeView:
    node_id: str
    datacenter: str
    live: bool
    slots: int | None = None
    slots_used: int | None = None
    plugins: dict[str, list[str]] = field(default_factory=dict)
    version: str | None = None
    host: str | None = None
    started_at: float | None = None
    last_seen: float | None = None  # wall clock, for lost nodes
    running: int = 0  # running tasks the database says it owns
    leader: bool = False


@dataclass
class DatacenterView:
    name: str
    nodes: list[NodeView]

    @property
    def live(self) -> int:
        return sum(1 for n in self.nodes if n.live)

    @property
    def slots(self) -> int:
        return sum(n.slots or 0 for n in self.nodes if n.live)

    @property
    def slots_used(self) -> int:
        return sum(n.slots_used or 0 for n in self.nodes if n.live)


@dataclass
class ClusterSnapshot:
    datacenters: list[DatacenterView]
    leader: str | None
    error: str | None = None
    configured: bool = True

    @property
    def plugins(self) -> list[str]:
        return sorted({p for dc in self.datacenters for n in dc.nodes for p in n.plugins})


class ClusterView:
    """Reads membership and the leader with one long-lived read-only ZooKeeper session."""

    def __init__(
        self,
        hosts: str | None,
        cluster: str,
        security: ZkSecurity | None = None,
        members: Callable[[], tuple[list[dict[str, Any]], str | None]] | None = None,
    ) -> None:
        self.members = members
        self.hosts = hosts
        self.cluster = cluster
        self.security = security  # the cluster's znodes have ACLs: read them as the cluster
        self._observer: ClusterObserver | None = None
        self._lock = threading.Lock()
        self._next_try = 0.0
        self._seen: dict[str, NodeView] = {}

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.close()

    def _connected(self) -> ClusterObserver:
        from taskman.cluster.observer import ClusterObserver

        if self._observer is not None and self._observer.connected:
            return self._observer
        self._drop()
        if time.monotonic() < self._next_try:
            raise CoordinationError(f"cannot reach ZooKeeper at {self.hosts}; retrying shortly")
        try:
            self._observer = ClusterObserver(
                str(self.hosts), self.cluster, self.security, start_timeout=3.0
            )
        except CoordinationError:
            self._next_try = time.monotonic() + RECONNECT_AFTER
            raise
        return self._observer

    def snapshot(self, running: dict[tuple[str, str], int]) -> ClusterSnapshot:
        """``running``: (node, datacenter) -> running tasks the database says it owns."""
        if self.members is not None:
            found, leader = self.members()
            return self._assemble(found, leader, running, None, True)
        if not self.hosts:
            return self._assemble([], None, running, "ZooKeeper is not configured", False)
        with self._lock:
            try:
                observer = self._connected()
                found = observer.members()
                leader = observer.leader()
            except CoordinationError as exc:
                self._drop()
                return self._assemble([], None, running, str(exc) or type(exc).__name__, True)
            return self._assemble(found, leader, running, None, True)

    def _assemble(
        self,
        found: list[dict[str, Any]],
        leader: str | None,
        running: dict[tuple[str, str], int],
        error: str | None,
        configured: bool,
    ) -> ClusterSnapshot:
        now = time.time()
        nodes: dict[str, NodeView] = {}
        for info in found:
            node_id = str(info.get("node_id", "?"))
            plugins = info.get("plugins") or {}
            nodes[node_id] = NodeView(
                node_id=node_id,
                datacenter=str(info.get("datacenter", "?")),
                live=True,
                slots=info.get("slots"),
                slots_used=info.get("slots_used"),
                plugins={str(k): [str(v) for v in vs] for k, vs in plugins.items()},
                version=info.get("taskman_version"),
                host=info.get("host"),
                started_at=info.get("started_at"),
                last_seen=now,
                leader=node_id == leader,
            )
        if error is None:  # only a successful read says who is gone
            for node_id, seen in list(self._seen.items()):
                if (
                    node_id not in nodes
                    and seen.last_seen
                    and now - seen.last_seen < FORGET_LOST_AFTER
                ):
                    nodes[node_id] = NodeView(
                        node_id=node_id,
                        datacenter=seen.datacenter,
                        live=False,
                        version=seen.version,
                        host=seen.host,
                        last_seen=seen.last_seen,
                    )
            for node_id, view in nodes.items():
                if view.live:
                    self._seen[node_id] = view
            for owner, datacenter in running:
                if owner not in nodes:
                    nodes[owner] = NodeView(node_id=owner, datacenter=datacenter, live=False)
        for (owner, _), count in running.items():
            if owner in nodes:
                nodes[owner].running = count
        by_dc: dict[str, list[NodeView]] = {}
        for view in sorted(nodes.values(), key=lambda n: (n.datacenter, n.node_id)):
            by_dc.setdefault(view.datacenter, []).append(view)
        dcs = [DatacenterView(name, members) for name, members in sorted(by_dc.items())]
        return ClusterSnapshot(dcs, leader, error, configured)
