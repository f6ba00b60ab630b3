"""Claims and fencing tokens.

A claim is an ephemeral znode ``claims/<task>.<attempt>``. ZooKeeper lets one
session create it; the others get NodeExistsError. Its creation zxid (czxid) is
the fencing token: zxids are totally ordered across the ensemble and only grow,
across leader elections too (the epoch is the high 32 bits), so every later
claim of a task has a larger token than every earlier one.

The claim lives as long as the owner's session: if the owner dies, ZooKeeper
deletes it, and the leader's reaper sees a running task without a claim.

An owner's release is a ZooKeeper transaction that first checks the owner's
session marker (an ephemeral sequential znode, one per session). kazoo sends
requests queued while disconnected once it is connected again, under whatever
session it then has: without the check, a release of attempt n from a session
that has since expired would delete the claim another node took for the same
attempt, and the leader would reclaim a live attempt.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import ZK_TIMEOUT, wait

log = structlog.get_logger("taskman.cluster")


class ClaimLease:
    def __init__(
        self, client: KazooClient, paths: ClusterPaths, node_id: str, timeout: float = ZK_TIMEOUT
    ) -> None:
        self.client = client
        self.paths = paths
        self.node_id = node_id
        self.marker = f"{paths.sessions}/none"  # until open_session(): no release applies
        self.token_base = 0  # added to every czxid: see ClusterPaths.token_base
        self.timeout = timeout  # claim-path calls: one claim, or one pipelined batch as a whole

    def acquire(self, task_id: int, attempt: int, deadline: float | None = None) -> int | None:
        """Claim one attempt; its fencing token, or None if another node holds it."""
        deadline = deadline or time.monotonic() + self.timeout
        path = self.paths.claim(task_id, attempt)
        for _ in range(2):
            try:
                _, stat = wait(
                    self.client.create_async(
                        path, self.node_id.encode(), ephemeral=True, include_data=True
                    ),
                    _left(deadline),
                )
                return int(stat.czxid) + self.token_base
            except NodeExistsError:
                if not self._drop_own_leftover(path, deadline):
                    return None
        return None

    def acquire_many(self, attempts: list[tuple[int, int]]) -> list[int | None]:
        """Claim several attempts with pipelined creates: one round trip, not one each.

        Tokens in the order given; None where another node holds the claim.
        """
        pending = [
            self.client.create_async(
                self.paths.claim(task_id, attempt),
                self.node_id.encode(),
                ephemeral=True,
                include_data=True,
            )
            for task_id, attempt in attempts
        ]
        tokens: list[int | None] = []
        failure: Exception | None = None
        # One deadline for the batch: a silent server must not cost one timeout per claim.
        deadline = time.monotonic() + self.timeout
        for (task_id, attempt), result in zip(attempts, pending, strict=True):
            try:
                try:
                    _, stat = wait(result, _left(deadline))
                    token: int | None = int(stat.czxid) + self.token_base
                except NodeExistsError:
                    # Rare (a lost race, or our own create that timed out): the careful path.
                    token = None if failure else self.acquire(task_id, attempt, deadline)
                tokens.append(token)
            except Exception as exc:  # noqa: BLE001 - collected, then re-raised below
                failure = failure or exc
                tokens.append(None)
        if failure is not None:
            # No row backs these claims: drop them so other nodes are not blocked.
            for (task_id, attempt), token in zip(attempts, tokens, strict=True):
                if token is not None:
                    self.client.delete_async(self.paths.claim(task_id, attempt))  # not awaited
            raise failure
        return tokens

    def _drop_own_leftover(self, path: str, deadline: float) -> bool:
        # A create that timed out on our side may still have succeeded: that claim is
        # ours but no database row backs it. Delete it and try again.
        try:
            _data, stat = wait(self.client.get_async(path), _left(deadline))
        except NoNodeError:
            return True
        client_id = self.client.client_id
        if client_id is None or stat.ephemeralOwner != client_id[0]:
            return False
        log.info("claim.leftover_dropped", path=path)
        # Guarded by our session marker: if the session ended since the read above,
        # this claim is gone and the path may already be another node's.
        transaction = self.client.transaction()
        transaction.check(self.marker, -1)
        transaction.delete(path)
        wait(transaction.commit_async(), _left(deadline))
        return True

    def open_session(self) -> None:
        """Mark the current session; releases from now on are valid only while it lives."""
        self.marker = wait(
            self.client.create_async(
                f"{self.paths.sessions}/{self.node_id}-", b"", ephemeral=True, sequence=True
            )
        )

    def release(self, task_id: int, attempt: int) -> None:
        """Drop a claim of ours after its outcome is recorded (never before)."""
        self.release_path(self.paths.claim(task_id, attempt))

    def release_many_async(self, attempts: list[tuple[int, int]]) -> Any:
        """Start dropping claims of ours in one ZooKeeper transaction: one quorum write.

        The caller checks the kazoo result later: a list with the session check's
        result first, then, per claim, True or the exception (NoNodeError: already
        gone; RolledBackError: another operation of the batch failed, so this one
        did not happen either). A failed check means the session that held these
        claims is gone, and the claims with it.
        """
        transaction = self.client.transaction()
        transaction.check(self.marker, -1)  # -1: any version, but it must exist
        for task_id, attempt in attempts:
            transaction.delete(self.paths.claim(task_id, attempt))
        return transaction.commit_async()

    def release_path(self, path: str) -> None:
        """Delete one claim of ours, only while the session that created it lives."""
        transaction = self.client.transaction()
        transaction.check(self.marker, -1)
        transaction.delete(path)
        wait(transaction.commit_async())  # a failed check or a missing claim: nothing to do

    def revoke(self, task_id: int, attempt: int) -> None:
        """The leader's delete of another node's claim (after its heartbeat timed out)."""
        with contextlib.suppress(NoNodeError):
            wait(self.client.delete_async(self.paths.claim(task_id, attempt)))

    def live_claims(self) -> set[str]:
        """Names (``<task>.<attempt>``) of every claim whose owner's session is alive.

        ZooKeeper reads are served by the server this session talks to, which may
        lag the leader: a claim created (and its row moved to running) moments ago
        could be missing, and the reaper would take a live attempt for an orphan.
        sync() first brings that server up to date with the leader.
        """
        wait(self.client.sync_async(self.paths.claims))
        return set(wait(self.client.get_children_async(self.paths.claims)))

    def token_of(self, task_id: int, attempt: int) -> int | None:
        stat = wait(self.client.exists_async(self.paths.claim(task_id, attempt)))
        return None if stat is None else int(stat.czxid) + self.token_base


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
