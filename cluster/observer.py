"""A read-only view of a cluster in ZooKeeper: its live members and its leader.

What the CLI (``taskman nodes``) and the admin UI's cluster page show. They see
ZooKeeper only through this class, so kazoo stays inside ``cluster/`` and every
ZooKeeper failure reaches them as ``CoordinationError``.

An observer never creates a znode: a viewer must not create the cluster's paths
(with its own ACL, or none) on an ensemble where the cluster does not exist yet.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

from kazoo.exceptions import KazooException

from taskman.cluster import membership
from taskman.cluster.election import LeaderElection
from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import ZkSecurity, connect, wait
from taskman.errors import CoordinationError

SESSION_TIMEOUT = 10.0  # an observer holds no claims: its session length matters to nobody


class ClusterObserver:
    """One read-only ZooKeeper session on one cluster; ``close`` ends it."""

    def __init__(
        self,
        hosts: str,
        cluster: str,
        security: ZkSecurity | None = None,
        *,
        start_timeout: float = 15.0,
    ) -> None:
        self.paths = ClusterPaths(cluster)
        self._client = connect(
            hosts, SESSION_TIMEOUT, security=security, start_timeout=start_timeout
        )

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    def members(self) -> list[dict[str, Any]]:
        """Every live node's published info, sorted by datacenter and id."""
        try:
            if wait(self._client.exists_async(self.paths.nodes)) is None:
                return []
            return membership.members(self._client, self.paths)
        except KazooException as exc:
            raise CoordinationError(f"cannot read the members: {exc!r}") from exc

    def leader(self) -> str | None:
        """The node id of the current leader; None if no node leads (or it cannot be told)."""
        return LeaderElection(self._client, self.paths, "observer").current_leader()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # kazoo raises many kinds while closing
            self._client.stop()
            self._client.close()

    def __enter__(self) -> ClusterObserver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
