"""A node's steps over one shared context, wired together; no threads of their own.

The node runs them from its loop and its guard thread; tests/inprocess drives
them one call at a time.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping

from taskman.cluster.claiming import Claimer
from taskman.cluster.context import NodeContext
from taskman.cluster.contracts import JsonValue
from taskman.cluster.guard import Guard
from taskman.cluster.outcomes import Outcomes
from taskman.cluster.pacing import WAKE, Pacer
from taskman.cluster.releases import Releases
from taskman.cluster.supervision import Supervisor


class NodeSteps:
    def __init__(
        self, ctx: NodeContext, member_info: Callable[[], Mapping[str, JsonValue]]
    ) -> None:
        self.ctx = ctx
        self.releases = Releases(ctx)
        self.supervisor = Supervisor(ctx)
        self.outcomes = Outcomes(ctx, self.releases)
        self.guard = Guard(ctx, self.supervisor, self.releases, member_info)
        self.claimer = Claimer(ctx, self.releases, self.outcomes, self.supervisor, self.may_claim)
        self.pacer = Pacer(ctx)

    def may_claim(self) -> bool:
        ctx = self.ctx
        return (
            len(ctx.active) < ctx.config.slots
            and not self.guard.fenced_episode
            and ctx.session_healthy()
        )

    def poll(self, now: float, meanwhile: Callable[[], None] | None = None) -> int:
        """Claim what there is room for, then set when to look next (pacing.py).

        ``meanwhile`` runs once during the claim, while ZooKeeper answers (Claimer.claim).
        """
        claimed, wanted = self.claimer.claim(meanwhile)
        self.pacer.polled(now, claimed, wanted, self.claimer.found)
        return claimed

    def drain_events(self, timeout: float) -> None:
        """Handle every runner event waiting (after up to ``timeout`` s for the first).

        A wake-up among them makes this pass poll (``Pacer.woken``).
        """
        events = self.ctx.runner_events
        try:
            event = events.get(timeout=timeout) if timeout > 0 else events.get_nowait()
        except queue.Empty:
            return
        while True:
            if event is WAKE:
                self.pacer.woken()
            else:
                self.outcomes.handle(event)
            try:
                event = events.get_nowait()
            except queue.Empty:
                return
