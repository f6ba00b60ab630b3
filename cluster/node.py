"""The node: claim tasks through ZooKeeper, run each attempt in a runner, record outcomes, fenced.

One thread runs the loop below; runners report through one event queue; a
second thread contends for leadership and runs the reaper while it leads.

The node fences itself. With no confirmed ZooKeeper round trip for half the
session timeout (``self_fence_after``), or when its session ends, it stops
claiming and kills its runners: by then another node may be about to reclaim
their tasks. It also stops pinging its runners once ZooKeeper goes quiet, and a
runner that hears nothing for ``runner_watchdog`` kills itself, so even a node
frozen by SIGSTOP leaves nothing running when its session expires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kazoo.exceptions import (
    KazooException,
    NoNodeError,
    RolledBackError,
    RuntimeInconsistency,
)

import taskman
from taskman import metrics
from taskman.cluster.attempts import (
    ActiveAttempt,
    Ending,
    ending_from_exit,
    ending_from_message,
    failure_ending,
)
from taskman.cluster.claim_order import claim_order
from taskman.cluster.concurrency import Permit, cap_for
from taskman.cluster.coordination import ZkCoordination
from taskman.cluster.endpoints import CachedCheck, Endpoints, Probes
from taskman.cluster.leadership import Leadership
from taskman.cluster.served import ServedPublisher
from taskman.config import NodeConfig
from taskman.dsn import parse_dsn
from taskman.errors import (
    CoordinationError,
    PluginError,
    SchemaError,
    StoreError,
)
from taskman.logs import add_secrets, scrub
from taskman.plugins import Plugin, PluginRegistry
from taskman.runner import ORPHANED_EXITS, Runner, RunnerEvent, RunnerSpec, describe_exit
from taskman.states import Outcome, TaskState
from taskman.store import Candidate, Claim, ClaimRequest, Finish, TaskStore, make_database
from taskman.store.migrations import applied_versions, latest_version
from taskman.store.placement import PlacementStore

log = structlog.get_logger("taskman.node")
MEMBER_UPDATE_INTERVAL = 1.0  # slots_used in membership is at most this stale
QUEUE_DEPTH_INTERVAL = 5.0
PRUNE_INTERVAL = 5.0  # retention passes: at most 1 s of small DELETE batches each  # a COUNT over the whole table: not on every reaper pass
RUNNER_SILENCE_LIMIT = 60.0  # a child whose heartbeat thread is silent this long is hung


def secrets_of(config: NodeConfig, registry: PluginRegistry) -> list[str]:
    """Values that must never reach a log line or a stored attempt: passwords, plugin env."""
    values = [] if config.dsn.startswith("sqlite:") else [parse_dsn(config.dsn).password]
    if config.zookeeper_auth:
        values.append(config.zookeeper_auth.partition(":")[2])
    for versions in registry.plugins.values():
        for plugin in versions.values():
            values.extend(plugin.env.values())
    return values


@dataclass
class Prepared:
    """A candidate ready to claim: its plugin (or why it can't run) and its concurrency lease."""

    candidate: Candidate
    plugin: Plugin | None
    problem: str | None
    semaphore: Permit | None

    @property
    def task_id(self) -> int:
        return self.candidate.task_id

    @property
    def attempt(self) -> int:
        return self.candidate.attempt + 1  # the attempt this claim would start


@dataclass
class Unrecorded:
    """An ending waiting for its (batched) write."""

    claim: Claim
    ending: Ending
    record: Finish
    claimed_at: float | None = None


class Node:
    def __init__(
        self,
        config: NodeConfig,
        registry: PluginRegistry | None = None,
        coordination: Callable[[NodeConfig], Any] | None = None,
    ) -> None:
        """``coordination`` builds the coordinator (default: ZooKeeper, ``ZkCoordination``)."""
        self._make_coordination = coordination or ZkCoordination
        self.config = config
        self.registry = registry or PluginRegistry.scan(config.plugin_dirs)
        add_secrets(secrets_of(config, self.registry))
        self.events: queue.Queue[RunnerEvent] = queue.Queue()
        self.active: dict[int, ActiveAttempt] = {}
        self.to_record: list[Unrecorded] = []  # endings to write in the next batch
        self.unrecorded: list[Unrecorded] = []  # endings the database refused: retried
        self.log = log.bind(node=config.node_id, datacenter=config.datacenter)
        self.counters: dict[str, int] = {}
        self._stopping = threading.Event()
        self._drain_deadline: float | None = None
        self._fenced_episode = False
        self._episode_lock = threading.Lock()
        self._last_db_ok = time.monotonic()  # last heartbeat the database accepted
        self._next_heartbeat = self._next_poll = 0.0
        self.leftover_claims: list[tuple[int, int]] = []
        # In flight: the claims, kazoo's result, and the session marker they were sent under.
        self.releasing: list[tuple[list[tuple[int, int]], Any, str]] = []
        self.semaphores: dict[tuple[int, int], Permit] = {}
        self.is_leader = False
        self.started = threading.Event()
        self._guard_done = threading.Event()
        self._started_at = time.time()  # for operators: wall clock is fine here
        self._published_used = 0
        self._next_member_update = 0.0
        self._leader_done = threading.Event()

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

    def _start(self) -> None:
        # Every database call of the loop ends well inside the self-fencing budget:
        # a stalled database must not hold the loop past heartbeat_timeout.
        deadline = self.config.database_deadline
        self.store = TaskStore(
            make_database(
                self.config.dsn,
                retry_deadline=deadline,
                connect_timeout=deadline,
                read_timeout=deadline,
            )
        )
        versions = applied_versions(self.store.db)
        if not versions or max(versions) < latest_version():
            raise SchemaError(
                f"the database schema is at version {max(versions, default=0)}, this node needs "
                f"{latest_version()}: run `taskman db migrate`"
            )
        self.coord = self._make_coordination(self.config)
        self.monitor = self.coord.monitor
        self.lease = self.coord.lease
        self.gate = self.coord.gate
        self.coord.start()
        self._check_granted_session()
        self._check_tokens()
        self.coord.register(self._member_info(), wait_for=self.config.session_timeout * 2)
        self._leadership = Leadership(
            self.config, self.coord, self.log, self._leader_done, self._set_leader
        )
        self._leader_thread = threading.Thread(
            target=self._leadership.run, name="leader", daemon=True
        )
        self._leader_thread.start()
        self._guard_thread = threading.Thread(target=self._guard, name="guard", daemon=True)
        self._guard_thread.start()
        self._watch_drain()
        self.endpoints: Endpoints | None = None
        if self.config.metrics_address:
            self.endpoints = self._serve_endpoints(self.config.metrics_address)
        self._publish_gauges(time.monotonic())
        for plugin in self.registry.available():
            metrics.start_plugin(plugin)
        # What this node serves, in the database: the thin client's view (cluster/served.py).
        self.served = ServedPublisher(
            PlacementStore(self.store.db),
            self.config.node_id,
            self.config.datacenter,
            self.registry,
            self.log,
            deadline=deadline,
        )
        self.served.publish_due(time.monotonic())
        for problem in self.registry.problems:
            self.log.error("plugin.rejected", problem=problem)
        self.started.set()  # before the event: whoever waits for it finds /readyz ready
        self.log.info(
            "node.started",
            plugins=self.registry.available(),
            slots=self.config.slots,
            session_timeout=self.config.session_timeout,
        )

    def _check_tokens(self) -> None:
        """Refuse an ensemble whose tokens are below those the database already holds.

        An ensemble rebuilt from scratch restarts its zxids low: every claim and
        every leader of it would be refused by the fenced writes, forever.
        """
        # The database first: every token in it was issued before this read, so
        # an intact ensemble's next zxid is larger. Read the other way round, a
        # node claiming between the two reads made a healthy ensemble look rebuilt.
        # Not the whole history (a scan of every row on each start): the last
        # leader's epoch and unfinished work catch any ensemble rebuilt from scratch.
        highest = self.store.max_live_token()
        fresh = self.coord.fresh_token()
        if fresh is None:
            return
        if fresh > highest:
            return
        self.coord.close()
        raise CoordinationError(
            f"ZooKeeper's fencing tokens ({fresh:#x}) are below the highest token the "
            f"database holds ({highest:#x}): the ensemble was rebuilt or lost its data, "
            "and every claim and leader of it would be refused. With every node stopped, "
            "run `taskman cluster rebase-tokens --config <node.toml>` once, then start "
            "the nodes (docs/multi-dc.md, 'Losing the ZooKeeper ensemble')"
        )

    def _check_granted_session(self) -> None:
        """Refuse a session shorter than the configured one: every fencing budget assumes it."""
        granted = self.coord.granted_session_timeout()
        configured = self.config.session_timeout
        if granted is None or granted == configured:
            return
        if granted < configured:
            self.coord.close()
            raise CoordinationError(
                f"ZooKeeper negotiated a session of {granted:.1f} s, shorter than "
                f"session_timeout = {configured:.1f} s (the ensemble's maxSessionTimeout "
                "caps it). The runners' watchdog and self-fencing are fractions of "
                "session_timeout and would outlive the session: set session_timeout to "
                f"at most {granted:.1f} s, or raise maxSessionTimeout"
            )
        self.log.warning(
            "node.session_longer_than_configured",
            granted=granted,
            configured=configured,
            note="minSessionTimeout raised it: reclaims of this node's work take longer",
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

    def _set_leader(self, leading: bool) -> None:
        self.is_leader = leading

    def _member_info(self) -> dict[str, Any]:
        return {
            "node_id": self.config.node_id,
            "datacenter": self.config.datacenter,
            "slots": self.config.slots,
            "slots_used": len(self.active),
            "plugins": self.registry.available(),
            "taskman_version": taskman.__version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started_at,
        }

    def _shutdown(self) -> None:
        if getattr(self, "endpoints", None) is not None:
            self.endpoints.stop()  # type: ignore[union-attr]
        self._guard_done.set()
        self._leader_done.set()
        self._leader_thread.join(timeout=5)
        self.coord.close()
        self.store.close()
        self.log.info("node.stopped", counters=self.counters)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- the loop --------------------------------------------------------------
    def _loop(self) -> None:
        """Run the node's steps until it stops; no error ends the loop (invariant 10)."""
        while True:
            try:
                if self._step():
                    return
            except Exception as exc:  # noqa: BLE001 - logged, counted, survived
                self._loop_error("main", exc)
                time.sleep(0.2)

    def _loop_error(self, loop: str, exc: BaseException) -> None:
        self._count("loop_errors")
        metrics.LOOP_ERRORS.labels(loop).inc()
        self.log.error("loop.error", loop=loop, error=f"{type(exc).__name__}: {exc}")

    def _step(self) -> bool:
        """One pass of the loop; True once the node has drained and should stop."""
        cfg = self.config
        self._drain_events(timeout=0.05)
        self._record_pending()  # every ending drained above, in one transaction
        now = time.monotonic()
        self._check_session()
        self._publish_gauges(now)
        self._publish_membership(now)
        self.served.publish_due(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + cfg.heartbeat_interval
            self._heartbeat(now)
            self._retry_unrecorded()
            self._check_releases()
        self._enforce_limits(now)
        if self._stopping.is_set():
            if self._drain_deadline is not None and now >= self._drain_deadline:
                self._give_up_all("the node is shutting down")
            if not self.active:
                self._flush_releases()
                return True
            return False
        if now >= self._next_poll and self._may_claim():
            claimed, wanted = self._claim()
            # A full batch means more work is waiting: look again at once.
            self._next_poll = now if claimed and claimed == wanted else now + cfg.poll_interval
            self._flush_releases()  # claims the database turned down
        return False

    def _publish_gauges(self, now: float) -> None:
        metrics.RUNNERS.set(sum(1 for a in self.active.values() if a.runner.alive))
        metrics.SLOTS_FREE.set(max(0, self.config.slots - len(self.active)))
        metrics.ZK_CONNECTED.set(int(self.monitor.healthy(within=self.config.session_timeout / 3)))
        metrics.IS_LEADER.set(int(self.is_leader))
        beats = [a.last_beat for a in self.active.values() if not a.reported and not a.fenced]
        metrics.OLDEST_HEARTBEAT_AGE.set(now - min(beats) if beats else 0.0)

    def _publish_membership(self, now: float) -> None:
        used = len(self.active)
        if used == self._published_used or now < self._next_member_update:
            return
        self._next_member_update = now + MEMBER_UPDATE_INTERVAL
        if not self.monitor.healthy(within=self.config.session_timeout / 3):
            return
        try:
            self.coord.update(self._member_info())
            self._published_used = used
        except (KazooException, CoordinationError) as exc:
            self.log.info("node.membership_update_failed", error=str(exc))

    def _may_claim(self) -> bool:
        return (
            len(self.active) < self.config.slots
            and not self._fenced_episode
            and self.monitor.healthy(within=self.config.session_timeout / 3)
        )

    def _drain_events(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    # -- session and self-fencing ---------------------------------------------------
    def _guard(self) -> None:
        """Its own thread, so a main loop blocked on the database cannot delay self-fencing.

        It pings the runners only while ZooKeeper answers, and kills them all once
        contact has been lost for ``self_fence_after``.
        """
        cfg = self.config
        ping_every = min(cfg.heartbeat_interval, cfg.runner_watchdog / 4)
        next_ping = 0.0
        while not self._guard_done.is_set():
            lost = self.monitor.lost.is_set()
            silence = self.monitor.silence()
            self._leadership.check_stuck()
            db_silence = time.monotonic() - self._last_db_ok
            if db_silence > cfg.database_fence_after and self.active:
                # The loop may be stuck in a database call: the leader will reclaim
                # these attempts at heartbeat_timeout, so they must end first.
                self._give_up_all(f"no heartbeat accepted for {db_silence:.1f} s")
            if lost or silence > cfg.self_fence_after:
                self._begin_fenced_episode(
                    "session lost" if lost else f"no ZooKeeper contact for {silence:.1f} s"
                )
                for active in list(self.active.values()):
                    if active.stop_reason is not Outcome.FENCED:
                        active.stop_reason = Outcome.FENCED
                        active.runner.kill()
            elif time.monotonic() >= next_ping:
                next_ping = time.monotonic() + ping_every
                if silence < cfg.ping_cutoff:
                    for active in list(self.active.values()):
                        active.runner.ping()
            self._guard_done.wait(0.05)

    def _begin_fenced_episode(self, reason: str) -> None:
        """Record, once per episode, that this node gave up what its session held."""
        with self._episode_lock:
            if self._fenced_episode:
                return
            self._fenced_episode = True
        self._count("self_fenced")
        metrics.SELF_FENCED.inc()
        self.log.error("node.self_fenced", reason=reason, runners=len(self.active))

    def _check_session(self) -> None:
        if self.monitor.lost.is_set():
            # The guard may not have looked yet (its runners may already be gone):
            # the episode is recorded before the node rejoins, whichever thread is first.
            self._begin_fenced_episode("session lost")
            self._rejoin_if_needed()
        elif self._fenced_episode and self.monitor.healthy(within=self.config.session_timeout / 3):
            self._fenced_episode = False
            self.log.info("node.session_restored")

    def _rejoin_if_needed(self) -> None:
        """After a new session: rejoin once every runner of the old session is gone."""
        if self.active or self.monitor.silence() > 1.0:
            return
        # Claims of the lost session are gone with it; sent from the new session, a
        # release could delete the claim another node has since taken (lease.py).
        self.leftover_claims.clear()
        try:
            self.coord.register(self._member_info(), wait_for=self.config.session_timeout * 2)
        except (KazooException, CoordinationError) as exc:
            self.log.warning("node.rejoin_failed", error=str(exc))
            return
        self.monitor.lost.clear()
        self._fenced_episode = False
        self.log.info("node.rejoined", session=self.monitor.session_id)

    def _release_semaphore(self, task_id: int, attempt: int) -> None:
        semaphore = self.semaphores.pop((task_id, attempt), None)
        if semaphore is not None:
            self.gate.release(semaphore)

    def _release(self, task_id: int, attempt: int) -> None:
        """Queue a claim to drop after its outcome is recorded; _flush_releases drops them."""
        self._release_semaphore(task_id, attempt)
        self.leftover_claims.append((task_id, attempt))

    def _flush_releases(self) -> None:
        """Drop the queued claims in one ZooKeeper transaction; later if it is unreachable."""
        if not self.leftover_claims or not self.monitor.healthy(
            within=self.config.session_timeout / 3
        ):
            return
        pending, self.leftover_claims = self.leftover_claims, []
        # Not awaited: the outcomes are already recorded, so nothing waits on the
        # deletes. _check_releases queues again the ones that failed.
        self.releasing.append((pending, self.lease.release_many_async(pending), self.lease.marker))

    def _check_releases(self) -> None:
        still = []
        for keys, result, marker in self.releasing:
            if not result.ready():
                still.append((keys, result, marker))
                continue
            if marker != self.lease.marker:
                continue  # sent by a session that has ended: its claims ended with it
            if not result.successful():
                self.leftover_claims.extend(keys)  # not applied: all of them go again
                continue
            check, *outcomes = result.value
            if isinstance(check, Exception) and not isinstance(check, RolledBackError):
                continue  # our session marker is gone: so are the claims it held
            for key, outcome in zip(keys, outcomes, strict=True):
                if not isinstance(outcome, Exception) or isinstance(outcome, NoNodeError):
                    continue  # dropped, or already gone
                if not isinstance(outcome, RolledBackError | RuntimeInconsistency):
                    self.log.warning("claim.release_failed", task_id=key[0], error=repr(outcome))
                self.leftover_claims.append(key)  # a failed batch: the others go again
        self.releasing = still
        self._flush_releases()

    # -- claims ----------------------------------------------------------------
    def _claim(self) -> tuple[int, int]:
        free = self.config.slots - len(self.active)
        try:
            keys, pairs = self.gate.blocked()
            candidates = self.store.candidates(
                self.config.datacenter,
                self.registry.available(),
                limit=free * 2,
                blocked_keys=keys,
                blocked_functions=pairs,
            )
        except StoreError as exc:
            self.log.warning("claim.candidates_failed", error=str(exc))
            return (0, free)
        chosen = self._choose(claim_order(candidates), free)
        if not chosen:
            return (0, free)
        started = time.monotonic()
        try:
            # One pipelined round trip to ZooKeeper for the whole batch.
            tokens = self.lease.acquire_many([(p.task_id, p.attempt) for p in chosen])
        except (CoordinationError, KazooException) as exc:
            self.log.warning("claim.failed", error=str(exc))
            for prepared in chosen:
                if prepared.semaphore is not None:
                    self.gate.release(prepared.semaphore)
            return (0, free)
        won: list[tuple[Prepared, int]] = []
        for prepared, token in zip(chosen, tokens, strict=True):
            if token is None:
                self._count("claim_lost_race")
                if prepared.semaphore is not None:
                    self.gate.release(prepared.semaphore)
                continue
            if prepared.semaphore is not None:
                self.semaphores[(prepared.task_id, prepared.attempt)] = prepared.semaphore
            won.append((prepared, token))
        if not won:
            return (0, free)
        requests = [
            ClaimRequest(p.task_id, p.candidate.attempt, token, self._version_of(p))
            for p, token in won
        ]
        try:
            # One transaction (one COMMIT) moves the whole batch to running.
            claims = self.store.claim_many(requests, self.config.node_id, self.config.datacenter)
        except StoreError as exc:
            self.log.warning("claim.failed", tasks=len(won), error=str(exc))
            # No row backs these claims: let them go so other nodes can have the tasks.
            for prepared, _token in won:
                self._release(prepared.task_id, prepared.attempt)
            return (0, free)
        claimed = 0
        for (prepared, _token), claim in zip(won, claims, strict=True):
            claimed += self._start_claimed(prepared, claim, started)
        return (claimed, free)

    def _choose(self, candidates: list[Candidate], free: int) -> list[Prepared]:
        chosen: list[Prepared] = []
        try:
            for candidate in candidates:
                if len(chosen) >= free or not self._may_claim():
                    break
                prepared = self._prepare(candidate)
                if prepared is not None:
                    chosen.append(prepared)
        except CoordinationError as exc:
            # ZooKeeper missed the cap's deadline: try again next poll, holding nothing.
            self.log.warning("claim.concurrency_failed", error=str(exc))
            for prepared in chosen:
                if prepared.semaphore is not None:
                    self.gate.release(prepared.semaphore)
            return []
        return chosen

    @staticmethod
    def _version_of(prepared: Prepared) -> str:
        plugin = prepared.plugin
        return (plugin.version if plugin else prepared.candidate.plugin_version) or ""

    def _prepare(self, candidate: Candidate) -> Prepared | None:
        """Resolve the plugin and take a concurrency lease; None if the cap is full."""
        if candidate.task_id in self.active:
            # An earlier attempt of it (fenced, reclaimed) is still ending here. Claiming
            # now would replace its entry: its exit would go unhandled, its runner
            # unclosed, its permit and claim never released.
            return None
        plugin: Plugin | None = None
        problem: str | None = None
        try:
            plugin = self.registry.resolve(candidate.plugin, candidate.plugin_version)
            if not plugin.allows(candidate.function):
                problem = (
                    f"plugin {plugin.name} {plugin.version} does not allow {candidate.function}"
                )
        except PluginError as exc:
            problem = str(exc)
        cap = None if problem else cap_for(candidate, plugin)
        semaphore = None
        if cap is not None:
            semaphore = self.gate.try_acquire(cap, candidate)
            if semaphore is None:
                self._count("concurrency_full")
                return None
        return Prepared(candidate, plugin, problem, semaphore)

    def _start_claimed(self, prepared: Prepared, claim: Claim | None, claim_started: float) -> int:
        """Start the runner of a task the database moved to running under our token (1 if so)."""
        candidate, plugin, problem = prepared.candidate, prepared.plugin, prepared.problem
        version = self._version_of(prepared)
        if claim is None:
            self._release(candidate.task_id, prepared.attempt)
            return 0
        if claim.retry_backoff is None:
            claim = dataclasses.replace(claim, retry_backoff=self.config.retry_backoff)
        self._count("claimed")
        metrics.CLAIM_SECONDS.observe(time.monotonic() - claim_started)
        metrics.TASKS_CLAIMED.labels(claim.plugin).inc()
        metrics.SUBMIT_TO_START.observe(claim.waited)
        self.log.info(
            "task.claimed",
            task_id=claim.task_id,
            attempt=claim.attempt,
            token=claim.fence,
            function=claim.function,
            plugin=claim.plugin,
            version=version,
        )
        if plugin is None or problem is not None:
            ending = Ending(Outcome.REJECTED, TaskState.FAILED, "PluginError", problem)
            self._finish_without_runner(claim, ending)
            return 1
        spec = RunnerSpec(
            task_id=claim.task_id,
            attempt=claim.attempt,
            fence=claim.fence,
            function=claim.function,
            args=claim.args,
            kwargs=claim.kwargs,
            python=plugin.python,
            sys_path=list(plugin.sys_path),
            env=dict(plugin.env),
            cwd=str(plugin.directory),
            heartbeat_interval=self.config.heartbeat_interval,
            watchdog_timeout=self.config.runner_watchdog,
            limits={**plugin.limits, **(claim.limits or {})},
            fork=plugin.fork,
            preload=plugin.preload,
            run_as=plugin.run_as,
        )
        runner = Runner(spec, self.events)
        runner.launch()  # the fork happens beside this loop; a failed start comes back as an exit
        deadline = None if claim.timeout is None else time.monotonic() + claim.timeout
        active = ActiveAttempt(claim=claim, plugin=plugin, runner=runner, deadline=deadline)
        self.active[claim.task_id] = active
        if claim.abort_requested:
            self._stop_runner(active, Outcome.ABORTED)
        return 1

    def _finish_without_runner(self, claim: Claim, ending: Ending) -> None:
        self._queue_record(claim, ending, output_tail=None, claimed_at=None)

    # -- runner events ---------------------------------------------------------------
    def _handle(self, event: RunnerEvent) -> None:
        active = self.active.get(event.runner.spec.task_id)
        if active is None or active.runner is not event.runner:
            return
        try:
            self._handle_message(active, event.message)
        except Exception as exc:  # noqa: BLE001 - task-controlled input must never stop the loop
            self._bad_message(active, event.message, exc)

    def _bad_message(self, active: ActiveAttempt, message: dict[str, Any], exc: Exception) -> None:
        """A message the node could not handle ends its attempt, with the reason recorded."""
        self._count("runner_message_failed")
        kind = str(message.get("t"))[:20]
        self.log.exception("runner.message_failed", task_id=active.claim.task_id, kind=kind)
        reason = f"the node could not handle the runner's {kind!r} message: {type(exc).__name__}"
        active.runner.kill()
        if kind != "exit":
            if not active.reported:
                active.reported = True
                active.final = {"t": "error", "type": "ProtocolError", "message": reason}
            return
        # The exit itself failed to turn into an ending: record a crash, once.
        if self.active.get(active.claim.task_id) is active:
            del self.active[active.claim.task_id]
        if active.fenced:
            self._release(active.claim.task_id, active.claim.attempt)
            return
        cap = self.config.retry_backoff_max
        ending = failure_ending(
            active.claim, Outcome.CRASHED, "ProtocolError", reason, backoff_cap=cap
        )
        self._queue_record(active.claim, ending, None, active.claimed_at)

    def _handle_message(self, active: ActiveAttempt, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "ready":
            metrics.SPAWN_SECONDS.observe(time.monotonic() - active.runner.started_at)
        elif kind == "progress":
            with contextlib.suppress(KeyError, TypeError, ValueError):
                active.progress = (float(message["fraction"]), str(message.get("message", "")))
        elif kind in ("result", "error"):
            if not active.reported:
                active.reported = True
                active.final = message
        elif kind == "exit":
            self._on_exit(active, message.get("code"), message.get("error"))

    def _on_exit(self, active: ActiveAttempt, code: int | None, start_error: str | None) -> None:
        claim = active.claim
        active.runner.kill()  # the process group: stray grandchildren die with the attempt
        active.runner.close()
        del self.active[claim.task_id]
        if active.fenced:
            self._release(claim.task_id, claim.attempt)
            return
        cap = self.config.retry_backoff_max
        silence = max(active.runner.longest_silence, active.runner.silence(time.monotonic()))
        if (
            active.stop_reason is None
            and active.final is None
            and code in ORPHANED_EXITS
            and silence >= 0.9 * self.config.runner_watchdog
        ):
            # The node itself went quiet (a stall, a frozen VM) long enough for the
            # runner's watchdog to end the attempt: the node's trouble, not the task's.
            # Only a runner that did die of it: one that outlived the silence and
            # reported its outcome has done the task, and that outcome stands.
            active.stop_reason = Outcome.FENCED
            self.log.warning(
                "task.orphaned_by_stall", task_id=claim.task_id, silent_for=round(silence, 2)
            )
        if start_error is not None and active.stop_reason is None:
            ending = failure_ending(
                claim, Outcome.CRASHED, "RunnerError", start_error, backoff_cap=cap
            )
        elif active.final is not None and active.stop_reason is not Outcome.FENCED:
            ending = ending_from_message(active, active.final, cap)
        else:
            ending = ending_from_exit(
                active,
                describe_exit(code),
                cap,
                code,
                limits=active.runner.spec.limits,
                output_exceeded=active.runner.output_exceeded,
            )
        self._record(active, ending)

    def _record(self, active: ActiveAttempt, ending: Ending) -> None:
        self._queue_record(active.claim, ending, active.runner.output_tail(), active.claimed_at)

    def _queue_record(
        self, claim: Claim, ending: Ending, output_tail: str | None, claimed_at: float | None
    ) -> None:
        """Queue an outcome; _record_pending writes every queued one in one transaction."""
        record = Finish(
            task_id=claim.task_id,
            attempt=claim.attempt,
            fence=claim.fence,
            outcome=ending.outcome,
            task_state=ending.state,
            result_json=ending.result_json,
            # Task code may print or raise its own secrets (plugin env values):
            # they are scrubbed before they reach the table, the CLI and the UI.
            error_type=ending.error_type,
            error_message=scrub(ending.error_message),
            traceback=scrub(ending.traceback),
            output_tail=scrub(output_tail),
            retry_delay=ending.retry_delay,
            counts_as_failure=ending.counts_as_failure,
            task_error_message=scrub(ending.summary),
        )
        self.to_record.append(Unrecorded(claim, ending, record, claimed_at))

    def _record_pending(self) -> None:
        if not self.to_record:
            return
        batch, self.to_record = self.to_record, []
        try:
            applied = self.store.finish_many([item.record for item in batch])
        except StoreError as exc:
            # Keep the claims: releasing them would let the leader re-run finished work.
            self.log.warning(
                "task.record_failed", task_ids=[i.claim.task_id for i in batch], error=str(exc)
            )
            self.unrecorded.extend(batch)
            return
        now = time.monotonic()
        for item, ok in zip(batch, applied, strict=True):
            if item.claimed_at is not None:
                metrics.ATTEMPT_SECONDS.labels(
                    item.claim.plugin, item.ending.outcome.value
                ).observe(now - item.claimed_at)
            self._log_ending(item.claim, item.ending, ok)
            self._release(item.claim.task_id, item.claim.attempt)
        self._flush_releases()

    def _retry_unrecorded(self) -> None:
        if self.unrecorded:
            self.to_record.extend(self.unrecorded)
            self.unrecorded = []
            self._record_pending()

    def _log_ending(self, claim: Claim, ending: Ending, ok: bool) -> None:
        fields = {
            "task_id": claim.task_id,
            "attempt": claim.attempt,
            "token": claim.fence,
            "outcome": ending.outcome.value,
        }
        if not ok:
            self._count("fenced")
            metrics.FENCED.labels("outcome").inc()
            self.log.warning("task.fenced", write="outcome", **fields)
            return
        if ending.state is TaskState.QUEUED:
            self._count("retried")
            if ending.counts_as_failure:
                metrics.TASKS_RETRIED.labels(claim.plugin).inc()
            self.log.info("task.retry", delay=ending.retry_delay, error=ending.error_type, **fields)
            return
        self._count(ending.state.value)
        counter = {
            TaskState.SUCCEEDED: metrics.TASKS_SUCCEEDED,
            TaskState.FAILED: metrics.TASKS_FAILED,
            TaskState.ABORTED: metrics.TASKS_ABORTED,
        }.get(ending.state)
        if counter is not None:
            counter.labels(claim.plugin).inc()
        self.log.info(f"task.{ending.state.value}", error=ending.error_type, **fields)

    # -- heartbeats, progress, abort, timeouts -------------------------------------------
    def _heartbeat(self, now: float) -> None:
        live = [a for a in self.active.values() if not a.fenced and not a.reported]
        if not live:
            self._last_db_ok = now
            return
        progress = {a.claim.task_id: a.progress for a in live if a.progress is not None}
        try:
            views = self.store.heartbeat([a.key for a in live], progress)
            for active in live:
                active.progress = None  # written (or refused, which the views tell)
        except StoreError as exc:
            silent = now - self._last_db_ok
            self.log.warning("node.heartbeat_failed", error=str(exc), silent_for=round(silent, 1))
            if silent > self.config.database_fence_after:
                # The leader will reclaim these attempts soon: stop them first.
                self._give_up_all("the database has not accepted heartbeats")
            return
        self._last_db_ok = now
        for active in live:
            active.last_beat = now
        by_id = {view.task_id: view for view in views}
        for active in live:
            view = by_id.get(active.claim.task_id)
            if view is None or view.fence != active.claim.fence or view.state != TaskState.RUNNING:
                self._fence(active, "heartbeat")
            elif view.abort_requested and active.stop_reason is None:
                self._stop_runner(active, Outcome.ABORTED)

    def _fence(self, active: ActiveAttempt, write: str) -> None:
        if active.fenced:
            return
        active.fenced = True
        active.runner.kill()
        self._count("fenced")
        metrics.FENCED.labels(write).inc()
        self.log.warning(
            "task.fenced",
            write=write,
            task_id=active.claim.task_id,
            attempt=active.claim.attempt,
            token=active.claim.fence,
        )

    def _stop_runner(self, active: ActiveAttempt, reason: Outcome) -> None:
        """SIGTERM now (the task may clean up), SIGKILL after the grace period."""
        active.stop_reason = reason
        active.kill_at = time.monotonic() + self.config.kill_grace
        active.runner.request_abort()
        active.runner.terminate()
        self.log.info("task.stopping", task_id=active.claim.task_id, reason=reason.value)

    def _enforce_limits(self, now: float) -> None:
        for active in list(self.active.values()):
            if active.kill_at is not None and now >= active.kill_at:
                active.runner.kill()
                active.kill_at = None
            elif (
                active.stop_reason is None
                and active.deadline is not None
                and now >= active.deadline
            ):
                self._stop_runner(active, Outcome.TIMEOUT)
            elif (
                active.stop_reason is None and now - active.runner.last_heard > RUNNER_SILENCE_LIMIT
            ):
                self.log.warning("runner.silent", task_id=active.claim.task_id)
                active.runner.kill()

    def _give_up_all(self, reason: str) -> None:
        """Kill every runner; their attempts go back to the queue, not counted as failures.

        Called from the loop and from the guard thread alike.
        """
        for active in list(self.active.values()):
            if active.stop_reason is not Outcome.FENCED:
                self.log.warning("task.given_up", task_id=active.claim.task_id, reason=reason)
                active.stop_reason = Outcome.FENCED
                active.runner.kill()
