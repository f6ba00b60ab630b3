"""Cluster-wide concurrency caps ("at most 2 settlement runs at a time").

Each running attempt of a capped key holds one permit: an ephemeral sequential
znode ``caps/<key>/<limit>-<gate>-<seq>``, so a dead or partitioned node's
permits vanish with its session. A zombie owner cannot exceed the cap either:
its runners die (watchdog, self-fencing) before its session, and with it the
permit, expires.

Admission (the same rank rule as kazoo's lease recipe, without its lock and
without a cap stored in ZooKeeper): create the permit, list the key's permits,
and keep it only if the permits ahead of it (lower sequence) number fewer than
the smallest limit among them and its own; otherwise delete it. Each claim is
checked against the limit its own task or plugin version declares, so a changed
cap takes effect at once, and an attempt never runs beside more attempts of its
key than its own limit allows. Two admissions racing cannot both slip in: the
later one (higher sequence) always sees the earlier, because a ZooKeeper server
answers a session's read only after applying that session's own create.

Every call has a deadline well under the session timeout, and nothing is left
registered per call: no watch, no connection-state listener.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import (
    ConnectionClosedError,
    KazooException,
    NoNodeError,
    SessionExpiredError,
)

from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import wait
from taskman.errors import CoordinationError
from taskman.plugins import Plugin
from taskman.store import Candidate

log = structlog.get_logger("taskman.cluster")
BLOCKED_FOR = 1.0  # seconds a full cap is left out of the candidate query
# A delete that failed with these needs no retry: the permit, or its session, is gone.
_GONE = (NoNodeError, SessionExpiredError, ConnectionClosedError)
GATE_ID_LENGTH = 32  # a uuid4's hex: names the gate (one per node process) in its permits


@dataclass(frozen=True)
class Cap:
    key: str
    limit: int
    by_key: bool  # the task named the key (else the key is plugin:function)


@dataclass(frozen=True)
class Permit:
    """One admitted attempt's hold on its cap; ``name`` identifies it for release."""

    key: str
    limit: int
    name: str


def cap_for(candidate: Candidate, plugin: Plugin | None) -> Cap | None:
    """The cap that applies to a candidate: the task's own, else its plugin's."""
    default_key = f"{candidate.plugin}:{candidate.function}"
    if candidate.concurrency_limit:
        key = candidate.concurrency_key or default_key
        return Cap(key, candidate.concurrency_limit, candidate.concurrency_key is not None)
    if plugin is not None:
        limit = plugin.concurrency_for(candidate.function)
        if limit:
            return Cap(default_key, limit, False)
    return None


def admits(limit: int, ahead: list[int]) -> bool:
    """The admission rule: ``ahead`` are the limits of the permits ahead of this one."""
    return len(ahead) < min([limit, *ahead])


class Blocked:
    """Caps found full recently, to leave out of the candidate query for a while."""

    def __init__(self) -> None:
        self._until: dict[str, tuple[float, Cap, tuple[str, str] | None]] = {}

    def add(self, cap: Cap, candidate: Candidate) -> None:
        pair = None if cap.by_key else (candidate.plugin, candidate.function)
        self._until[cap.key] = (time.monotonic() + BLOCKED_FOR, cap, pair)

    def current(self) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        now = time.monotonic()
        self._until = {k: v for k, v in self._until.items() if v[0] > now}
        live = self._until.values()
        keys = frozenset(cap.key for _, cap, pair in live if pair is None)
        pairs = frozenset(pair for _, _, pair in live if pair is not None)
        return keys, pairs


def _parse(name: str) -> tuple[int, str, int] | None:
    """(limit, gate, sequence) of a permit's znode name; None for anything else."""
    limit, _, rest = name.partition("-")
    gate, sequence = rest[:GATE_ID_LENGTH], rest[GATE_ID_LENGTH + 1 :]
    if not limit.isdigit() or rest[GATE_ID_LENGTH : GATE_ID_LENGTH + 1] != "-":
        return None
    try:
        return int(limit), gate, int(sequence)  # negative once the counter wrapped
    except ValueError:
        return None


