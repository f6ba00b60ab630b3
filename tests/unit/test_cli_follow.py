"""The follow loop of `taskman wait`, over a scripted sequence of reads (no database).

The client here is a stand-in that replays task snapshots; the real command
against a real node is tests/acceptance/test_cli_wait.py.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from datetime import datetime

import pytest

from taskman.cli.follow import REASONS_EVERY, Follower, Interrupted
from taskman.errors import WaitTimeoutError
from taskman.models import Task
from taskman.states import Outcome, TaskState
from tests.unit.task_factory import NOW, make_attempt, make_task


class Replay:
    """Hands out one snapshot per read, then repeats the last; reasons by call."""

    def __init__(self, tasks: list[Task], reasons: Callable[[int], list[str]] | None = None):
        self.tasks = tasks
        self.reads = 0
        self.reason_calls = 0
        self._reasons = reasons or (lambda _: [])

    def get(self, task_id: int) -> Task:
        task = self.tasks[min(self.reads, len(self.tasks) - 1)]
        self.reads += 1
        if isinstance(task, BaseException):
            raise task
        return task

    def why_queued(self, task: Task) -> list[str]:
        self.reason_calls += 1
        return self._reasons(self.reason_calls)

    def now(self) -> datetime:
        return NOW


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def follower(client: Replay, *, live: bool) -> tuple[Follower, io.StringIO]:
    out = io.StringIO()
    clock = Clock()
    f = Follower(client, out, live=live, poll=1.0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    return f, out


RUNNING = make_task(
    state=TaskState.RUNNING,
    attempt=1,
    owner="n1",
    fence=0x1_0000_0001,
    attempts=(make_attempt(1, node="n1"),),
)


def progress(fraction: float, message: str) -> Task:
    return dataclasses.replace(RUNNING, progress=fraction, progress_message=message)


DONE = make_task(
    state=TaskState.SUCCEEDED, attempt=1, attempts=(make_attempt(1, Outcome.SUCCEEDED, node="n1"),)
)


def test_plain_lines_one_per_change() -> None:
    reads = [
        make_task(),
        RUNNING,
        progress(0.1, "chunk 1"),
        progress(0.1, "chunk 1"),  # no change: no line
        progress(0.5, "chunk 5"),
        DONE,
    ]
    f, out = follower(Replay(reads), live=False)
    assert f.follow(42) == DONE
    assert out.getvalue().splitlines() == [
        "task 42: demo.tasks:sleep (plugin demo): queued",
        "task 42: attempt 1 claimed by n1 (dc1), token 4294967297",
        "task 42: progress 10% chunk 1",
        "task 42: progress 50% chunk 5",
        "task 42: succeeded after 1 attempt",
    ]
    assert "\r" not in out.getvalue()


def test_why_it_is_queued_is_said_when_it_changes_not_when_its_numbers_do() -> None:
    said = {
        1: ["no live node serves plugin 'demo' (last seen 12 s ago on n1)"],
        2: ["no live node serves plugin 'demo' (last seen 14 s ago on n1)"],
        3: ["its concurrency cap is full: 2 of 2 running (key 'k')"],
    }
    client = Replay([make_task()] * 8 + [DONE], reasons=lambda n: said.get(n, said[3]))
    f, out = follower(client, live=False)
    f.follow(42)
    assert out.getvalue().splitlines() == [
        "task 42: demo.tasks:sleep (plugin demo): queued",
        "task 42: still queued: no live node serves plugin 'demo' (last seen 12 s ago on n1)",
        "task 42: still queued: its concurrency cap is full: 2 of 2 running (key 'k')",
        "task 42: attempt 1 claimed by n1 (dc1), token 4294967297",
        "task 42: succeeded after 1 attempt",
    ]
    # Polled every second, asked why every REASONS_EVERY seconds.
    assert client.reason_calls == pytest.approx(8 / REASONS_EVERY, abs=1)


def test_a_due_task_nothing_stands_in_the_way_of_gets_a_note_after_a_while() -> None:
    f, out = follower(Replay([make_task()] * 10 + [DONE]), live=False)
    f.follow(42)
    notes = [line for line in out.getvalue().splitlines() if "still queued" in line]
    assert notes == [
        "task 42: still queued: due, but unclaimed: the nodes that serve it may all be busy"
    ]


def test_a_terminal_gets_a_line_redrawn_in_place_and_cleared_at_the_end() -> None:
    f, out = follower(Replay([make_task(), progress(0.5, "half way"), DONE]), live=True)
    f.follow(42)
    text = out.getvalue()
    assert "\r\x1b[Ktask 42 queued" in text
    assert "\r\x1b[Ktask 42 running [" in text and "50% half way  attempt 1 on n1" in text
    # Each change is printed on a cleared line, and nothing is left drawn at the end.
    assert "\r\x1b[Ktask 42: attempt 1 claimed by n1" in text
    assert text.endswith("task 42: succeeded after 1 attempt\n")


def test_a_timeout_clears_the_line_and_says_where_it_stopped() -> None:
    f, out = follower(Replay([make_task()]), live=True)
    with pytest.raises(WaitTimeoutError, match="task 42 is still queued after 3 s"):
        f.follow(42, timeout=3)
    assert out.getvalue().endswith("\r\x1b[K")


@pytest.mark.parametrize("live", [True, False])
def test_ctrl_c_stops_following_with_the_last_state_seen(live: bool) -> None:
    f, out = follower(Replay([make_task(), RUNNING, KeyboardInterrupt()]), live=live)  # type: ignore[list-item]
    with pytest.raises(Interrupted) as stopped:
        f.follow(42)
    assert stopped.value.task_id == 42 and stopped.value.state is TaskState.RUNNING
    if live:
        assert out.getvalue().endswith("\r\x1b[K")
