"""The order a node tries its candidates in: work that ran before keeps its place."""

from __future__ import annotations

from taskman.cluster.claim_order import claim_order
from taskman.store import Candidate


def _c(task_id: int, attempt: int = 0, priority: int = 0) -> Candidate:
    return Candidate(task_id, attempt, "demo", None, "demo.tasks:add", priority=priority)


def test_requeued_work_goes_first_in_queue_order_within_its_priority() -> None:
    # As the candidate query returns them: priority first, then due time.
    candidates = [
        _c(1, priority=5),
        _c(2, attempt=1, priority=5),
        _c(3, priority=0),
        _c(4, attempt=2, priority=0),
        _c(5, priority=0),
        _c(6, attempt=1, priority=0),
        _c(7, priority=0),
    ]
    seen = set()
    for _ in range(200):
        order = [c.task_id for c in claim_order(candidates)]
        assert order[:2] == [2, 1]
        assert order[2:4] == [4, 6]
        assert sorted(order[4:]) == [3, 5, 7]
        seen.add(tuple(order[4:]))
    assert len(seen) > 1  # first attempts are spread, so nodes do not all race for one row


def test_a_queue_of_first_attempts_is_only_shuffled() -> None:
    candidates = [_c(i) for i in range(10)]
    assert sorted(c.task_id for c in claim_order(candidates)) == list(range(10))
    assert claim_order([]) == []
