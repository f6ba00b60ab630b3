"""The leader's loop: contend, take office under the epoch, then tick, reap and prune.

Runs in its own thread of the node. Only one node at a time holds office; its
writes are guarded by its epoch, so a leader that was paused and replaced
changes nothing when it wakes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import KazooException

from taskman import metrics
from taskman.cluster.reaper import Reaper, ReapReport
from taskman.cluster.ticker import Ticker
from taskman.config import NodeConfig
from taskman.errors import TaskmanError
from taskman.states import TaskState
from taskman.store import TaskStore, make_database
from taskman.store.schedules import ScheduleStore

REAP_INTERVAL = 0.5
QUEUE_DEPTH_INTERVAL = 5.0  # a COUNT over the whole table: not on every reaper pass
PRUNE_INTERVAL = 5.0  # retention passes: at most 1 s of small DELETE batches each


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
        self._next_prune = 0.0

    def retention(self) -> dict[TaskState, float]:
        cfg = self.config
        return {
            TaskState.SUCCEEDED: cfg.retention_succeeded,
            TaskState.FAILED: cfg.retention_failed,
            TaskState.ABORTED: cfg.retention_aborted,
            TaskState.EXPIRED: cfg.retention_expired,
        }

    def _publish(self, report: ReapReport, reaper: Reaper) -> None:
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

    def _step_down(self, term: int) -> None:
        self.log.warning("leader.lost", epoch=term)
        self.on_change(False)
        metrics.QUEUE_DEPTH.clear()

    def run(self) -> None:
        cfg = self.config
        election = self.coord.election()
        reaper = Reaper(
            TaskStore(make_database(cfg.dsn)),
            self.coord.lease,
            self.coord.members,
            heartbeat_timeout=cfg.heartbeat_timeout,
            max_reclaims=cfg.max_reclaims,
            unrunnable_grace=cfg.unrunnable_grace,
        )
        ticker = Ticker(ScheduleStore(reaper.store.db))  # same connection, same thread
        term: int | None = None
        while not self.done.is_set():
            if not self.coord.monitor.healthy(within=cfg.session_timeout / 3):
                if term is not None:
                    self._step_down(term)
                    term = None
                    election.resign()
                time.sleep(0.2)
                continue
            epoch = election.try_acquire(timeout=2.0)
            if epoch is None:
                if term is not None:
                    self._step_down(term)
                    term = None
                continue
            try:
                if epoch != term:
                    if not reaper.take_office(cfg.node_id, epoch):
                        self.log.warning("leader.superseded", epoch=epoch)
                        election.resign()
                        time.sleep(1.0)
                        continue
                    term = epoch
                    self.on_change(True)
                    self.log.info("leader.elected", epoch=epoch)
                ticker.run(epoch)  # first: it never raises, so a failing reap cannot stall ticks
                self._publish(reaper.reap(epoch), reaper)
                self._prune(reaper, epoch)
            except (TaskmanError, KazooException) as exc:
                self.log.warning("leader.reap_failed", error=str(exc))
            time.sleep(REAP_INTERVAL)
        election.resign()
        reaper.store.close()

    def _prune(self, reaper: Reaper, epoch: int) -> None:
        if time.monotonic() < self._next_prune:
            return
        removed = reaper.prune(epoch, self.retention(), self.config.prune_batch, 1.0)
        metrics.TASKS_PRUNED.inc(removed)
        # Behind (a full batch or more): keep going on the next pass.
        behind = removed >= self.config.prune_batch
        self._next_prune = time.monotonic() + (0 if behind else PRUNE_INTERVAL)
