"""Claims and fencing tokens.

A claim is an ephemeral znode ``claims/<task>.<attempt>``. ZooKeeper lets one
session create it; the others get NodeExistsError. Its creation zxid (czxid) is
the fencing token: zxids are totally ordered across the ensemble and only grow,
across leader elections too (the epoch is the high 32 bits), so every later
claim of a task has a larger token than every earlier one.

A batch of claims is one ZooKeeper transaction (a multi): one write, so one
zxid for the lot, and every claim of the batch gets that token. That keeps
tokens strictly growing per task (each claim of a task is still created after
the one before it) and lets different tasks share a token, which nothing
compares. The multi also sets this session's marker (below), whose Stat
carries the zxid; kazoo returns none for a create inside a multi.

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
from collections.abc import Callable
from typing import Any

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError, RolledBackError
from kazoo.protocol.states import ZnodeStat

from taskman.cluster.layout import ClusterPaths
from taskman.cluster.zk import ZK_TIMEOUT, wait
from taskman.errors import CoordinationError

log = structlog.get_logger("taskman.cluster")
Key = tuple[int, int]  # (task id, attempt)
# Multis tried per claim batch before the rest goes as pipelined creates: each failed
# multi (a claim another node holds) costs a write and a round trip.
MULTI_TRIES = 3


class ClaimLease:
    def __init__(
        self, client: KazooClient, paths: ClusterPaths, node_id: str, timeout: float = ZK_TIMEOUT
    ) -> None:
        self.client = client
        self.paths = paths
        self.node_id = node_id
        self.marker = f"{paths.sessions}/none"  # until open_session(): no release applies
        self.token_base = 0  # added to every czxid: see ClusterPaths.token_base
        self.timeout = timeout  # claim-path calls: one claim, or one batch as a whole

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

    def acquire_many(self, attempts: list[Key]) -> list[int | None]:
        """Claim several attempts in one ZooKeeper transaction: one write, not one each.

        Tokens in the order given; None where another node holds the claim.
        """
        return self.acquire_and_release(attempts, [])[0]

    def acquire_and_release(
        self,
        attempts: list[Key],
        release: list[Key],
        *,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[list[int | None], list[Key]]:
        """Claim ``attempts`` and drop claims of ours (``release``) in one multi.

        The tokens (as ``acquire_many``), and the releases still to send. A multi
        is applied whole or not at all: a claim some other node holds fails the
        lot, so that one takes the careful path and the rest go again (a release
        whose claim is gone already is simply done). A batch still crowded after
        MULTI_TRIES multis is claimed with pipelined creates, its releases left over.
        """
        deadline = time.monotonic() + self.timeout  # one for the batch, however many tries
        tokens: dict[int, int | None] = {}
        todo, drops = list(range(len(attempts))), list(release)
        try:
            for _ in range(MULTI_TRIES if todo else 0):
                failed = self._multi([attempts[i] for i in todo], drops, deadline, meanwhile)
                meanwhile = None
                if isinstance(failed, int):  # applied: the token of every claim in it
                    tokens.update(dict.fromkeys(todo, failed))
                    todo, drops = [], []
                    break
                if failed[0] < len(drops):
                    drops.pop(failed[0])  # a claim of ours that is gone already
                else:
                    held = todo.pop(failed[0] - len(drops))  # a claim that exists already
                    tokens[held] = self._existing(*attempts[held], deadline)
            if todo:  # a crowded batch: pipelined creates, each on its own
                each = self._create_each([attempts[i] for i in todo], deadline)
                tokens.update(zip(todo, each, strict=True))
        except Exception:
            # No row backs the claims won so far: drop them so other nodes are not blocked.
            won = [attempts[i] for i, token in tokens.items() if token is not None]
            if won:
                self.release_many_async(won)  # not awaited; guarded by the session marker
            raise
        return [tokens[i] for i in range(len(attempts))], drops

    def _existing(self, task_id: int, attempt: int, deadline: float) -> int | None:
        """A claim whose create failed because it exists: a lost race (None), or a
        leftover of ours from a create that timed out, dropped and created again."""
        if self._drop_own_leftover(self.paths.claim(task_id, attempt), deadline):
            return self.acquire(task_id, attempt, deadline)
        return None

    def _multi(
        self,
        attempts: list[Key],
        drops: list[Key],
        deadline: float,
        meanwhile: Callable[[], None] | None = None,
    ) -> int | tuple[int]:
        """Drop ``drops`` and create the claims of ``attempts`` in one multi: the claims'
        token, or (the index of the operation that failed, drops first,). ``meanwhile``
        runs while the multi is in flight (it must not raise: Claimer's Meanwhile).

        The multi first sets this session's marker: a ZooKeeper transaction is one
        write with one zxid, so the marker's new mzxid is every claim's czxid (kazoo
        returns no Stat for a create inside a multi, but does for a set). And a
        session that has ended has no marker: nothing is created or dropped in its name.
        """
        transaction = self.client.transaction()
        transaction.set_data(self.marker, b"")
        for task_id, attempt in drops:
            transaction.delete(self.paths.claim(task_id, attempt))
        for task_id, attempt in attempts:
            transaction.create(
                self.paths.claim(task_id, attempt), self.node_id.encode(), ephemeral=True
            )
        left = _left(deadline)
        pending = transaction.commit_async()
        if meanwhile is not None:
            meanwhile()  # the time it takes is not ZooKeeper's: the wait starts after it
        marker, *results = wait(pending, left)
        if isinstance(marker, ZnodeStat):
            return int(marker.mzxid) + self.token_base
        if not isinstance(marker, RolledBackError):
            raise CoordinationError(f"the session marker {self.marker} is gone: {marker!r}")
        for index, result in enumerate(results):
            expected = NoNodeError if index < len(drops) else NodeExistsError
            if isinstance(result, expected):
                return (index,)
        raise CoordinationError(f"ZooKeeper refused a claim or release: {results!r}")

    def acquire_pipelined(self, attempts: list[tuple[int, int]]) -> list[int | None]:
        """Claim with pipelined creates: one round trip, but one write per claim."""
        return self._create_each(attempts, time.monotonic() + self.timeout)

    def _create_each(self, attempts: list[tuple[int, int]], deadline: float) -> list[int | None]:
        """Claim with pipelined creates, one write each (after multis that kept colliding)."""
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
        for (task_id, attempt), result in zip(attempts, pending, strict=True):
            try:
                try:
                    _, stat = wait(result, _left(deadline))
                    token: int | None = int(stat.czxid) + self.token_base
                except NodeExistsError:
                    # A lost race, or our own create that timed out: the careful path.
                    token = None if failure else self.acquire(task_id, attempt, deadline)
                tokens.append(token)
            except Exception as exc:  # noqa: BLE001 - collected, then re-raised below
                failure = failure or exc
                tokens.append(None)
        if failure is not None:
            won = [a for a, token in zip(attempts, tokens, strict=True) if token is not None]
            if won:
                self.release_many_async(won)  # not awaited; guarded by the session marker
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
