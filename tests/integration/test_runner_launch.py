"""Runner.launch(): the node's loop starts runners without waiting for the fork.

Real processes (a zygote, forked and cold runners); no database or ZooKeeper.
Each test here once failed: a zygote started from a launch thread was killed by
its parent-death signal when that thread ended, and a ping sent while a runner
was starting reached the child before its spec (it exited with status 70).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskman.models import AttemptCall
from taskman.plugins import EXAMPLES_DIR, PluginRegistry
from taskman.runner import Runner, RunnerEvent, RunnerSpec, protocol
from taskman.runner.zygote import ZygotePool


@pytest.fixture
def pool() -> Iterator[ZygotePool]:
    p = ZygotePool()
    try:
        yield p
    finally:
        p.close()


def spec(task_id: int, function: str, args: list[object], *, fork: bool = True) -> RunnerSpec:
    plugin = PluginRegistry.scan([EXAMPLES_DIR]).resolve("demo", None)
    return RunnerSpec(
        call=AttemptCall(task_id, 1, task_id, function, args, {}),
        python=plugin.python,
        sys_path=list(plugin.sys_path),
        env=dict(plugin.env),
        cwd=str(plugin.directory),
        heartbeat_interval=1.0,
        watchdog_timeout=30.0,  # longer than any test here: the watchdog never decides one
        fork=fork,
        preload=("demo.tasks",),
    )


def run_to_exit(
    runner: Runner, events: queue.Queue[RunnerEvent], timeout: float = 20.0
) -> tuple[dict[str, object], dict[str, object] | None]:
    """The exit event and the result or error message of one launched runner."""
    final = None
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        assert event.runner is runner
        kind = event.message.get("t")
        if kind in ("result", "error"):
            final = event.message
        elif kind == "exit":
            return event.message, final


def test_a_zygote_started_from_a_launch_thread_outlives_that_thread(pool: ZygotePool) -> None:
    events: queue.Queue[RunnerEvent] = queue.Queue()
    zygotes = set()
    for task_id in range(1, 6):
        runner = Runner(spec(task_id, "demo.tasks:add", [task_id, 1]), events, zygotes=pool)
        runner.launch()
        exit_message, final = run_to_exit(runner, events)
        runner.close()
        assert exit_message["code"] == 0
        assert final == {"t": "result", "value": task_id + 1}
        assert runner.spawn_mode == "fork"
        time.sleep(0.05)  # the launch thread has ended by now
        (zygote,) = pool.zygotes.values()
        assert zygote.alive
        zygotes.add(zygote.pid)
    assert len(zygotes) == 1  # one zygote served them all: none was lost and replaced


def test_pings_while_a_runner_starts_never_come_before_its_spec(
    pool: ZygotePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode = protocol.encode

    def slow_spec(message: dict[str, Any]) -> bytes:
        if message.get("t") == "spec":
            time.sleep(0.05)  # widen the start-up window the pings race into
        return encode(message)

    monkeypatch.setattr(protocol, "encode", slow_spec)
    events: queue.Queue[RunnerEvent] = queue.Queue()
    for task_id in range(1, 6):
        runner = Runner(spec(task_id, "demo.tasks:add", [1, 2]), events, zygotes=pool)
        done = threading.Event()

        def ping(runner: Runner = runner, done: threading.Event = done) -> None:
            while not done.is_set():  # as the node's guard thread does, only faster
                runner.ping()

        pinger = threading.Thread(target=ping)
        pinger.start()
        runner.launch()
        try:
            exit_message, final = run_to_exit(runner, events)
        finally:
            done.set()
            pinger.join()
        runner.close()
        assert exit_message["code"] == 0, exit_message
        assert final == {"t": "result", "value": 3}


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "cold"])
def test_a_kill_sent_before_the_child_exists_is_delivered_when_it_does(
    pool: ZygotePool, fork: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawn = Runner._spawn

    def slow_spawn(self: Runner) -> None:
        time.sleep(0.3)  # a slow fork or spawn: the kill below surely comes first
        spawn(self)

    monkeypatch.setattr(Runner, "_spawn", slow_spawn)
    events: queue.Queue[RunnerEvent] = queue.Queue()
    runner = Runner(spec(1, "demo.tasks:sleep", [30], fork=fork), events, zygotes=pool)
    runner.launch()
    runner.kill()
    assert runner.pid == 0  # not started yet
    started = time.monotonic()
    exit_message, final = run_to_exit(runner, events)
    runner.close()
    assert exit_message["code"] == -signal.SIGKILL
    assert final is None
    assert time.monotonic() - started < 5  # neither the task's 30 s nor the watchdog's


def test_a_launch_that_cannot_start_reports_why_in_its_exit_event(pool: ZygotePool) -> None:
    events: queue.Queue[RunnerEvent] = queue.Queue()
    broken = spec(1, "demo.tasks:add", [1, 2], fork=False)
    broken = RunnerSpec(**{**broken.__dict__, "python": "/nonexistent/python3"})
    runner = Runner(broken, events, zygotes=pool)
    runner.launch()
    exit_message, final = run_to_exit(runner, events)
    assert exit_message["code"] is None
    assert "cannot start /nonexistent/python3" in str(exit_message["error"])
    assert final is None
    assert not runner.alive


def test_exit_status_reaches_the_waiter_while_another_thread_polls(pool: ZygotePool) -> None:
    # The node's loop polls every runner (runner.alive) while the runner's own thread
    # waits for its exit status: whichever sees the zygote's report first, both must
    # see it. (A version where the poll consumed the report left the waiter hanging.)
    events: queue.Queue[RunnerEvent] = queue.Queue()
    for task_id in range(1, 31):
        runner = Runner(spec(task_id, "demo.tasks:add", [task_id, 0]), events, zygotes=pool)
        done = threading.Event()

        def poll(runner: Runner = runner, done: threading.Event = done) -> None:
            while not done.is_set():
                _ = runner.alive

        poller = threading.Thread(target=poll)
        poller.start()
        runner.launch()
        try:
            exit_message, final = run_to_exit(runner, events, timeout=10)
        finally:
            done.set()
            poller.join()
        runner.close()
        assert exit_message["code"] == 0
        assert final == {"t": "result", "value": task_id}
