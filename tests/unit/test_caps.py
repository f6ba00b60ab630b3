"""The admission rule of concurrency caps, and the embedded coordinator's gate that applies it."""

from __future__ import annotations

from taskman.cluster.concurrency import Cap, _before, _parse, admits
from taskman.cluster.coordination import _LocalGate
from taskman.store import Candidate


def test_a_claim_is_admitted_below_the_smallest_limit_of_itself_and_those_ahead() -> None:
    assert admits(2, []) and admits(2, [2]) and not admits(2, [2, 2])
    assert admits(3, [2]) and not admits(3, [2, 2]), "a limit-2 holder allows two in all"
    assert not admits(1, [3]), "a limit-1 claim waits until nothing else runs"
    assert not admits(5, [1]), "nothing joins a limit-1 holder"


def _admit(gate: _LocalGate, key: str, limit: int) -> object:
    candidate = Candidate(1, 0, "demo", None, "demo.tasks:add", key, limit)
    return gate.try_acquire(Cap(key, limit, True), candidate)


def test_the_embedded_gate_follows_the_same_rule_and_a_changed_cap() -> None:
    gate = _LocalGate()
    first = [_admit(gate, "k", 2) for _ in range(3)]
    assert first[0] and first[1] and first[2] is None
    assert gate.blocked() == (frozenset({"k"}), frozenset())
    for permit in first[:2]:
        gate.release(permit)  # type: ignore[arg-type]
    raised = [_admit(gate, "k", 3) for _ in range(4)]
    assert all(raised[:3]) and raised[3] is None
    assert _admit(gate, "k", 1) is None
    for permit in raised[:3]:
        gate.release(permit)  # type: ignore[arg-type]
    only = _admit(gate, "k", 1)
    assert only and _admit(gate, "k", 5) is None


def test_releasing_a_permit_twice_frees_only_that_permit() -> None:
    gate = _LocalGate()
    a, b = _admit(gate, "k", 2), _admit(gate, "k", 2)
    gate.release(a)  # type: ignore[arg-type]
    gate.release(a)  # type: ignore[arg-type]
    assert gate.held() == 1 and _admit(gate, "k", 2) and _admit(gate, "k", 2) is None
    assert b


def test_permit_order_survives_the_wrap_of_zookeepers_sequence_counter() -> None:
    gate = "0123456789abcdef" * 2
    assert _parse(f"3-{gate}-0000000042") == (3, gate, 42)
    # %010d of a wrapped (negative) cversion: after 2147483647 comes -2147483648.
    assert _parse(f"3-{gate}--2147483648") == (3, gate, -2147483648)
    assert _parse("lock") is None and _parse(f"x-{gate}-0000000001") is None
    assert _before(5, 6) and not _before(6, 5) and not _before(5, 5)
    assert _before(2147483647, -2147483648) and not _before(-2147483648, 2147483647)
    assert _before(-1, 0) and _before(-2147483600, -2147483599)
