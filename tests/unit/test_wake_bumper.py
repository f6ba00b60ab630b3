"""The wake-up Bumper: coalesces requests, never lets one go unanswered, never raises."""

from __future__ import annotations

import threading

from taskman.cluster.wake import Bumper


def test_a_flood_of_requests_is_coalesced_into_few_writes() -> None:
    writes: list[int] = []
    bumper = Bumper(lambda: writes.append(1), min_gap=0.5)
    for _ in range(1000):
        bumper.bump()
    assert bumper.flush(timeout=5.0)
    bumper.close()
    # The first request's write, then at most one for everything asked during its gap.
    assert 1 <= len(writes) <= 2 and bumper.stats.requested == 1000


def test_a_request_during_a_write_gets_a_write_that_starts_after_it() -> None:
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def write() -> None:
        order.append("write")
        started.set()
        release.wait(5)

    bumper = Bumper(write, min_gap=0.0)
    bumper.bump()
    assert started.wait(5)
    order.append("request")  # e.g. a commit after the first bump was sent
    bumper.bump()
    release.set()
    assert bumper.flush(timeout=5.0)
    bumper.close()
    assert order == ["write", "request", "write"]


def test_failed_writes_are_counted_not_raised() -> None:
    def write() -> None:
        raise RuntimeError("ZooKeeper is down")

    bumper = Bumper(write, min_gap=0.0)
    bumper.bump()  # returns at once, raises nothing
    assert bumper.flush(timeout=5.0)
    bumper.close()
    assert bumper.stats.failed == 1 and bumper.stats.sent == 0
    bumper.bump()  # after close: ignored
    assert bumper.stats.requested == 1
