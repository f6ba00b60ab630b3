"""Claim batches against a real ZooKeeper: one multi for the lot, tokens that still only grow.

A batch of claims is one ZooKeeper transaction, so its claims share one token (the
multi's zxid). A claim another node holds fails the multi whole: that task is
lost to the batch, the rest are claimed. The database keeps every task's fence
growing, and the claim gone still means the owner gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from taskman import Client, Outcome, TaskState
from taskman.cluster import lease as lease_module
from taskman.cluster.layout import ClusterPaths
from taskman.cluster.lease import ClaimLease
from taskman.cluster.zk import connect, ensure_namespace, wait
from taskman.errors import CoordinationError
from taskman.store import ClaimRequest, Ending, Finish, TaskStore

FN = "demo.tasks:add"
DC = "dc1"


@pytest.fixture
def paths() -> ClusterPaths:
    return ClusterPaths(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def clients(zk_hosts: str, paths: ClusterPaths) -> Iterator[list[KazooClient]]:
    made = [connect(zk_hosts, 4.0), connect(zk_hosts, 4.0)]
    ensure_namespace(made[0], paths, insecure=True)
    yield made
    for client in made:
        client.stop()
        client.close()


@pytest.fixture
def leases(clients: list[KazooClient], paths: ClusterPaths) -> list[ClaimLease]:
    found = [ClaimLease(client, paths, name) for client, name in zip(clients, "ab", strict=True)]
    for lease in found:
        lease.open_session()
    return found


def _won(tokens: list[int | None]) -> list[int]:
    """The tokens of a batch every claim of which was won."""
    assert all(t is not None for t in tokens)
    return [t for t in tokens if t is not None]


def _owner(client: KazooClient, paths: ClusterPaths, task_id: int, attempt: int) -> int | None:
    stat = wait(client.exists_async(paths.claim(task_id, attempt)))
    return None if stat is None else int(stat.ephemeralOwner)


def test_a_batch_is_one_write_whose_zxid_is_every_claims_token(
    leases: list[ClaimLease], clients: list[KazooClient], paths: ClusterPaths
) -> None:
    a, _ = leases
    before = wait(clients[0].exists_async(a.marker)).version
    tokens = a.acquire_many([(1, 1), (2, 1), (3, 1)])
    assert tokens[0] is not None and tokens == [tokens[0]] * 3
    # The token is each claim's creation zxid, as for a single create.
    assert [a.token_of(t, 1) for t in (1, 2, 3)] == tokens
    assert wait(clients[0].exists_async(a.marker)).version == before + 1  # one multi
    later = a.acquire_many([(1, 2)])[0]
    assert later is not None and later > tokens[0]


def test_a_batch_where_another_node_holds_one_claim_gets_the_rest(
    leases: list[ClaimLease], clients: list[KazooClient], paths: ClusterPaths
) -> None:
    a, b = leases
    held = b.acquire(2, 1)
    assert held is not None
    tokens = a.acquire_many([(1, 1), (2, 1), (3, 1)])
    assert tokens[1] is None
    assert tokens[0] is not None and tokens[0] == tokens[2] and tokens[0] > held
    assert b.token_of(2, 1) == held  # b's claim untouched
    a_session, b_session = (int(c.client_id[0]) for c in clients)
    owners = [_owner(clients[0], paths, t, 1) for t in (1, 2, 3)]
    assert owners == [a_session, b_session, a_session]


def test_a_crowded_batch_falls_back_to_single_creates_and_still_gets_the_rest(
    leases: list[ClaimLease],
) -> None:
    a, b = leases
    taken = list(range(10, 10 + lease_module.MULTI_TRIES + 2))
    assert all(b.acquire(t, 1) is not None for t in taken)
    wanted = [(t, 1) for t in taken] + [(99, 1), (98, 1)]
    tokens = a.acquire_many(wanted)
    assert tokens[: len(taken)] == [None] * len(taken)
    assert all(t is not None for t in tokens[len(taken) :])


def test_our_own_leftover_claim_is_dropped_and_taken_again_with_a_larger_token(
    leases: list[ClaimLease],
) -> None:
    a, _ = leases
    # As if a multi of ours timed out on our side but was applied.
    leftover = a.acquire(5, 1)
    assert leftover is not None
    tokens = a.acquire_many([(4, 1), (5, 1), (6, 1)])
    assert all(t is not None for t in tokens)
    assert tokens[1] is not None and tokens[1] > leftover
    assert a.token_of(5, 1) == tokens[1]


def test_a_session_without_its_marker_claims_nothing(
    leases: list[ClaimLease], clients: list[KazooClient], paths: ClusterPaths
) -> None:
    a, _ = leases
    wait(clients[0].delete_async(a.marker))  # as when the session that made it ended
    with pytest.raises(CoordinationError):
        a.acquire_many([(7, 1), (8, 1)])
    assert a.token_of(7, 1) is None and a.token_of(8, 1) is None


def test_tokens_of_one_multi_are_above_every_fence_the_database_holds(
    dsn: str, leases: list[ClaimLease]
) -> None:
    a, b = leases
    store = TaskStore(dsn)
    try:
        with Client(dsn) as client:
            ids = [client.submit(FN, plugin="demo", args=[i, i], max_attempts=3) for i in range(4)]
        # First attempts: one multi, one transaction.
        first = _won(a.acquire_many([(t, 1) for t in ids]))
        claims = store.claim_many(
            [ClaimRequest(t, 0, tok, "1.0") for t, tok in zip(ids, first, strict=True)],
            "a",
            DC,
        )
        assert all(c is not None for c in claims)
        # They fail and go back to the queue, fenced with the first token.
        retry = Ending(Outcome.ERROR, TaskState.QUEUED, "ValueError", "boom", retry_delay=0.0)
        records = [Finish(t, 1, tok, retry) for t, tok in zip(ids, first, strict=True)]
        assert store.finish_many(records) == [True] * 4
        a.release_many_async([(t, 1) for t in ids]).get(timeout=5)
        # Another node takes the second attempts in one multi: above every fence.
        second = _won(b.acquire_many([(t, 2) for t in ids]))
        assert all(s == second[0] for s in second)
        assert all(s > f for s, f in zip(second, first, strict=True))
        again = store.claim_many(
            [ClaimRequest(t, 1, tok, "1.0") for t, tok in zip(ids, second, strict=True)],
            "b",
            DC,
        )
        assert [c.fence if c else None for c in again] == second
        # A stale batch (the first token again) moves nothing.
        assert (
            store.claim_many(
                [ClaimRequest(t, 1, tok, "1.0") for t, tok in zip(ids, first, strict=True)],
                "a",
                DC,
            )
            == [None] * 4
        )
    finally:
        store.close()


def test_releases_ride_in_the_claim_multi_and_a_gone_claim_counts_as_released(
    leases: list[ClaimLease], clients: list[KazooClient]
) -> None:
    a, b = leases
    old = _won(a.acquire_many([(1, 1), (2, 1), (3, 1)]))
    wait(clients[0].delete_async(a.paths.claim(2, 1)))  # as the leader's revoke
    version = wait(clients[0].exists_async(a.marker)).version
    held = b.acquire(5, 1)  # and one claim of the new batch is another node's
    tokens, unreleased = a.acquire_and_release([(4, 1), (5, 1)], [(1, 1), (2, 1), (3, 1)])
    assert unreleased == []
    assert tokens[1] is None and tokens[0] is not None and tokens[0] > old[0]
    assert [a.token_of(t, 1) for t in (1, 2, 3)] == [None, None, None]
    assert b.token_of(5, 1) == held
    # Three multis: refused for 2.1 (gone), refused for 5.1 (b's), then applied.
    assert wait(clients[0].exists_async(a.marker)).version == version + 1


def test_a_batch_that_stays_crowded_leaves_its_releases_to_be_sent_again(
    leases: list[ClaimLease],
) -> None:
    a, b = leases
    _won(a.acquire_many([(1, 1)]))
    taken = list(range(10, 10 + lease_module.MULTI_TRIES))
    assert all(b.acquire(t, 1) is not None for t in taken)
    tokens, unreleased = a.acquire_and_release([(t, 1) for t in [*taken, 99]], [(1, 1)])
    assert tokens == [None] * len(taken) + [tokens[-1]] and tokens[-1] is not None
    assert unreleased == [(1, 1)] and a.token_of(1, 1) is not None


def test_work_overlapped_with_the_multi_runs_once_while_it_is_in_flight(
    leases: list[ClaimLease], clients: list[KazooClient]
) -> None:
    """The node writes its endings while the claim multi travels: once, even when the
    first multi is refused and the batch goes again."""
    a, b = leases
    held = b.acquire(7, 1)  # the first multi is refused for this one
    version = wait(clients[0].exists_async(a.marker)).version
    seen: list[int] = []

    def meanwhile() -> None:
        # The multi was sent before this ran; its answer is read after.
        seen.append(wait(clients[0].exists_async(a.marker)).version)

    tokens, _ = a.acquire_and_release([(6, 1), (7, 1)], [], meanwhile=meanwhile)
    assert len(seen) == 1
    assert tokens[0] is not None and tokens[1] is None and b.token_of(7, 1) == held
    assert wait(clients[0].exists_async(a.marker)).version == version + 1
