"""Supervising running attempts: heartbeats, fencing, abort, timeouts, giving up.

The heartbeat is one statement for every live attempt. It writes their progress,
and its answer tells which attempts a newer token owns (fenced: kill, write
nothing more) and which were asked to abort.
"""

from __future__ import annotations

from taskman.cluster.attempts import ActiveAttempt
from taskman.cluster.context import NodeContext
from taskman.errors import StoreError
from taskman.states import Outcome, TaskState

RUNNER_SILENCE_LIMIT = 60.0  # a child whose heartbeat thread is silent this long is hung


class Supervisor:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.last_db_ok = ctx.clock()  # the last heartbeat the database accepted

    def heartbeat(self, now: float) -> None:
        ctx = self.ctx
        live = [a for a in ctx.active.values() if not a.fenced and not a.reported]
        if not live:
            self.last_db_ok = now
            return
        progress = {a.claim.task_id: a.progress for a in live if a.progress is not None}
        try:
            views = ctx.store.heartbeat([a.key for a in live], progress)
            for active in live:
                active.progress = None  # written (or refused, which the views tell)
        except StoreError as exc:
            silent = now - self.last_db_ok
            ctx.log.warning("node.heartbeat_failed", error=str(exc), silent_for=round(silent, 1))
            if silent > ctx.config.database_fence_after:
                # The leader will reclaim these attempts soon: stop them first.
                self.give_up_all("the database has not accepted heartbeats")
            return
        self.last_db_ok = now
        for active in live:
            active.last_beat = now
        by_id = {view.task_id: view for view in views}
        for active in live:
            view = by_id.get(active.claim.task_id)
            if view is None or view.fence != active.claim.fence or view.state != TaskState.RUNNING:
                self.fence(active, "heartbeat")
            elif view.abort_requested and active.stop_reason is None:
                self.stop_runner(active, Outcome.ABORTED)

    def fence(self, active: ActiveAttempt, write: str) -> None:
        """A newer token owns the task: kill the runner and write nothing more about it."""
        if active.fenced:
            return
        active.fenced = True
        active.runner.kill()
        claim = active.claim
        self.ctx.events.emit(
            "task.fenced",
            write=write,
            task_id=claim.task_id,
            attempt=claim.attempt,
            token=claim.fence,
        )

    def stop_runner(self, active: ActiveAttempt, reason: Outcome) -> None:
        """SIGTERM now (the task may clean up), SIGKILL after the grace period."""
        active.stop_reason = reason
        active.kill_at = self.ctx.clock() + self.ctx.config.kill_grace
        active.runner.request_abort()
        active.runner.terminate()
        self.ctx.events.emit("task.stopping", task_id=active.claim.task_id, reason=reason.value)

    def enforce_limits(self, now: float) -> None:
        for active in list(self.ctx.active.values()):
            if active.kill_at is not None and now >= active.kill_at:
                active.runner.kill()
                active.kill_at = None
            elif (
                active.stop_reason is None
                and active.deadline is not None
                and now >= active.deadline
            ):
                self.stop_runner(active, Outcome.TIMEOUT)
            elif (
                active.stop_reason is None and now - active.runner.last_heard > RUNNER_SILENCE_LIMIT
            ):
                self.ctx.log.warning("runner.silent", task_id=active.claim.task_id)
                active.runner.kill()

    def give_up_all(self, reason: str) -> None:
        """Kill every runner; their attempts go back to the queue, not counted as failures.

        Called from the loop and from the guard thread alike.
        """
        for active in list(self.ctx.active.values()):
            if active.stop_reason is not Outcome.FENCED:
                self.ctx.events.emit("task.given_up", task_id=active.claim.task_id, reason=reason)
                active.stop_reason = Outcome.FENCED
                active.runner.kill()