def _before(a: int, b: int) -> bool:
    """Sequence ``a`` came before ``b``, across the wrap of ZooKeeper's 32-bit counter.

    The counter (the parent's cversion) moves on every create and delete under a
    key, so a busy key wraps it within months; live permits span far less than 2^31.
    """
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


class ConcurrencyGate:
    """Permits in ZooKeeper. Used from the node's main loop; a lock keeps it thread-safe."""

    def __init__(
        self, client: KazooClient, paths: ClusterPaths, node_id: str, timeout: float
    ) -> None:
        self.client = client
        self.paths = paths
        self.node_id = node_id
        self.timeout = timeout  # for one admission, all its round trips together
        self._gate = uuid.uuid4().hex  # names our permits, so our orphans can be recognised
        self._held: set[str] = set()  # paths of permits this gate admitted and holds
        self._releasing: list[tuple[str, Any]] = []  # (path, async delete) not yet confirmed
        self._blocked = Blocked()
        self._lock = threading.Lock()

    def _key_path(self, key: str) -> str:
        # Dots escaped too: a key "." or ".." would be no valid znode name.
        return f"{self.paths.caps}/{quote(key, safe='').replace('.', '%2E')}"

    def try_acquire(self, cap: Cap, candidate: Candidate) -> Permit | None:
        """A permit if the cap admits this attempt, None if it is full.

        Raises CoordinationError if ZooKeeper does not answer within the deadline.
        """
        with self._lock:
            self._check_releases()
            try:
                return self._admit(cap, candidate, time.monotonic() + self.timeout)
            except KazooException as exc:
                raise CoordinationError(f"concurrency cap {cap.key}: {exc!r}") from exc

    def _admit(self, cap: Cap, candidate: Candidate, deadline: float) -> Permit | None:
        parent = self._key_path(cap.key)
        data = json.dumps(
            {
                "node": self.node_id,
                "task": candidate.task_id,
                "attempt": candidate.attempt + 1,
                "limit": cap.limit,
            }
        ).encode()
        # A create that times out may still land later: then it is an orphan with our
        # gate's name in it, dropped the next time this key is looked at.
        prefix = f"{parent}/{cap.limit}-{self._gate}-"
        path = wait(
            self.client.create_async(prefix, data, ephemeral=True, sequence=True, makepath=True),
            _left(deadline),
        )
        name = path.rsplit("/", 1)[1]
        try:
            children = wait(self.client.get_children_async(parent), _left(deadline))
        except (KazooException, CoordinationError):
            self._delete(path)
            raise
        mine = _parse(name)
        assert mine is not None  # we named it
        ahead: list[int] = []
        for child in children:
            parsed = _parse(child)
            if parsed is None or not _before(parsed[2], mine[2]):
                continue  # not a permit, or ours, or behind us: the later one yields
            child_path = f"{parent}/{child}"
            if parsed[1] == self._gate and child_path not in self._held:
                log.warning("concurrency.orphan_dropped", path=child_path)
                self._delete(child_path)
                continue
            ahead.append(parsed[0])
        if admits(cap.limit, ahead):
            self._held.add(path)
            return Permit(cap.key, cap.limit, path)
        self._delete(path)
        self._blocked.add(cap, candidate)
        return None

    def release(self, permit: Permit) -> None:
        """Give a permit back. Never blocks: the delete is confirmed on later calls."""
        with self._lock:
            self._held.discard(permit.name)
            self._delete(permit.name)

    def _delete(self, path: str) -> None:
        self._releasing.append((path, self.client.delete_async(path)))

    def _check_releases(self) -> None:
        """Send again the deletes that failed (connection trouble); forget the done ones."""
        pending, self._releasing = self._releasing, []
        for path, result in pending:
            if not result.ready():
                self._releasing.append((path, result))
            elif not result.successful() and not isinstance(result.exception, _GONE):
                # The permit may still be there: leaving it would shrink the cap until
                # our session ends.
                self._delete(path)

    def blocked(self) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        """Caps found full within the last second, to leave out of the candidate query."""
        with self._lock:
            self._check_releases()
            return self._blocked.current()

    def held(self) -> int:
        with self._lock:
            return len(self._held)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
