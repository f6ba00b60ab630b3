"""The order in which a node tries its candidates: the queue's, with a little spread.

Candidates arrive best first (priority, then due time). Work that already ran
(a reclaimed attempt, one a node gave up, a retry now due) keeps that order
exactly, ahead of first attempts of its priority: a reclaimed task must not be
overtaken by work submitted after it (invariant 6). First attempts of equal
priority are shuffled, so nodes that read the same head of the queue do not all
race for its first rows (in the bench, claiming strictly in order cost two nodes
draining no-op tasks more ZooKeeper and node CPU per task).
"""

from __future__ import annotations

import random

from taskman.store import Candidate


def claim_order(candidates: list[Candidate]) -> list[Candidate]:
    """``candidates`` (best first) in the order this node should try to claim them."""
    again = [c for c in candidates if c.attempt > 0]  # already in queue order
    fresh = [c for c in candidates if c.attempt == 0]
    random.shuffle(fresh)
    # A stable sort: within a priority, work that ran before first, in its order.
    return sorted([*again, *fresh], key=lambda c: -c.priority)
