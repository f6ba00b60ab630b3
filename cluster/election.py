"""Leader election for the reaper duties, with the leader's epoch as its fencing token.

A thin wrapper over kazoo's Lock. The epoch is the czxid of the leader's lock
znode: a later leader's epoch is always larger. The leader writes it to the
``leadership`` row, and its writes are guarded by it, so a leader that was
paused and replaced changes nothing when it wakes.
"""

from __future__ import annotations

import contextlib

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, LockTimeout, NoNodeError
from kazoo.recipe.lock import Lock

from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import wait
from taskman.errors import CoordinationError

log = structlog.get_logger("taskman.cluster")


class LeaderElection:
    def __init__(self, client: KazooClient, paths: ClusterPaths, node_id: str) -> None:
        self.client = client
        self.paths = paths
        self.node_id = node_id
        self._lock: Lock | None = None
        self.epoch: int | None = None
        self._session: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None and self._same_session()

    def _same_session(self) -> bool:
        client_id = self.client.client_id
        return client_id is not None and client_id[0] == self._session

    def try_acquire(self, timeout: float) -> int | None:
        """Try to become leader for up to ``timeout`` s; the epoch on success."""
        if self.is_leader:
            return self.epoch
        self.resign()
        self._drop_own_contenders()
        lock = self.client.Lock(self.paths.leader, self.node_id)
        try:
            acquired = lock.acquire(timeout=timeout)
        except LockTimeout:
            acquired = False  # another node leads: the normal case for all but one node
        except (KazooException, CoordinationError) as exc:
            log.info("leader.acquire_failed", error=str(exc))
            acquired = False
        if not acquired:
            with contextlib.suppress(KazooException):
                lock.cancel()
                lock.release()
            return None
        try:
            stat = wait(self.client.exists_async(f"{lock.path}/{lock.node}"))
        except (KazooException, CoordinationError):
            stat = None
        if stat is None:
            with contextlib.suppress(KazooException):
                lock.release()
            return None
        client_id = self.client.client_id
        self._lock = lock
        self._session = None if client_id is None else client_id[0]
        self.epoch = int(stat.czxid)
        return self.epoch

    def _drop_own_contenders(self) -> None:
        """Delete contender znodes our session left behind.

        A contender create in flight when the connection dropped can land after
        kazoo's Lock gave up on it. No Lock object knows it, yet it sits in the
        queue with a live session: every node, this one included, would wait
        behind it until the session ends (seen in the chaos lab: no leader for
        minutes after a partition).
        """
        client_id = self.client.client_id
        if client_id is None:
            return
        try:
            children = wait(self.client.get_children_async(self.paths.leader))
            for child in children:
                path = f"{self.paths.leader}/{child}"
                stat = wait(self.client.exists_async(path))
                if stat is not None and stat.ephemeralOwner == client_id[0]:
                    log.warning("leader.orphan_contender_dropped", path=path)
                    with contextlib.suppress(NoNodeError):
                        wait(self.client.delete_async(path))
        except (KazooException, CoordinationError) as exc:
            log.info("leader.contender_check_failed", error=str(exc))

    def resign(self) -> None:
        lock, self._lock, self.epoch = self._lock, None, None
        if lock is not None:
            with contextlib.suppress(KazooException, CoordinationError):
                lock.release()

    def current_leader(self) -> str | None:
        """The node id of the current leader, as ZooKeeper orders the contenders."""
        try:
            # Lock.contenders() creates a missing path: never create it from a reader.
            if wait(self.client.exists_async(self.paths.leader)) is None:
                return None
            contenders = self.client.Lock(self.paths.leader, self.node_id).contenders()
        except (KazooException, CoordinationError):
            return None
        return str(contenders[0]) if contenders else None
