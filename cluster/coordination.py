"""What a node needs from its coordinator, and the two coordinators.

``ZkCoordination`` is the real one: a ZooKeeper ensemble across datacenters.
``LocalCoordination`` serves the embedded single-node mode (``taskman dev``): one
process on one machine, so sessions cannot be lost, claims live in memory and
die with the process, and the leader is always this node. Its tokens still only
grow: they start above every fence and epoch already in the database.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from kazoo.exceptions import KazooException
from kazoo.recipe.watchers import DataWatch

from taskman import metrics, wakeup
from taskman.cluster import membership
from taskman.cluster.concurrency import Blocked, Cap, ConcurrencyGate, Permit, admits
from taskman.cluster.contracts import Coordinator, Election, JsonValue, Member
from taskman.cluster.election import LeaderElection
from taskman.cluster.layout import ClusterPaths, claim_name
from taskman.cluster.lease import ClaimLease
from taskman.cluster.wake import Bumper, WakeWatch, ensure_wake_node, publish_wake_address
from taskman.cluster.zk import (
    ZK_TIMEOUT,
    SessionMonitor,
    connect,
    ensure_namespace,
    fresh_zxid,
    negotiated_timeout,
    read_token_base,
    wait,
    zk_security,
)
from taskman.config import NodeConfig
from taskman.errors import CoordinationError
from taskman.store import Candidate


def claim_path_timeout(session_timeout: float) -> float:
    """The deadline of the ZooKeeper calls on the claim path (caps, claims).

    Well under the session timeout: the main loop that waits on them also serves
    the runners, and a node that cannot reach ZooKeeper fences itself at 0.8 of it.
    """
    return min(ZK_TIMEOUT, session_timeout / 4)


class ZkCoordination:
    """Claims, membership, leadership and caps in a ZooKeeper ensemble."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.paths = ClusterPaths(config.cluster)
        security = zk_security(config)
        self.client = connect(config.zookeeper, config.session_timeout, security=security)
        ensure_namespace(self.client, self.paths, insecure=config.insecure)
        ensure_wake_node(self.client, self.paths, security)
        self._security = security
        self.wake_address: str | None = None  # published at every (re)registration
        self._wake_watch: WakeWatch | None = None
        self._bumper = Bumper(self._send_bump, name="node-wake")
        self.monitor = SessionMonitor(self.client, self.paths.nodes, config.session_timeout)
        timeout = claim_path_timeout(config.session_timeout)
        self.lease = ClaimLease(self.client, self.paths, config.node_id, timeout)
        self.lease.token_base = read_token_base(self.client, self.paths)
        self.gate = ConcurrencyGate(self.client, self.paths, config.node_id, timeout)

    def start(self) -> None:
        self.monitor.start()

    def granted_session_timeout(self) -> float | None:
        """The session timeout the ensemble negotiated (it may clamp the configured one)."""
        return negotiated_timeout(self.client)

    def election(self) -> Election:
        return LeaderElection(
            self.client, self.paths, self.config.node_id, token_base=self.lease.token_base
        )

    def fresh_token(self) -> int:
        """A token the ensemble would issue now: every later claim's is larger."""
        return fresh_zxid(self.client, self.paths) + int(self.lease.token_base)

    def register(self, info: Mapping[str, JsonValue], *, wait_for: float) -> None:
        membership.register(self.client, self.paths, self.config.node_id, info, wait_for=wait_for)
        self.lease.open_session()
        if self.wake_address is not None:
            publish_wake_address(
                self.client, self.paths, self.config.node_id, self.wake_address, self._security
            )

    def update(self, info: Mapping[str, JsonValue]) -> None:
        membership.update(self.client, self.paths, self.config.node_id, info)

    def members(self) -> list[Member]:
        return membership.members(self.client, self.paths)

    def watch_drain(self, on_request: Callable[[], None]) -> None:
        """`taskman node drain` creates drain/<node_id>; then ``on_request`` runs."""
        path = self.paths.drain(self.config.node_id)
        with contextlib.suppress(KazooException, CoordinationError):
            wait(self.client.delete_async(path))  # a request addressed to an earlier run

        def on_change(data: bytes | None, stat: object) -> bool:
            if stat is not None:
                on_request()
                return False
            return True

        DataWatch(self.client, path, on_change)

    def watch_wake(self, on_wake: Callable[[], None]) -> None:
        self._wake_watch = WakeWatch(self.client, self.paths.wake, on_wake)

    def wakes_armed(self) -> bool:
        # A server that stopped answering may also sit on notifications: not armed then.
        watch = self._wake_watch
        healthy = self.monitor.healthy(within=self.config.session_timeout / 3)
        return watch is not None and watch.armed and healthy

    def bump(self) -> None:
        self._bumper.bump()

    def _send_bump(self) -> None:
        try:
            wait(self.client.set_async(self.paths.wake, b""), timeout=self.lease.timeout)
        except Exception:
            metrics.WAKE_BUMPS.labels("failed").inc()
            raise
        metrics.WAKE_BUMPS.labels("sent").inc()

    def close(self) -> None:
        self._bumper.close()
        self.monitor.stop()
        with contextlib.suppress(KazooException, CoordinationError):
            membership.unregister(self.client, self.paths, self.config.node_id)
        with contextlib.suppress(KazooException):
            self.client.stop()
            self.client.close()


# -- the embedded coordinator -----------------------------------------------------


class _Done:
    """A finished call, shaped like the kazoo async results the node checks."""

    def __init__(self, value: object = None) -> None:
        self.value = value
        self.exception: BaseException | None = None

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return True


