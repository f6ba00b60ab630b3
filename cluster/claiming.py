"""Claiming: candidates -> concurrency permits -> tokens -> fenced claim -> launch.

One pass claims up to the free slots. Tokens for the whole batch come from one
ZooKeeper multi (one write, lease.py); one transaction moves the batch to running,
each row only if its attempt is still the one we hold a token for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.exceptions import KazooException

from taskman.cluster.attempts import ActiveAttempt
from taskman.cluster.claim_order import claim_order
from taskman.cluster.concurrency import Permit, cap_for
from taskman.cluster.context import NodeContext
from taskman.cluster.outcomes import Outcomes
from taskman.cluster.releases import Releases
from taskman.cluster.supervision import Supervisor
from taskman.errors import CoordinationError, PluginError, StoreError
from taskman.plugins import Plugin
from taskman.runner import RunnerSpec
from taskman.states import Outcome, TaskState
from taskman.store import Candidate, Claim, ClaimRequest, Ending


@dataclass
class Prepared:
    """A candidate ready to claim: its plugin (or why it can't run) and its permit."""

    candidate: Candidate
    plugin: Plugin | None
    problem: str | None
    permit: Permit | None

    @property
    def task_id(self) -> int:
        return self.candidate.task_id

    @property
    def attempt(self) -> int:
        return self.candidate.attempt + 1  # the attempt this claim would start

    @property
    def version(self) -> str:
        return (self.plugin.version if self.plugin else self.candidate.plugin_version) or ""


def runner_spec(claim: Claim, plugin: Plugin, *, heartbeat: float, watchdog: float) -> RunnerSpec:
    """What the runner needs to run one attempt: the claim's call in the plugin's world.

    A CPU-time limit is an rlimit of the whole process, which a pooled runner would
    spend across attempts: an attempt that has one runs in a process of its own.
    """
    limits = {**plugin.limits, **(claim.limits or {})}
    pooled = plugin.isolation_for(claim.function) == "pooled" and "cpu_seconds" not in limits
    return RunnerSpec(
        call=claim,
        python=plugin.python,
        sys_path=list(plugin.sys_path),
        env=dict(plugin.env),
        cwd=str(plugin.directory),
        heartbeat_interval=heartbeat,
        watchdog_timeout=watchdog,
        limits=limits,
        fork=plugin.fork,
        preload=plugin.preload,
        run_as=plugin.run_as,
        pooled=pooled,
        max_tasks_per_runner=plugin.max_tasks_per_runner,
        max_runner_memory_mb=plugin.max_runner_memory_mb,
    )


class Meanwhile:
    """Work to overlap with a ZooKeeper round trip: runs once, keeps its error for later."""

    def __init__(self, fn: Callable[[], None] | None) -> None:
        self._fn = fn
        self._error: Exception | None = None

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is None:
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - raised by reraise, after the claim
            self._error = exc

    def reraise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error


class Claimer:
    def __init__(
        self,
        ctx: NodeContext,
        releases: Releases,
        outcomes: Outcomes,
        supervisor: Supervisor,
        may_claim: Callable[[], bool],
    ) -> None:
        self.ctx = ctx
        self.releases = releases
        self.outcomes = outcomes
        self.supervisor = supervisor
        self.may_claim = may_claim
        self.found: int | None = None  # candidates the last claim read; None: it failed

    def claim(self, meanwhile: Callable[[], None] | None = None) -> tuple[int, int]:
        """Claim and launch up to the free slots: (claimed, wanted).

        ``meanwhile`` (the node's batch of endings to write) runs exactly once: while
        the claim's ZooKeeper multi is in flight, or at the end if none was sent. An
        error it raises comes out after the claim, never in the middle of one.
        """
        side = Meanwhile(meanwhile)
        try:
            return self._claim(side)
        finally:
            side()
            side.reraise()

    def _claim(self, meanwhile: Meanwhile) -> tuple[int, int]:
        ctx = self.ctx
        free = ctx.config.slots - len(ctx.active)
        self.found = None
        try:
            keys, pairs = ctx.coord.gate.blocked()
            candidates = ctx.store.candidates(
                ctx.config.datacenter,
                ctx.registry.available(),
                limit=free * 2,
                blocked_keys=keys,
                blocked_functions=pairs,
            )
        except StoreError as exc:
            ctx.log.warning("claim.candidates_failed", error=str(exc))
            return (0, free)
        self.found = len(candidates)
        chosen = self._choose(claim_order(candidates), free)
        if not chosen:
            return (0, free)
        started = ctx.clock()
        won = self._take_tokens(chosen, meanwhile)
        if not won:
            return (0, free)
        requests = [
            ClaimRequest(p.task_id, p.candidate.attempt, token, p.version) for p, token in won
        ]
        try:
            # One transaction (one COMMIT) moves the whole batch to running.
            claims = ctx.store.claim_many(requests, ctx.config.node_id, ctx.config.datacenter)
        except StoreError as exc:
            ctx.log.warning("claim.failed", tasks=len(won), error=str(exc))
            # No row backs these claims: let them go so other nodes can have the tasks.
            for prepared, _token in won:
                self.releases.release(prepared.task_id, prepared.attempt)
            return (0, free)
        claimed = 0
        for (prepared, _token), claim in zip(won, claims, strict=True):
            claimed += self._start(prepared, claim, started)
        return (claimed, free)

    def _take_tokens(
        self, chosen: list[Prepared], meanwhile: Callable[[], None]
    ) -> list[tuple[Prepared, int]]:
        ctx = self.ctx
        # One ZooKeeper multi (one write) for the whole batch, and the claims whose
        # outcomes are recorded go in it too.
        release = self.releases.take()
        try:
            tokens, unreleased = ctx.coord.lease.acquire_and_release(
                [(p.task_id, p.attempt) for p in chosen], release, meanwhile=meanwhile
            )
        except (CoordinationError, KazooException) as exc:
            ctx.log.warning("claim.failed", error=str(exc))
            self.releases.give_back(release)
            self._return_permits(chosen)
            return []
        self.releases.give_back(unreleased)
        won: list[tuple[Prepared, int]] = []
        for prepared, token in zip(chosen, tokens, strict=True):
            if token is None:
                ctx.events.emit("claim.lost_race", task_id=prepared.task_id)
                self._return_permits([prepared])
                continue
            if prepared.permit is not None:
                self.releases.hold_permit((prepared.task_id, prepared.attempt), prepared.permit)
            won.append((prepared, token))
        return won

    def _return_permits(self, prepared: list[Prepared]) -> None:
        for p in prepared:
            if p.permit is not None:
                self.ctx.coord.gate.release(p.permit)

    def _choose(self, candidates: list[Candidate], free: int) -> list[Prepared]:
        chosen: list[Prepared] = []
        try:
            for candidate in candidates:
                if len(chosen) >= free or not self.may_claim():
                    break
                prepared = self._prepare(candidate)
                if prepared is not None:
                    chosen.append(prepared)
        except CoordinationError as exc:
            # ZooKeeper missed the cap's deadline: try again next poll, holding nothing.
            self.ctx.log.warning("claim.concurrency_failed", error=str(exc))
            self._return_permits(chosen)
            return []
        return chosen

    def _prepare(self, candidate: Candidate) -> Prepared | None:
        """Resolve the plugin and take a concurrency permit; None if the cap is full."""
        if candidate.task_id in self.ctx.active:
            # An earlier attempt of it (fenced, reclaimed) is still ending here. Claiming
            # now would replace its entry: its exit would go unhandled, its runner
            # unclosed, its permit and claim never released.
            return None
        plugin: Plugin | None = None
        problem: str | None = None
        try:
            plugin = self.ctx.registry.resolve(candidate.plugin, candidate.plugin_version)
            if not plugin.allows(candidate.function):
                problem = (
                    f"plugin {plugin.name} {plugin.version} does not allow {candidate.function}"
                )
        except PluginError as exc:
            problem = str(exc)
        cap = None if problem else cap_for(candidate, plugin)
        permit = None
        if cap is not None:
            permit = self.ctx.coord.gate.try_acquire(cap, candidate)
            if permit is None:
                self.ctx.events.emit("claim.concurrency_full", task_id=candidate.task_id)
                return None
        return Prepared(candidate, plugin, problem, permit)

    def _start(self, prepared: Prepared, claim: Claim | None, claim_started: float) -> int:
        """Start the runner of a task the database moved to running under our token (1 if so)."""
        ctx = self.ctx
        if claim is None:
            self.releases.release(prepared.task_id, prepared.attempt)
            return 0
        if claim.retry_backoff is None:
            claim = dataclasses.replace(claim, retry_backoff=ctx.config.retry_backoff)
        now = ctx.clock()
        ctx.events.emit(
            "task.claimed",
            task_id=claim.task_id,
            attempt=claim.attempt,
            token=claim.fence,
            function=claim.function,
            plugin=claim.plugin,
            version=prepared.version,
            claim_seconds=now - claim_started,
            waited=claim.waited,
        )
        plugin = prepared.plugin
        if plugin is None or prepared.problem is not None:
            ending = Ending(Outcome.REJECTED, TaskState.FAILED, "PluginError", prepared.problem)
            self.outcomes.queue(claim, ending, output_tail=None, claimed_at=None)
            return 1
        spec = runner_spec(
            claim,
            plugin,
            heartbeat=ctx.config.heartbeat_interval,
            watchdog=ctx.config.runner_watchdog,
        )
        runner = ctx.runner_factory(spec, ctx.runner_events)
        runner.launch()  # the fork happens beside this loop; a failed start comes back as an exit
        deadline = None if claim.timeout is None else now + claim.timeout
        active = ActiveAttempt(
            claim=claim,
            plugin=plugin,
            runner=runner,
            deadline=deadline,
            claimed_at=now,
            last_beat=now,
        )
        ctx.active[claim.task_id] = active
        if claim.abort_requested:
            self.supervisor.stop_runner(active, Outcome.ABORTED)
        return 1
