"""Leader election for the reaper duties, with the leader's epoch as its fencing token.

Contenders queue as ephemeral sequential znodes under ``leader/``, named as kazoo's
Lock names them (``<uuid>__lock__<seq>``) so nodes of either kind see one queue.
The lowest sequence leads. The epoch is the czxid of the leader's contender
znode: a later leader's epoch is always larger. The leader writes it to the
``leadership`` row, and its writes are guarded by it, so a leader that was
paused and replaced changes nothing when it wakes.

A waiting node keeps its one contender znode and its one watch (on its
predecessor) from call to call. A fresh kazoo Lock per try created a znode and
added a watcher every 2 s on every node but the leader, and never removed them.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Any

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError

from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import ZK_TIMEOUT, wait
from taskman.errors import CoordinationError

log = structlog.get_logger("taskman.cluster")
LOCK_MARK = "__lock__"  # kazoo's Lock: contenders are <uuid>__lock__<seq>


def _sequence(name: str) -> int | None:
    _, mark, sequence = name.rpartition(LOCK_MARK)
    return int(sequence) if mark and sequence.isdigit() else None


class LeaderElection:
    def __init__(
        self,
        client: KazooClient,
        paths: ClusterPaths,
        node_id: str,
        timeout: float = ZK_TIMEOUT,
        token_base: int = 0,
    ) -> None:
        self.client = client
        self.token_base = token_base  # added to the czxid: see ClusterPaths.token_base
        self.paths = paths
        self.node_id = node_id
        self.timeout = timeout  # for one ZooKeeper call
        self._prefix = uuid.uuid4().hex + LOCK_MARK
        self._contender: str | None = None  # our znode's name in the queue
        self._czxid = 0
        self._contender_session: int | None = None
        self._wake = threading.Event()
        self.epoch: int | None = None
        self._session: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None and self._same_session()

    def _session_id(self) -> int | None:
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    def _same_session(self) -> bool:
        session = self._session_id()
        return session is not None and session == self._session

    def try_acquire(self, timeout: float) -> int | None:
        """Try to become leader for up to ``timeout`` s; the epoch on success."""
        if self.is_leader:
            return self.epoch
        self.epoch = None
        deadline = time.monotonic() + timeout
        try:
            return self._contend(deadline)
        except (KazooException, CoordinationError) as exc:
            log.info("leader.acquire_failed", error=str(exc))
            # Not a hot loop while ZooKeeper refuses: the caller calls again at once.
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            return None

    def _contend(self, deadline: float) -> int | None:
        session = self._session_id()
        if self._contender is None or self._contender_session != session:
            self._drop_own_contenders()
            self._enter(deadline, session)
        while True:
            self._wake.clear()
            predecessor = self._predecessor()
            if predecessor is None:
                if self._contender is None:
                    return None  # our znode vanished: queue again on the next call
                self._session = session
                self.epoch = self._czxid
                return self.epoch
            try:
                # Always this one bound method: kazoo keeps watchers in a set, the server
                # one watch per path and session, so waiting again adds nothing.
                wait(
                    self.client.get_async(f"{self.paths.leader}/{predecessor}", self._on_change),
                    self.timeout,
                )
            except NoNodeError:
                continue  # gone already (and no watch was set): look again
            left = deadline - time.monotonic()
            if left <= 0 or not self._wake.wait(left):
                return None  # another node leads; our place in the queue is kept

    def _on_change(self, event: Any) -> None:
        # Runs on kazoo's thread: only wake the waiter.
        self._wake.set()

    def _enter(self, deadline: float, session: int | None) -> None:
        path, stat = wait(
            self.client.create_async(
                f"{self.paths.leader}/{self._prefix}",
                self.node_id.encode(),
                ephemeral=True,
                sequence=True,
                include_data=True,
            ),
            max(0.0, min(self.timeout, deadline - time.monotonic())),
        )
        self._contender = path.rsplit("/", 1)[1]
        self._czxid = int(stat.czxid) + self.token_base
        self._contender_session = session

    def _predecessor(self) -> str | None:
        """The contender just ahead of ours; None if ours leads (or is gone)."""
        children = wait(self.client.get_children_async(self.paths.leader), self.timeout)
        if self._contender is None or self._contender not in children:
            self._contender = None
            return None
        mine = _sequence(self._contender)
        ahead: list[tuple[int, str]] = []
        for child in children:
            sequence = _sequence(child)
            if sequence is None or mine is None or sequence >= mine:
                continue
            if child.startswith(self._prefix):
                # Our own create that timed out and landed later: we would wait behind it.
                log.warning("leader.orphan_contender_dropped", path=child)
                self.client.delete_async(f"{self.paths.leader}/{child}")
                continue
            ahead.append((sequence, child))
        return max(ahead)[1] if ahead else None

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
        """Leave the queue: as leader, hand over; as a waiting node, stop contending."""
        contender, self._contender, self.epoch = self._contender, None, None
        if contender is not None:
            with contextlib.suppress(KazooException, CoordinationError):
                wait(self.client.delete_async(f"{self.paths.leader}/{contender}"), self.timeout)

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
