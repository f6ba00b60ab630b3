"""The node: the loop that wires its steps together, and its life from start to stop.

Each step is a module of its own (docs/architecture.md has the map):
``claiming`` (candidates -> tokens -> fenced claim -> launch), ``outcomes``
(runner event -> ending -> fenced record -> release), ``supervision``
(heartbeats, fencing, abort, timeouts), ``guard`` (session health and
self-fencing, its own thread) and ``leadership`` (the reaper, its own thread).
Task events go through one emitter (``task_events``); logs, metrics and the
node's counters listen.

The node fences itself. With no confirmed ZooKeeper round trip for
``self_fence_after``, or when its session ends, it stops claiming and kills its
runners: by then another node may be about to reclaim their tasks. It also
stops pinging its runners once ZooKeeper goes quiet, and a runner that hears
nothing for ``runner_watchdog`` kills itself, so even a node frozen by SIGSTOP
leaves nothing running when its session expires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from taskman.cluster.context import NodeContext, RunnerFactory
from taskman.cluster.contracts import Coordinator
from taskman.cluster.coordination import ZkCoordination
from taskman.cluster.endpoints import CachedCheck, Endpoints, Probes
from taskman.cluster.leadership import Leadership
from taskman.cluster.publishing import Publisher
from taskman.cluster.startup_checks import check_granted_session, check_tokens
from taskman.cluster.steps import NodeSteps
from taskman.cluster.task_events import node_events
from taskman.cluster.wake_datagrams import DatagramListener
from taskman.config import NodeConfig
from taskman.dsn import parse_dsn
from taskman.errors import SchemaError
from taskman.logs import add_secrets
from taskman.plugins import PluginRegistry
from taskman.runner import existing_runner_pool, start_runner
from taskman.store import TaskStore, make_database
from taskman.store.migrations import applied_versions, latest_version

log = structlog.get_logger("taskman.node")
MEMBER_UPDATE_INTERVAL = 1.0  # slots_used in membership is at most this stale


def secrets_of(config: NodeConfig, registry: PluginRegistry) -> list[str]:
    """Values that must never reach a log line or a stored attempt: passwords, plugin env."""
    values = [] if config.dsn.startswith("sqlite:") else [parse_dsn(config.dsn).password]
    if config.zookeeper_auth:
        values.append(config.zookeeper_auth.partition(":")[2])
    for versions in registry.plugins.values():
        for plugin in versions.values():
            values.extend(plugin.env.values())
    return values


class Node:
    def __init__(
        self,
        config: NodeConfig,
        registry: PluginRegistry | None = None,
        coordination: Callable[[NodeConfig], Coordinator] | None = None,
        *,
        runner_factory: RunnerFactory = start_runner,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``coordination`` builds the coordinator (default: ZooKeeper, ``ZkCoordination``)."""
        self._make_coordination = coordination or ZkCoordination
        self.config = config
        self.registry = registry or PluginRegistry.scan(config.plugin_dirs)
        add_secrets(secrets_of(config, self.registry))
        self.log = log.bind(node=config.node_id, datacenter=config.datacenter)
        self.events, self._counters = node_events(self.log)
        self._runner_factory = runner_factory
        self._clock = clock
        self._stopping = threading.Event()
        self._drain_deadline: float | None = None
        self._next_heartbeat = 0.0
        self.started = threading.Event()
        self._guard_done = threading.Event()
        self._leader_done = threading.Event()
        self.endpoints: Endpoints | None = None

    @property
    def counters(self) -> dict[str, int]:
        return self._counters.counts

    # -- lifecycle -------------------------------------------------------------
    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop claiming; with ``drain`` let running attempts finish for up to ``timeout`` s.

        Attempts still running after that are stopped and go back to the queue.
        """
        deadline = time.monotonic() + (timeout if drain else 0.0)
        if self._drain_deadline is None or deadline < self._drain_deadline:
            self._drain_deadline = deadline
        self._stopping.set()

    def run(self) -> None:
        self._start()
        try:
            self._loop()
        finally:
            self._shutdown()

    def _open_store(self) -> TaskStore:
        # Every database call of the loop ends well inside the self-fencing budget:
        # a stalled database must not hold the loop past heartbeat_timeout.
        deadline = self.config.database_deadline
        store = TaskStore(
            make_database(
                self.config.dsn,
                retry_deadline=deadline,
                connect_timeout=deadline,
                read_timeout=deadline,
            )
        )
        versions = applied_versions(store.db)
        if not versions or max(versions) < latest_version():
            raise SchemaError(
                f"the database schema is at version {max(versions, default=0)}, this node needs "
                f"{latest_version()}: run `taskman db migrate`"
            )
        return store

    def _start(self) -> None:
        self.store = self._open_store()
        self.coord = self._make_coordination(self.config)
        self.monitor = self.coord.monitor
        self.ctx = NodeContext(
            config=self.config,
            registry=self.registry,
            store=self.store,
            coord=self.coord,
            events=self.events,
            log=self.log,
            clock=self._clock,
            runner_factory=self._runner_factory,
        )
        self.publisher = Publisher(self.ctx)
        self.steps = NodeSteps(self.ctx, self.publisher.member_info)
        self.coord.start()
        check_granted_session(self.coord, self.config, self.log)
        check_tokens(self.coord, self.store)
        self._listen_for_datagrams()
        self.coord.register(self.publisher.member_info(), wait_for=self.config.session_timeout * 2)
        self._leadership = Leadership(
            self.config, self.coord, self.log, self._leader_done, self._set_leader
        )
        self.steps.guard.check_leader = self._leadership.check_stuck
        self._leader_thread = threading.Thread(
            target=self._leadership.run, name="leader", daemon=True
        )
        self._leader_thread.start()
        self._guard_thread = threading.Thread(
            target=self.steps.guard.run, args=(self._guard_done,), name="guard", daemon=True
        )
        self._guard_thread.start()
        self._watch_drain()
        self._wire_wakeups()
        if self.config.metrics_address:
            self.endpoints = self._serve_endpoints(self.config.metrics_address)
        self.publisher.start(self._clock())
        for problem in self.registry.problems:
            self.log.error("plugin.rejected", problem=problem)
        self.started.set()  # before the event: whoever waits for it finds /readyz ready
        self.log.info(
            "node.started",
            plugins=self.registry.available(),
            slots=self.config.slots,
            session_timeout=self.config.session_timeout,
        )

    def probes(self, *, coordinator: str = "zookeeper") -> Probes:
        """What /metrics, /healthz and /readyz answer for this node.

        ``coordinator`` names the coordination check in /readyz ("zookeeper" on a
        cluster node). The checks answer "not ready" until the node has started,
        so they may be served before :meth:`run` (embedded mode's UI comes up first).
        """
        probe_db = make_database(
            self.config.dsn, retry_deadline=0.0, connect_timeout=2.0, read_timeout=2.0
        )

        def coordination() -> tuple[bool, str]:
            if not self.started.is_set():
                return False, "the node is starting"
            silence = self.monitor.silence()
            ok = self.monitor.healthy(within=self.config.session_timeout / 3)
            return ok, f"last confirmed round trip {silence:.1f} s ago, state {self.monitor.state}"

        def database() -> tuple[bool, str]:
            ok = probe_db.ping()
            return ok, "answers" if ok else "does not answer"

        return Probes(
            {coordinator: coordination, "database": CachedCheck(database)},
            {"node_id": self.config.node_id, "datacenter": self.config.datacenter},
        )

    def _serve_endpoints(self, address: str) -> Endpoints:
        endpoints = Endpoints(address, self.probes())
        endpoints.start()
        self.log.info("node.endpoints", address=f"{endpoints.host}:{endpoints.port}")
        return endpoints

    def _watch_drain(self) -> None:
        """`taskman node drain` asks through the coordinator; the node drains and exits."""

        def on_request() -> None:
            if not self._stopping.is_set():
                self.log.info("node.drain_requested")
                self.stop(drain=True, timeout=self.config.drain_timeout)

        self.coord.watch_drain(on_request)

    def _wire_wakeups(self) -> None:
        """Signals wake this node's loop; the node signals the work it makes due itself."""
        self.coord.watch_wake(self.steps.pacer.signal)

        def on_event(name: str, fields: dict[str, Any]) -> None:
            if name == "task.retry":  # re-queued: due now (given up) or after its backoff
                self.coord.bump()

        self.events.listeners.append(on_event)

    def _listen_for_datagrams(self) -> None:
        """With ``wake_address``: Clients' datagrams wake the loop; the address is published."""
        self._datagrams: DatagramListener | None = None
        if self.config.wake_address is not None:
            self._datagrams = DatagramListener(self.config.wake_address, self.steps.pacer.signal)
            self.coord.wake_address = self._datagrams.address
            self.log.info("node.wake_address", address=self._datagrams.address)

    @property
    def is_leader(self) -> bool:
        publisher = getattr(self, "publisher", None)
        return publisher is not None and publisher.is_leader

    def _set_leader(self, leading: bool) -> None:
        self.publisher.is_leader = leading

    def _shutdown(self) -> None:
        if self.endpoints is not None:
            self.endpoints.stop()
        datagrams: DatagramListener | None = getattr(self, "_datagrams", None)
        if datagrams is not None:
            datagrams.close()
        self._guard_done.set()
        self._leader_done.set()
        self._leader_thread.join(timeout=5)
        pool = existing_runner_pool()
        if pool is not None:
            pool.close()  # idle pooled runners: nothing of theirs is running
        self.coord.close()
        self.store.close()
        self.log.info("node.stopped", counters=self.counters)

    # -- the loop --------------------------------------------------------------
    def _loop(self) -> None:
        """Run the node's steps until it stops; no error ends the loop (invariant 10)."""
        while True:
            try:
                if self._step():
                    return
            except Exception as exc:  # noqa: BLE001 - logged, counted, survived
                self.events.emit("loop.error", loop="main", error=f"{type(exc).__name__}: {exc}")
                time.sleep(0.2)

    def _step(self) -> bool:
        """One pass of the loop; True once the node has drained and should stop."""
        cfg, steps = self.config, self.steps
        steps.drain_events(timeout=steps.pacer.wait(self._clock()))
        # Every ending drained above is written in one transaction: while this pass's
        # claim multi is in flight when it claims (no round trip of its own), else now.
        # Not across a session episode: the guard forgets the old session's claims
        # before it rejoins, and their releases must be queued before that.
        deferred = self._may_defer_recording()
        if not deferred:
            steps.outcomes.record_pending()
        now = self._clock()
        steps.guard.check_session()
        self.publisher.tick(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + cfg.heartbeat_interval
            steps.supervisor.heartbeat(now)
            steps.outcomes.retry_unrecorded()
            steps.releases.check()
        steps.supervisor.enforce_limits(now)
        if self._stopping.is_set():
            steps.outcomes.record_pending()
            if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
                steps.supervisor.give_up_all("the node is shutting down")
            if not self.ctx.active:
                steps.releases.flush()
                return True
            return False
        if steps.pacer.due(now) and steps.may_claim():
            datagrams = self._datagrams
            asked = datagrams is not None and datagrams.take_woke()
            # Then the next poll: at once, poll_interval or idle (pacing.py).
            claimed = steps.poll(now, meanwhile=steps.outcomes.record_pending if deferred else None)
            if asked and datagrams is not None and steps.claimer.found is not None:
                datagrams.found(bool(claimed or steps.claimer.found))
            steps.releases.flush()  # claims the database turned down
        elif deferred:
            steps.outcomes.record_pending()
        return False

    def _may_defer_recording(self) -> bool:
        steps = self.steps
        return (
            not self._stopping.is_set()
            and not steps.guard.fenced_episode
            and not self.monitor.lost.is_set()
            and self.ctx.session_healthy()
        )
