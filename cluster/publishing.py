"""What a node tells others about itself: gauges, its member znode, what it serves."""

from __future__ import annotations

import os
import socket
import time

from kazoo.exceptions import KazooException

import taskman
from taskman import metrics
from taskman.cluster.context import NodeContext
from taskman.cluster.contracts import JsonValue
from taskman.cluster.served import ServedPublisher
from taskman.errors import CoordinationError
from taskman.store.placement import PlacementStore

MEMBER_UPDATE_INTERVAL = 1.0  # slots_used in membership is at most this stale


class Publisher:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.started_at = time.time()  # for operators: wall clock is fine here
        self.is_leader = False
        self._published_used = 0
        self._next_member_update = 0.0
        # What this node serves, in the database: the thin client's view (served.py).
        self.served = ServedPublisher(
            PlacementStore(ctx.store.db),
            ctx.config.node_id,
            ctx.config.datacenter,
            ctx.registry,
            ctx.log,
            deadline=ctx.config.database_deadline,
        )

    def member_info(self) -> dict[str, JsonValue]:
        """The node's member znode: who it is, its datacenter, slots and plugins."""
        ctx = self.ctx
        plugins: dict[str, JsonValue] = {
            name: list[JsonValue](versions) for name, versions in ctx.registry.available().items()
        }
        return {
            "node_id": ctx.config.node_id,
            "datacenter": ctx.config.datacenter,
            "slots": ctx.config.slots,
            "slots_used": len(ctx.active),
            "plugins": plugins,
            "taskman_version": taskman.__version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
        }

    def start(self, now: float) -> None:
        self.gauges(now)
        for plugin in self.ctx.registry.available():
            metrics.start_plugin(plugin)
        self.served.publish_due(now)

    def tick(self, now: float) -> None:
        self.gauges(now)
        self._membership(now)
        self.served.publish_due(now)

    def gauges(self, now: float) -> None:
        ctx = self.ctx
        active = ctx.active
        metrics.RUNNERS.set(sum(1 for a in active.values() if a.runner.alive))
        metrics.SLOTS_FREE.set(max(0, ctx.config.slots - len(active)))
        metrics.ZK_CONNECTED.set(int(ctx.session_healthy()))
        metrics.IS_LEADER.set(int(self.is_leader))
        beats = [a.last_beat for a in active.values() if not a.reported and not a.fenced]
        metrics.OLDEST_HEARTBEAT_AGE.set(now - min(beats) if beats else 0.0)

    def _membership(self, now: float) -> None:
        used = len(self.ctx.active)
        if used == self._published_used or now < self._next_member_update:
            return
        self._next_member_update = now + MEMBER_UPDATE_INTERVAL
        if not self.ctx.session_healthy():
            return
        try:
            self.ctx.coord.update(self.member_info())
            self._published_used = used
        except (KazooException, CoordinationError) as exc:
            self.ctx.log.info("node.membership_update_failed", error=str(exc))
