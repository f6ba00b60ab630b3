"""Releases: claims and permits dropped after their outcome is recorded, in batches.

A release is a ZooKeeper multi that first checks this session's marker, so one
sent late, by a session that has since ended, deletes nothing (lease.py). When
the loop claims, the queued releases ride in the claim batch's multi (one write
for both); what is left is sent after the claim step, or with the next
heartbeat, without waiting: ``check`` reads the answers then and queues again
what failed.
"""

from __future__ import annotations

from kazoo.exceptions import NoNodeError, RolledBackError, RuntimeInconsistency

from taskman.cluster.concurrency import Permit
from taskman.cluster.context import NodeContext
from taskman.cluster.contracts import Pending

Key = tuple[int, int]  # (task id, attempt)


class Releases:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.leftover: list[Key] = []  # to send with the next flush
        # In flight: the claims, the answer, and the session marker they were sent under.
        self.in_flight: list[tuple[list[Key], Pending, str]] = []
        self.permits: dict[Key, Permit] = {}

    def hold_permit(self, key: Key, permit: Permit) -> None:
        self.permits[key] = permit

    def release_permit(self, task_id: int, attempt: int) -> None:
        permit = self.permits.pop((task_id, attempt), None)
        if permit is not None:
            self.ctx.coord.gate.release(permit)

    def release(self, task_id: int, attempt: int) -> None:
        """Queue a claim to drop after its outcome is recorded; ``flush`` sends them."""
        self.release_permit(task_id, attempt)
        self.leftover.append((task_id, attempt))

    def take(self) -> list[Key]:
        """The queued claims, for the caller to drop in its own multi (the next claim
        batch's); nothing while ZooKeeper is unreachable. ``give_back`` what it did not."""
        if not self.leftover or not self.ctx.session_healthy():
            return []
        taken, self.leftover = self.leftover, []
        return taken

    def give_back(self, keys: list[Key]) -> None:
        self.leftover.extend(keys)

    def forget_claims(self) -> None:
        """After a lost session: its claims are gone with it, and sent from the new
        session a release could delete the claim another node has since taken."""
        self.leftover.clear()

    def flush(self) -> None:
        """Drop the queued claims in one transaction; later if ZooKeeper is unreachable."""
        if not self.leftover or not self.ctx.session_healthy():
            return
        pending, self.leftover = self.leftover, []
        lease = self.ctx.coord.lease
        # Not awaited: the outcomes are already recorded, so nothing waits on the deletes.
        self.in_flight.append((pending, lease.release_many_async(pending), lease.marker))

    def check(self) -> None:
        still = []
        for keys, result, marker in self.in_flight:
            if not result.ready():
                still.append((keys, result, marker))
                continue
            if marker != self.ctx.coord.lease.marker:
                continue  # sent by a session that has ended: its claims ended with it
            if not result.successful():
                self.leftover.extend(keys)  # not applied: all of them go again
                continue
            self._requeue_failed(keys, result.value)
        self.in_flight = still
        self.flush()

    def _requeue_failed(self, keys: list[Key], answers: object) -> None:
        check, *outcomes = answers if isinstance(answers, list) else [answers]
        if isinstance(check, Exception) and not isinstance(check, RolledBackError):
            return  # our session marker is gone: so are the claims it held
        for key, outcome in zip(keys, outcomes, strict=True):
            if not isinstance(outcome, Exception) or isinstance(outcome, NoNodeError):
                continue  # dropped, or already gone
            if not isinstance(outcome, RolledBackError | RuntimeInconsistency):
                self.ctx.log.warning("claim.release_failed", task_id=key[0], error=repr(outcome))
            self.leftover.append(key)  # a failed batch: the others go again
