"""The leader's side of the store: its epoch, reclaims, expiry, retention and tokens.

Every write here is guarded by the leader's epoch (``role``, ``epoch``): a leader
that was paused and replaced changes nothing when it wakes.
"""

from __future__ import annotations

from types import ModuleType

from taskman.errors import ValidationError
from taskman.states import Outcome, TaskState
from taskman.store.backend import Cursor, StoreDatabase
from taskman.store.records import RunningTask


class LeaderQueries:
    """Mixed into TaskStore: ``db`` and ``q`` (the dialect's queries) come from it."""

    db: StoreDatabase
    q: ModuleType

    def take_leadership(self, name: str, epoch: int, node: str) -> bool:
        """Record this leader's epoch; False if a newer leader has already written a larger one."""

        def fn(cur: Cursor) -> bool:
            cur.execute(self.q.TAKE_LEADERSHIP, (name, epoch, node))
            cur.execute(self.q.LEADERSHIP, (name,))
            row = cur.fetchone()
            return bool(row and int(row["epoch"]) == epoch)

        return self.db.run(fn)

    def running(self) -> list[RunningTask]:
        return [
            RunningTask(
                task_id=int(r["id"]),
                attempt=int(r["attempt"]),
                fence=int(r["fence"]),
                owner=r["owner"],
                heartbeat_at=r["heartbeat_at"],
                reclaims=int(r["reclaims"]),
            )
            for r in self.db.query(self.q.RUNNING_TASKS)
        ]

    def reclaim(
        self,
        task: RunningTask,
        *,
        outcome: Outcome,
        reason: str,
        give_up: bool,
        role: str,
        epoch: int,
    ) -> bool:
        """Re-queue (or, past the reclaim limit, fail) an attempt whose owner is gone; fenced."""
        error_type = "NodeLost" if outcome is Outcome.NODE_LOST else "HeartbeatTimeout"

        def fn(cur: Cursor) -> bool:
            sql = self.q.RECLAIM_GIVE_UP if give_up else self.q.RECLAIM
            message = reason
            if give_up:
                message = f"{reason}; gave up after {task.reclaims + 1} reclaims"
            if not cur.execute(
                sql, (error_type, message, task.task_id, task.fence, task.attempt, role, epoch)
            ):
                return False
            cur.execute(
                self.q.END_LOST_ATTEMPT,
                (outcome.value, error_type, reason, task.task_id, task.attempt, task.fence),
            )
            return True

        return self.db.run(fn)

    def expire_due(self, *, role: str, epoch: int, limit: int = 1000) -> int:
        return self.db.execute(self.q.EXPIRE_DUE, (role, epoch, limit))

    def prune(
        self, state: TaskState, older_than: float, *, role: str, epoch: int, batch: int
    ) -> int:
        """Delete one batch of ``state`` tasks finished more than ``older_than`` s ago."""
        if not state.terminal:
            raise ValidationError(f"only finished tasks are pruned, not {state.value}")
        return self.db.execute(self.q.PRUNE_BATCH, (state.value, older_than, role, epoch, batch))

    def count_prunable(self, state: TaskState, older_than: float) -> int:
        return int(self.db.query(self.q.PRUNE_COUNT, (state.value, older_than))[0]["n"])

    def max_token(self) -> int:
        """The largest fence or leader epoch stored: a restarted local coordinator starts above it."""
        return int(self.db.query(self.q.HIGHEST_FENCE_OR_EPOCH)[0]["token"] or 0)

    def max_live_token(self) -> int:
        """The last leader's epoch or the largest fence of unfinished work, if larger."""
        return int(self.db.query(self.q.HIGHEST_LIVE_FENCE_OR_EPOCH)[0]["token"] or 0)

    def oldest_queued_wait(self) -> float:
        """Seconds the longest-waiting due queued task has waited, by the database's clock (0: none)."""
        wait_us = self.db.query(self.q.OLDEST_QUEUED_WAIT)[0]["wait_us"]
        return max(0, int(wait_us or 0)) / 1e6

    def queued_placements(self) -> list[tuple[str, str | None, str | None]]:
        """Each (plugin, pinned version, pinned datacenter) some queued task needs."""
        return [
            (r["plugin"], r["plugin_version"], r["datacenter"])
            for r in self.db.query(self.q.QUEUED_PLACEMENTS)
        ]

    def fail_unplaceable(
        self,
        placement: tuple[str, str | None, str | None],
        error_type: str,
        message: str,
        grace: float,
        *,
        role: str,
        epoch: int,
    ) -> int:
        """Fail the queued tasks of ``placement`` that have been due for ``grace`` s or more."""
        plugin, version, datacenter = placement
        return self.db.execute(
            self.q.FAIL_UNPLACEABLE,
            (error_type, message, plugin, version, datacenter, int(grace * 1e6), role, epoch),
        )
