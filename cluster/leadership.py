"""The leader's loop: contend, take office under the epoch, then tick, reap and prune.

Runs in its own thread of the node. Only one node at a time holds office; its
writes are guarded by its epoch, so a leader that was paused and replaced
changes nothing when it wakes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from taskman import metrics
from taskman.cluster.reaper import Reaper, ReapReport
from taskman.cluster.ticker import Ticker
from taskman.config import NodeConfig
from taskman.states import TaskState
from taskman.store import TaskStore, make_database
from taskman.store.schedules import ScheduleStore

REAP_INTERVAL = 0.5
QUEUE_DEPTH_INTERVAL = 5.0  # a COUNT over the whole table: not on every reaper pass
PRUNE_INTERVAL = 5.0  # retention passes: at most 1 s of small DELETE batches each
# A datacenter whose last node left is reported at 0 live nodes for this long, then
# taken for retired; the alerting rules look back as far (docs/operations.md).
REMEMBER_DATACENTER = 24 * 3600.0


class Leadership:
    def __init__(
        self,
        config: NodeConfig,
        coord: Any,
        log: Any,
        done: threading.Event,
        on_change: Callable[[bool], None],
    ) -> None:
        self.config = config
        self.coord = coord
        self.log = log
        self.done = done
        self.on_change = on_change
        self._next_depth = 0.0
        self._datacenters = DatacenterMemory(REMEMBER_DATACENTER)
        self._next_prune = 0.0
        self._term: int | None = None  # the epoch this node leads under, if it leads
        self._last_ok = time.monotonic()  # the last completed pass while leading
        self._election: Any = None
        self._resigned = False  # gave the office up; contend again once the database answers
        self.resign_after = config.leader_resign_after

    def retention(self) -> dict[TaskState, float]:
        cfg = self.config
        return {
            TaskState.SUCCEEDED: cfg.retention_succeeded,
            TaskState.FAILED: cfg.retention_failed,
            TaskState.ABORTED: cfg.retention_aborted,
            TaskState.EXPIRED: cfg.retention_expired,
        }

    def _publish(self, report: ReapReport, reaper: Reaper, ticker: Ticker) -> None:
        if report.node_lost:
            metrics.RECLAIMED.labels("node_lost").inc(report.node_lost)
        if report.heartbeat_lost:
            metrics.RECLAIMED.labels("heartbeat_timeout").inc(report.heartbeat_lost)
        if report.expired:
            metrics.TASKS_EXPIRED.inc(report.expired)
        now = time.monotonic()
        if now >= self._next_depth:
            # Only the leader publishes queue depth, so a sum over nodes is not N times too big.
            self._next_depth = now + QUEUE_DEPTH_INTERVAL
            counts = reaper.store.count_by_state()
            for state in TaskState:
                metrics.QUEUE_DEPTH.labels(state.value).set(counts.get(state.value, 0))
            metrics.OLDEST_QUEUED_AGE.set(reaper.store.oldest_queued_wait())
            metrics.SCHEDULE_LAG.set(ticker.store.lag())
            self._publish_nodes(self.coord.members(), now)

    def _publish_nodes(self, members: list[dict[str, Any]], now: float) -> None:
        counts, retired = self._datacenters.update(members, now)
        for datacenter in retired:
            metrics.NODES_LIVE.remove(datacenter)
        for datacenter, count in counts.items():
            metrics.NODES_LIVE.labels(datacenter).set(count)

    def _step_down(self, term: int) -> None:
        self.log.warning("leader.lost", epoch=term)
        self.on_change(False)
        # The leader's gauges: a former leader must not keep reporting the cluster.
        metrics.QUEUE_DEPTH.clear()
        metrics.NODES_LIVE.clear()
        metrics.OLDEST_QUEUED_AGE.set(0)
        metrics.SCHEDULE_LAG.set(0)
        self._datacenters.clear()
        self._next_depth = 0.0  # publish at once if elected again

    def run(self) -> None:
        """Lead while elected and able; no error ends this thread (invariant 10)."""
        cfg = self.config
        election = self._election = self.coord.election()
        # A read may wait out a Galera reconfiguration stall (failing it would only
        # delay the next observation of every heartbeat); a leader stuck for longer
        # than leader_resign_after is resigned by the guard thread (check_stuck).
        db = make_database(
            cfg.dsn,
            retry_deadline=cfg.database_deadline,
            connect_timeout=cfg.database_deadline,
            read_timeout=cfg.heartbeat_timeout,
        )
        reaper = Reaper(
            TaskStore(db),
            self.coord.lease,
            self.coord.members,
            heartbeat_timeout=cfg.heartbeat_timeout,
            max_reclaims=cfg.max_reclaims,
            unrunnable_grace=cfg.unrunnable_grace,
        )
        ticker = Ticker(ScheduleStore(reaper.store.db))  # same connection, same thread
        while not self.done.is_set():
            try:
                self._pass(election, reaper, ticker)
            except Exception as exc:  # noqa: BLE001 - logged, counted, survived
                metrics.LOOP_ERRORS.labels("leader").inc()
                self.log.error("loop.error", loop="leader", error=f"{type(exc).__name__}: {exc}")
            time.sleep(REAP_INTERVAL)
        with contextlib.suppress(Exception):
            election.resign()
        reaper.store.close()

    def check_stuck(self) -> None:
        """Called from the node's guard thread: give the office up if leading has stalled.

        A leader blocked in a database call cannot resign itself, and while it holds
        the office nobody reclaims, expires or ticks. After ``resign_after`` without
        a completed pass it resigns from here; its own late writes are fenced by its
        epoch, and it contends again only once its database answers.
        """
        term, election = self._term, self._election
        if term is None or election is None:
            return
        stuck_for = time.monotonic() - self._last_ok
        if stuck_for < self.resign_after:
            return
        self._resigned = True
        self._term = None
        self.log.error(
            "leader.resigned",
            epoch=term,
            reason=f"no leader pass has completed for {stuck_for:.1f} s",
        )
        metrics.LEADER_RESIGNED.inc()
        self._step_down(term)
        with contextlib.suppress(Exception):
            election.resign()

    def _pass(self, election: Any, reaper: Reaper, ticker: Ticker) -> None:
        cfg = self.config
        if not self.coord.monitor.healthy(within=cfg.session_timeout / 3):
            if self._term is not None:
                self._step_down(self._term)
                self._term = None
                election.resign()
            time.sleep(0.2)
            return
        if self._resigned:
            # Contend again only once the database answers: a node that cannot
            # reach it would take the office only to fail at it.
            if not reaper.store.db.ping():
                time.sleep(1.0)
                return
            self._resigned = False
        epoch = election.try_acquire(timeout=2.0)
        if epoch is None:
            if self._term is not None:
                self._step_down(self._term)
                self._term = None
            return
        if epoch != self._term:
            if not reaper.take_office(self.config.node_id, epoch):
                self.log.warning("leader.superseded", epoch=epoch)
                election.resign()
                time.sleep(1.0)
                return
            self._term = epoch
            self._last_ok = time.monotonic()
            self.on_change(True)
            self.log.info("leader.elected", epoch=epoch)
        ticks = ticker.run(epoch)  # first: it never raises, so a failing reap cannot stall ticks
        if ticks.tasks:
            self.coord.bump()  # new tasks are due: wake the idle nodes
        report = reaper.reap(epoch)
        if report.node_lost or report.heartbeat_lost:
            self.coord.bump()  # re-queued attempts keep their place in line: due now
        self._publish(report, reaper, ticker)
        self._prune(reaper, epoch)
        self._last_ok = time.monotonic()

    def _prune(self, reaper: Reaper, epoch: int) -> None:
        if time.monotonic() < self._next_prune:
            return
        removed = reaper.prune(epoch, self.retention(), self.config.prune_batch, 1.0)
        metrics.TASKS_PRUNED.inc(removed)
        # Behind (a full batch or more): keep going on the next pass.
        behind = removed >= self.config.prune_batch
        self._next_prune = time.monotonic() + (0 if behind else PRUNE_INTERVAL)


class DatacenterMemory:
    """Live members per datacenter, where one whose last node left reads 0, not nothing.

    An alert cannot tell a missing series from one not measured, so a datacenter
    seen during this term is kept, at 0, for ``remember`` seconds after its last
    live member, then taken for retired. A new leader starts empty; the alerting
    rule looks back as long over every leader's reports (docs/operations.md).
    """

    def __init__(self, remember: float) -> None:
        self.remember = remember
        self.last_live: dict[str, float] = {}  # datacenter -> when it last had a live member

    def update(self, members: list[dict[str, Any]], now: float) -> tuple[dict[str, int], list[str]]:
        """(live members of each remembered datacenter, datacenters retired by this call)."""
        counts: dict[str, int] = {}
        for member in members:
            if not member.get("invalid"):  # no readable info: the reaper skips it too
                datacenter = str(member.get("datacenter"))
                counts[datacenter] = counts.get(datacenter, 0) + 1
        for datacenter in counts:
            self.last_live[datacenter] = now
        retired = [dc for dc, at in self.last_live.items() if now - at > self.remember]
        for datacenter in retired:
            del self.last_live[datacenter]
        return {dc: counts.get(dc, 0) for dc in sorted(self.last_live)}, retired

    def clear(self) -> None:
        self.last_live.clear()
