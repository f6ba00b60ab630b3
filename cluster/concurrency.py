"""Cluster-wide concurrency caps ("at most 2 settlement runs at a time") with kazoo's Semaphore.

Each running attempt of a capped function holds one lease: an ephemeral znode,
so a dead or partitioned node's leases vanish with its session. A zombie owner
cannot exceed the cap either: its runners die (watchdog, self-fencing) before
its session, and with it the lease, expires.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from urllib.parse import quote

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.recipe.lock import Semaphore

from taskman.cluster.layout import ClusterPaths
from taskman.errors import CoordinationError
from taskman.plugins import Plugin
from taskman.store import Candidate

log = structlog.get_logger("taskman.cluster")
BLOCKED_FOR = 1.0  # seconds a full cap is left out of the candidate query


@dataclass(frozen=True)
class Cap:
    key: str
    limit: int
    by_key: bool  # the task named the key (else the key is plugin:function)


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


class ConcurrencyGate:
    def __init__(self, client: KazooClient, paths: ClusterPaths, node_id: str) -> None:
        self.client = client
        self.paths = paths
        self.node_id = node_id
        self._blocked: dict[str, tuple[float, Cap, tuple[str, str] | None]] = {}

    def try_acquire(self, cap: Cap, candidate: Candidate) -> Semaphore | None:
        path = f"{self.paths.base}/semaphores/{quote(cap.key, safe='')}"
        semaphore = self.client.Semaphore(path, self.node_id, max_leases=cap.limit)
        try:
            if semaphore.acquire(blocking=False):
                return semaphore
        except ValueError as exc:
            # kazoo refuses a cap different from the one stored by the first holder.
            log.error("concurrency.inconsistent_cap", key=cap.key, limit=cap.limit, error=str(exc))
        pair = None if cap.by_key else (candidate.plugin, candidate.function)
        self._blocked[cap.key] = (time.monotonic() + BLOCKED_FOR, cap, pair)
        return None

    @staticmethod
    def release(semaphore: Semaphore) -> None:
        with contextlib.suppress(KazooException, CoordinationError):
            semaphore.release()

    def blocked(self) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        """Caps found full within the last second, to leave out of the candidate query."""
        now = time.monotonic()
        for key in [k for k, (until, _, _) in self._blocked.items() if until <= now]:
            del self._blocked[key]
        keys = frozenset(cap.key for _, cap, pair in self._blocked.values() if pair is None)
        pairs = frozenset(pair for _, _, pair in self._blocked.values() if pair is not None)
        return keys, pairs
