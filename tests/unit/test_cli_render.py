"""What `taskman wait` says between two reads of a task, and the line a terminal redraws."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from taskman.cli.render import bar, changes, clip, finished, status_line
from taskman.states import Outcome, TaskState
from tests.unit.task_factory import NOW, make_attempt, make_task

QUEUED = make_task()
RUNNING_1 = make_task(
    state=TaskState.RUNNING,
    attempt=1,
    owner="dc1-node1",
    fence=0x1_0000_0001,
    attempts=(make_attempt(1),),
)


def test_the_first_read_names_the_task_and_its_state() -> None:
    assert changes(None, QUEUED, NOW) == ["demo.tasks:sleep (plugin demo): queued"]
    pinned = make_task(plugin_version="1.0", datacenter="dc2")
    assert changes(None, pinned, NOW) == [
        "demo.tasks:sleep (plugin demo 1.0, datacenter dc2): queued"
    ]
    assert changes(None, RUNNING_1, NOW) == [
        "demo.tasks:sleep (plugin demo): running",
        "attempt 1 claimed by dc1-node1 (dc1), token 4294967297",
    ]


def test_nothing_new_says_nothing() -> None:
    assert changes(QUEUED, QUEUED, NOW) == []
    progressed = dataclasses.replace(RUNNING_1, progress=0.5, progress_message="half")
    assert changes(RUNNING_1, progressed, NOW) == []  # progress is the bar's, not a change


def test_a_claim() -> None:
    assert changes(QUEUED, RUNNING_1, NOW) == [
        "attempt 1 claimed by dc1-node1 (dc1), token 4294967297"
    ]


def test_a_failure_that_will_be_retried_says_when() -> None:
    failed = make_attempt(1, Outcome.ERROR, error_type="ValueError", error_message="boom\nmore")
    after = make_task(
        attempt=1, failures=1, run_after=NOW + timedelta(seconds=3.2), attempts=(failed,)
    )
    assert changes(RUNNING_1, after, NOW) == ["attempt 1 failed: ValueError: boom; retrying in 4 s"]


def test_a_reclaim_and_a_fenced_attempt_go_back_in_line() -> None:
    lost = make_attempt(
        1, Outcome.NODE_LOST, error_message="owner dc1-node1 lost its ZooKeeper session"
    )
    back = make_task(attempt=1, reclaims=1, run_after=NOW - timedelta(minutes=1), attempts=(lost,))
    assert changes(RUNNING_1, back, NOW) == [
        "attempt 1 reclaimed: owner dc1-node1 lost its ZooKeeper session; back in the queue"
    ]
    fenced = make_attempt(
        1, Outcome.FENCED, error_message="the node stopped the runner (killed by SIGKILL)"
    )
    back = make_task(attempt=1, reclaims=1, attempts=(fenced,))
    assert changes(RUNNING_1, back, NOW) == [
        "attempt 1 fenced: node dc1-node1 gave it up (the node stopped the runner (killed by "
        "SIGKILL)); back in the queue"
    ]


def test_attempts_that_came_and_went_between_two_reads_are_all_told() -> None:
    attempts = (
        make_attempt(1, Outcome.CRASHED, error_type="RunnerCrashed", error_message="died"),
        make_attempt(2, Outcome.HEARTBEAT_TIMEOUT, node="dc2-node1", datacenter="dc2"),
        make_attempt(3, node="dc1-node2"),
    )
    after = make_task(state=TaskState.RUNNING, attempt=3, owner="dc1-node2", attempts=attempts)
    assert changes(RUNNING_1, after, NOW) == [
        "attempt 1 crashed: RunnerCrashed: died",
        "attempt 2 claimed by dc2-node1 (dc2), token 4294967298",
        "attempt 2 reclaimed: heartbeat_timeout",
        "attempt 3 claimed by dc1-node2 (dc1), token 4294967299",
    ]


def test_an_abort_request_and_the_end() -> None:
    asked = dataclasses.replace(RUNNING_1, abort_requested=True)
    assert changes(RUNNING_1, asked, NOW) == ["abort requested: its node is stopping it"]
    aborted = dataclasses.replace(
        asked,
        state=TaskState.ABORTED,
        error_type="Aborted",
        error_message="aborted on request",
        attempts=(make_attempt(1, Outcome.ABORTED, error_type="Aborted"),),
    )
    assert changes(asked, aborted, NOW) == [
        "attempt 1 was aborted: Aborted",
        "aborted: aborted on request",
    ]


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        (
            {
                "state": TaskState.SUCCEEDED,
                "attempt": 1,
                "finished_at": NOW + timedelta(seconds=12),
            },
            "succeeded in 12 s after 1 attempt",
        ),
        ({"state": TaskState.SUCCEEDED, "attempt": 2}, "succeeded after 2 attempts"),
        (
            {
                "state": TaskState.FAILED,
                "error_type": "PluginError",
                "error_message": "no live node has plugin 'nope' installed",
                "finished_at": NOW + timedelta(minutes=5),
            },
            "failed in 5 min: PluginError: no live node has plugin 'nope' installed",
        ),
        ({"state": TaskState.EXPIRED}, "expired: it had not started by its not_after"),
        ({"state": TaskState.ABORTED}, "aborted"),
    ],
)
def test_how_a_task_ended(fields: dict[str, object], line: str) -> None:
    assert finished(make_task(**fields)) == line


def test_the_end_is_said_once() -> None:
    done = make_task(
        state=TaskState.SUCCEEDED, attempt=1, attempts=(make_attempt(1, Outcome.SUCCEEDED),)
    )
    assert changes(RUNNING_1, done, NOW) == ["succeeded after 1 attempt"]
    assert changes(done, done, NOW) == []
    assert changes(None, done, NOW) == [
        "demo.tasks:sleep (plugin demo): succeeded",
        "succeeded after 1 attempt",
    ]


def test_bars() -> None:
    assert bar(0.0, 10) == "[..........]"
    assert bar(0.45, 10) == "[####......]"
    assert bar(1.0, 10) == "[##########]"
    assert bar(7.0, 4) == "[####]" and bar(-1.0, 4) == "[....]"  # task code may report anything
    # Unknown progress bounces a three-cell block from end to end.
    frames = {bar(None, 6, tick) for tick in range(12)}
    assert "[===...]" in frames and "[...===]" in frames
    assert all(len(f) == 8 and f.count("=") == 3 for f in frames)


def test_the_status_line_of_a_running_task_fits_the_terminal() -> None:
    task = dataclasses.replace(RUNNING_1, progress=0.45, progress_message="chunk 9 of 20")
    line = status_line(task, width=100, elapsed=12.3, reasons=[])
    assert line.startswith("task 42 running [")
    assert "45% chunk 9 of 20  attempt 1 on dc1-node1  12 s" in line
    assert len(line) <= 99
    for width in (10, 40, 60):
        assert len(status_line(task, width=width, elapsed=1, reasons=[])) <= width - 1


def test_the_status_line_of_a_queued_task_says_why() -> None:
    line = status_line(QUEUED, width=120, elapsed=3, reasons=[], tick=1)
    assert line == "task 42 queued / waiting for a node to claim it  3 s"
    reasons = ["no live node serves plugin 'demo' (last seen 5 min ago on a)", "other"]
    line = status_line(QUEUED, width=120, elapsed=3, reasons=reasons)
    assert line == (
        "task 42 queued | no live node serves plugin 'demo' (last seen 5 min ago on a) (+1)  3 s"
    )


def test_clip() -> None:
    assert clip("abcdef", 10) == "abcdef"
    assert clip("abcdef", 4) == "abc~"
    assert clip("abcdef", 0) == ""