class _Tokens:
    """Strictly growing tokens, starting above everything the database has seen."""

    def __init__(self, floor: int) -> None:
        self._next = itertools.count(floor + 1)
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            return next(self._next)


class _LocalMonitor:
    """One process cannot lose contact with itself."""

    state = "CONNECTED"
    session_id = 1

    def __init__(self) -> None:
        self.lost = threading.Event()  # never set

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def silence(self) -> float:
        return 0.0

    def healthy(self, within: float) -> bool:
        return True


class _LocalLease:
    marker = "local"  # one process, one session: releases always apply

    def __init__(self, tokens: _Tokens) -> None:
        self._tokens = tokens
        self._claims: set[str] = set()
        self._lock = threading.Lock()

    def acquire(self, task_id: int, attempt: int) -> int | None:
        name = claim_name(task_id, attempt)
        with self._lock:
            if name in self._claims:
                return None
            self._claims.add(name)
        return self._tokens.take()

    def acquire_many(self, attempts: list[tuple[int, int]]) -> list[int | None]:
        return [self.acquire(task_id, attempt) for task_id, attempt in attempts]

    def acquire_and_release(
        self,
        attempts: list[tuple[int, int]],
        release: list[tuple[int, int]],
        *,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[list[int | None], list[tuple[int, int]]]:
        for task_id, attempt in release:
            self.release(task_id, attempt)
        if meanwhile is not None:
            meanwhile()
        return self.acquire_many(attempts), []

    def release(self, task_id: int, attempt: int) -> None:
        with self._lock:
            self._claims.discard(claim_name(task_id, attempt))

    def release_many_async(self, attempts: list[tuple[int, int]]) -> _Done:
        for task_id, attempt in attempts:
            self.release(task_id, attempt)
        return _Done(value=[True] * (len(attempts) + 1))  # the session check, then each claim

    def revoke(self, task_id: int, attempt: int) -> None:
        self.release(task_id, attempt)

    def live_claims(self) -> set[str]:
        # Claims die with the process: after a restart, running rows have none and
        # the reaper re-queues them at once.
        with self._lock:
            return set(self._claims)


class _LocalGate:
    """The same admission rule as ConcurrencyGate, over permits kept in memory."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, int]] = {}  # key -> permit name -> its limit
        self._names = itertools.count(1)
        self._blocked = Blocked()
        self._lock = threading.Lock()

    def try_acquire(self, cap: Cap, candidate: Candidate) -> Permit | None:
        with self._lock:
            held = self._held.setdefault(cap.key, {})
            # In one process every held permit was admitted earlier: all are ahead.
            if admits(cap.limit, list(held.values())):
                name = f"local-{next(self._names)}"
                held[name] = cap.limit
                return Permit(cap.key, cap.limit, name)
            self._blocked.add(cap, candidate)
            return None

    def release(self, permit: Permit) -> None:
        with self._lock:
            held = self._held.get(permit.key, {})
            held.pop(permit.name, None)  # exactly this permit, so a second release is harmless
            if not held:
                self._held.pop(permit.key, None)

    def blocked(self) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        with self._lock:
            return self._blocked.current()

    def held(self) -> int:
        with self._lock:
            return sum(len(h) for h in self._held.values())


class _LocalElection:
    def __init__(self, tokens: _Tokens, node_id: str) -> None:
        self._tokens = tokens
        self._node_id = node_id
        self.epoch: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None

    def try_acquire(self, timeout: float) -> int | None:
        if self.epoch is None:
            self.epoch = self._tokens.take()
        return self.epoch

    def resign(self) -> None:
        self.epoch = None

    def current_leader(self) -> str | None:
        return self._node_id


class LocalCoordination:
    """The embedded coordinator: everything in this process, tokens above ``floor``."""

    def __init__(self, config: NodeConfig, floor: int) -> None:
        self.config = config
        self.wake_address: str | None = None  # one process: nobody to send datagrams
        self._tokens = _Tokens(floor)
        self.monitor = _LocalMonitor()
        self.lease = _LocalLease(self._tokens)
        self.gate = _LocalGate()
        self._info: Member = {}
        self._wake_key = wakeup.database_key(config.dsn)
        self._unlisten: Callable[[], None] = lambda: None

    def start(self) -> None:
        pass

    def granted_session_timeout(self) -> float | None:
        return None  # no server, no session to clamp

    def fresh_token(self) -> int | None:
        return None  # local tokens start above the database's already

    def election(self) -> Election:
        return _LocalElection(self._tokens, self.config.node_id)

    def register(self, info: Mapping[str, JsonValue], *, wait_for: float) -> None:
        self._info = dict(info)

    def update(self, info: Mapping[str, JsonValue]) -> None:
        self._info = dict(info)

    def members(self) -> list[Member]:
        return [dict(self._info)] if self._info else []

    def watch_drain(self, on_request: Callable[[], None]) -> None:
        pass  # one process: SIGTERM drains it

    def watch_wake(self, on_wake: Callable[[], None]) -> None:
        # Clients of this process on this database wake the node directly.
        self._unlisten = wakeup.listen(self.config.dsn, on_wake)

    def wakes_armed(self) -> bool:
        return False  # other processes (the CLI) cannot signal: poll at poll_interval

    def bump(self) -> None:
        wakeup.notify(self._wake_key)

    def close(self) -> None:
        self._unlisten()
        self._info = {}


if TYPE_CHECKING:
    # mypy checks both coordinators against the node's contracts (contracts.py).
    def _conforms(config: NodeConfig) -> tuple[Coordinator, Coordinator]:
        return ZkCoordination(config), LocalCoordination(config, 0)
