"""The leader's duties: reclaim orphaned attempts, expire overdue tasks, fail unplaceable ones.

Reclaim compares the database with ZooKeeper in this order: read the running
tasks, then list the live claims (after a sync, so the ZooKeeper server answering
has applied every claim created before the rows were read). An owner records its
outcome before it drops its claim, so "running, and its claim is gone" can only
mean the owner died.
Each reclaim is one UPDATE fenced on the old token and guarded by the leader's
epoch; if it races the owner's own outcome write, one of them matches 0 rows.

Heartbeat timeouts are measured on the leader's own monotonic clock: the reaper
only compares a task's heartbeat value with the value it saw before, never one
machine's clock with another's.

A queued task is unplaceable while no live member could run it: none has its
plugin (and pinned version) in its pinned datacenter. The leader times how long
each placement has gone unserved, on its own monotonic clock, from the first
pass that found it so; one pass that finds it served starts the count again. So
a member's short absence (a restart) fails nothing, however old the queued work.
A new leader starts counting afresh: a failover can only delay a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from taskman.cluster.layout import claim_name
from taskman.cluster.lease import ClaimLease
from taskman.states import Outcome, TaskState
from taskman.store import RunningTask, TaskStore

log = structlog.get_logger("taskman.cluster")
ROLE = "reaper"


@dataclass
class _Seen:
    fence: int
    heartbeat_at: datetime | None
    since: float


Placement = tuple[str, str | None, str | None]  # plugin, pinned version, pinned datacenter


@dataclass(frozen=True)
class ReapReport:
    node_lost: int = 0
    heartbeat_lost: int = 0
    expired: int = 0


class Reaper:
    def __init__(
        self,
        store: TaskStore,
        lease: ClaimLease,
        members: Callable[[], list[dict[str, Any]]],
        *,
        heartbeat_timeout: float,
        max_reclaims: int,
        unrunnable_grace: float,
    ) -> None:
        self.store = store
        self.lease = lease
        self.members = members
        self.heartbeat_timeout = heartbeat_timeout
        self.max_reclaims = max_reclaims
        self.unrunnable_grace = unrunnable_grace
        self._seen: dict[int, _Seen] = {}
        self._unserved: dict[Placement, float] = {}  # monotonic time first seen unserved

    def forget(self) -> None:
        """A new term starts from scratch (heartbeat and unserved ages are measured from now)."""
        self._seen.clear()
        self._unserved.clear()

    def take_office(self, node_id: str, epoch: int) -> bool:
        self.forget()
        return self.store.take_leadership(ROLE, epoch, node_id)

    def prune(
        self, epoch: int, retention: dict[TaskState, float], batch: int, budget: float
    ) -> int:
        """Delete finished tasks past their retention, batch by batch, for at most ``budget`` s."""
        deadline = time.monotonic() + budget
        removed = 0
        for state, age in retention.items():
            if age <= 0:
                continue
            while time.monotonic() < deadline:
                count = self.store.prune(state, age, role=ROLE, epoch=epoch, batch=batch)
                removed += count
                if count < batch:
                    break
        if removed:
            log.info("tasks.pruned", count=removed)
        return removed

    def reap(self, epoch: int) -> ReapReport:
        running = self.store.running()
        claims = self.lease.live_claims()  # after the database read: see the module docstring
        now = time.monotonic()
        node_lost = heartbeat_lost = 0
        still_running = set()
        for task in running:
            still_running.add(task.task_id)
            if claim_name(task.task_id, task.attempt) not in claims:
                reason = f"owner {task.owner} lost its ZooKeeper session"
                if self._reclaim(task, Outcome.NODE_LOST, reason, epoch):
                    node_lost += 1
                continue
            seen = self._seen.get(task.task_id)
            if seen is None or seen.fence != task.fence or seen.heartbeat_at != task.heartbeat_at:
                self._seen[task.task_id] = _Seen(task.fence, task.heartbeat_at, now)
            elif now - seen.since > self.heartbeat_timeout:
                reason = (
                    f"owner {task.owner} holds the claim but wrote no heartbeat for "
                    f"{self.heartbeat_timeout:.0f} s"
                )
                if self._reclaim(task, Outcome.HEARTBEAT_TIMEOUT, reason, epoch):
                    heartbeat_lost += 1
                    # The claim is per attempt, so deleting this one can't touch a newer claim.
                    self.lease.revoke(task.task_id, task.attempt)
        for task_id in set(self._seen) - still_running:
            del self._seen[task_id]
        expired = self.store.expire_due(role=ROLE, epoch=epoch)
        if expired:
            log.info("tasks.expired", count=expired)
        self.fail_unplaceable(epoch)  # logs what it failed (tasks.unplaceable)
        return ReapReport(node_lost, heartbeat_lost, expired)

    def _reclaim(self, task: RunningTask, outcome: Outcome, reason: str, epoch: int) -> bool:
        give_up = task.reclaims + 1 > self.max_reclaims
        done = self.store.reclaim(
            task, outcome=outcome, reason=reason, give_up=give_up, role=ROLE, epoch=epoch
        )
        if done:
            log.warning(
                "task.reclaimed",
                task_id=task.task_id,
                attempt=task.attempt,
                token=task.fence,
                owner=task.owner,
                outcome=outcome.value,
                gave_up=give_up,
            )
        self._seen.pop(task.task_id, None)
        return done

    def fail_unplaceable(self, epoch: int) -> int:
        """Fail queued tasks no live member has been able to run for ``unrunnable_grace`` s."""
        members = [m for m in self.members() if not m.get("invalid")]
        now = time.monotonic()
        unserved: dict[Placement, float] = {}
        failed = 0
        for placement in self.store.queued_placements():
            problem = why_unplaceable(placement, members)
            if problem is None:
                continue
            since = unserved[placement] = self._unserved.get(placement, now)
            if now - since < self.unrunnable_grace:
                continue
            error_type, reason = problem
            message = f"{reason}; no node could run it for {self.unrunnable_grace:g} s"
            count = self.store.fail_unplaceable(
                placement, error_type, message, self.unrunnable_grace, role=ROLE, epoch=epoch
            )
            if count:
                plugin, version, datacenter = placement
                log.warning(
                    "tasks.unplaceable",
                    plugin=plugin,
                    version=version,
                    datacenter=datacenter,
                    reason=reason,
                    count=count,
                )
            failed += count
        self._unserved = unserved  # a placement served now, or no longer queued, starts over
        return failed


def _serves(member: dict[str, Any], plugin: str, version: str | None) -> bool:
    versions = list(dict(member.get("plugins") or {}).get(plugin) or [])
    return bool(versions) and (version is None or version in versions)


def why_unplaceable(placement: Placement, members: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(error type, reason) if no member can run tasks of ``placement``; None if one can."""
    plugin, version, datacenter = placement
    what = f"plugin {plugin!r}" + (f" version {version}" if version else "")
    anywhere = sorted({str(m.get("datacenter")) for m in members if _serves(m, plugin, version)})
    if datacenter is None:
        return None if anywhere else ("PluginError", f"no live node has {what} installed")
    if datacenter in anywhere:
        return None
    live = sorted({str(m.get("datacenter")) for m in members})
    if datacenter not in live:
        listed = ", ".join(live) or "none"
        reason = f"pinned to datacenter {datacenter!r}, where no node is live"
        return "PlacementError", f"{reason} (live datacenters: {listed})"
    reason = f"no live node in datacenter {datacenter!r} has {what} installed"
    if anywhere:
        return "PlacementError", f"{reason} (nodes in {', '.join(anywhere)} have it)"
    return "PluginError", reason
