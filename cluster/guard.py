"""The guard: session health and self-fencing, in a thread of its own.

Its own thread, so a main loop blocked on the database cannot delay
self-fencing. It pings the runners only while ZooKeeper answers (a runner that
hears nothing for ``runner_watchdog`` kills itself), kills them all once
contact has been lost for ``self_fence_after``, and gives up every attempt when
the database has accepted no heartbeat for ``database_fence_after``: by then
another node may be about to reclaim their tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from kazoo.exceptions import KazooException

from taskman.cluster.context import NodeContext
from taskman.cluster.contracts import JsonValue
from taskman.cluster.releases import Releases
from taskman.cluster.supervision import Supervisor
from taskman.errors import CoordinationError
from taskman.runner import existing_runner_pool
from taskman.states import Outcome


class Guard:
    def __init__(
        self,
        ctx: NodeContext,
        supervisor: Supervisor,
        releases: Releases,
        member_info: Callable[[], Mapping[str, JsonValue]],
        check_leader: Callable[[], None] = lambda: None,
    ) -> None:
        self.ctx = ctx
        self.supervisor = supervisor
        self.releases = releases
        self.member_info = member_info
        self.check_leader = check_leader
        self.fenced_episode = False  # gave up what the session held; no claims until restored
        self._episode_lock = threading.Lock()
        self._next_ping = 0.0
        cfg = ctx.config
        self.ping_every = min(cfg.heartbeat_interval, cfg.runner_watchdog / 4)

    def run(self, done: threading.Event) -> None:
        while not done.is_set():
            self.tick()
            done.wait(0.05)

    def tick(self) -> None:
        """One look at the session and the database; act on what they say."""
        ctx, cfg = self.ctx, self.ctx.config
        monitor = ctx.coord.monitor
        lost = monitor.lost.is_set()
        silence = monitor.silence()
        self.check_leader()
        db_silence = ctx.clock() - self.supervisor.last_db_ok
        if db_silence > cfg.database_fence_after and ctx.active:
            # The loop may be stuck in a database call: the leader will reclaim
            # these attempts at heartbeat_timeout, so they must end first.
            self.supervisor.give_up_all(f"no heartbeat accepted for {db_silence:.1f} s")
        if lost or silence > cfg.self_fence_after:
            self.begin_fenced_episode(
                "session lost" if lost else f"no ZooKeeper contact for {silence:.1f} s"
            )
            for active in list(ctx.active.values()):
                if active.stop_reason is not Outcome.FENCED:
                    active.stop_reason = Outcome.FENCED
                    active.runner.kill()
        elif ctx.clock() >= self._next_ping:
            self._next_ping = ctx.clock() + self.ping_every
            if silence < cfg.ping_cutoff:
                for active in list(ctx.active.values()):
                    active.runner.ping()
                pool = existing_runner_pool()
                if pool is not None:
                    pool.ping_idle()

    def begin_fenced_episode(self, reason: str) -> None:
        """Record, once per episode, that this node gave up what its session held."""
        with self._episode_lock:
            if self.fenced_episode:
                return
            self.fenced_episode = True
        self.ctx.events.emit("node.self_fenced", reason=reason, runners=len(self.ctx.active))
        pool = existing_runner_pool()
        if pool is not None:
            pool.close()  # idle pooled runners too: a fenced node keeps no runner of its own

    def check_session(self) -> None:
        """From the main loop: rejoin after a lost session, or end a restored episode."""
        monitor = self.ctx.coord.monitor
        if monitor.lost.is_set():
            # The guard may not have looked yet (its runners may already be gone):
            # the episode is recorded before the node rejoins, whichever thread is first.
            self.begin_fenced_episode("session lost")
            self._rejoin_if_needed()
        elif self.fenced_episode and self.ctx.session_healthy():
            self.fenced_episode = False
            self.ctx.log.info("node.session_restored")

    def _rejoin_if_needed(self) -> None:
        """After a new session: rejoin once every runner of the old session is gone."""
        ctx = self.ctx
        if ctx.active or ctx.coord.monitor.silence() > 1.0:
            return
        self.releases.forget_claims()
        try:
            ctx.coord.register(self.member_info(), wait_for=ctx.config.session_timeout * 2)
        except (KazooException, CoordinationError) as exc:
            ctx.log.warning("node.rejoin_failed", error=str(exc))
            return
        ctx.coord.monitor.lost.clear()
        self.fenced_episode = False
        ctx.log.info("node.rejoined", session=ctx.coord.monitor.session_id)
