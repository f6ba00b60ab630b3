"""Pooled runners (runner/pool.py): warm processes that run attempts one after another.

Real runner processes (forked from a zygote, or cold); no database or ZooKeeper.
Each attempt keeps its own outcome, output and stop: what ends one attempt ends
only that attempt, and a process the node signalled is never reused.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskman.models import AttemptCall
from taskman.plugins import EXAMPLES_DIR, PluginRegistry
from taskman.runner import PooledAttempt, RunnerEvent, RunnerPool, RunnerSpec
from taskman.runner.pool import pool_key

HOSTILE = Path(__file__).resolve().parents[1] / "faults" / "plugins"


@pytest.fixture
def pool() -> Iterator[RunnerPool]:
    p = RunnerPool(log=lambda *a, **k: None)
    try:
        yield p
    finally:
        p.close()


_fences = iter(range(1000, 10**9))


def spec(
    function: str,
    args: list[Any] | None = None,
    *,
    plugin: str = "demo",
    fork: bool = True,
    task_id: int = 1,
    **extra: Any,
) -> RunnerSpec:
    found = PluginRegistry.scan([EXAMPLES_DIR, HOSTILE]).resolve(plugin, None)
    fence = next(_fences)
    return RunnerSpec(
        call=AttemptCall(task_id, 1, fence, function, args or [], {}),
        python=found.python,
        sys_path=list(found.sys_path),
        env=dict(found.env),
        cwd=str(found.directory),
        heartbeat_interval=0.25,
        fork=fork,
        pooled=True,
        **{"watchdog_timeout": 30.0, **extra},
    )


def run(
    pool: RunnerPool, runner_spec: RunnerSpec
) -> tuple[PooledAttempt, dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """Launch one pooled attempt and wait for its exit: (attempt, exit, final, all messages)."""
    events: queue.Queue[RunnerEvent] = queue.Queue()
    attempt = PooledAttempt(runner_spec, events, pool)
    attempt.launch()
    exit_message, final, seen = wait_exit(attempt, events)
    return attempt, exit_message, final, seen


def wait_exit(
    attempt: PooledAttempt, events: queue.Queue[RunnerEvent], *, timeout: float = 20.0
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    final = None
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        assert event.runner is attempt
        seen.append(event.message)
        kind = event.message.get("t")
        if kind in ("result", "error"):
            final = event.message
        elif kind == "exit":
            attempt.kill()  # as the node does on every exit: a no-op once the attempt is over
            attempt.close()
            return event.message, final, seen


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "cold"])
def test_attempts_run_one_after_another_in_one_process(pool: RunnerPool, fork: bool) -> None:
    pids = set()
    for n in range(5):
        the_spec = spec("demo.tasks:whoami", fork=fork, task_id=n + 1)
        _attempt, exit_message, final, seen = run(pool, the_spec)
        assert exit_message == {"t": "exit", "code": 0}
        assert final is not None and final["t"] == "result"
        assert final["value"]["task_id"] == n + 1
        assert final["value"]["fence"] == the_spec.call.fence  # the runtime is bound per attempt
        assert seen[0]["t"] == "ready"
        pids.add(final["value"]["pid"])
    assert len(pids) == 1
    assert pool.idle_count() == 1


def test_a_crash_ends_only_its_attempt_and_the_next_gets_a_new_process(
    pool: RunnerPool,
) -> None:
    _, _, first, _ = run(pool, spec("demo.tasks:whoami"))
    assert first is not None
    _, exit_message, final, _ = run(pool, spec("demo.tasks:crash"))
    assert exit_message["code"] not in (0, None)  # the process died: the attempt with it
    assert final is None
    _, exit_message, after, _ = run(pool, spec("demo.tasks:whoami"))
    assert exit_message["code"] == 0
    assert after is not None and after["value"]["pid"] != first["value"]["pid"]


def test_errors_end_the_attempt_and_keep_the_process(pool: RunnerPool) -> None:
    _, _, first, _ = run(pool, spec("demo.tasks:whoami"))
    _, exit_message, final, _ = run(pool, spec("demo.tasks:fail", ["boom"]))
    assert exit_message["code"] == 0
    assert final is not None and final["t"] == "error" and final["message"] == "boom"
    _, _, after, _ = run(pool, spec("demo.tasks:whoami"))
    assert first is not None and after is not None
    assert after["value"]["pid"] == first["value"]["pid"]


def test_a_killed_attempt_ends_alone_and_its_process_is_never_reused(pool: RunnerPool) -> None:
    events_a: queue.Queue[RunnerEvent] = queue.Queue()
    events_b: queue.Queue[RunnerEvent] = queue.Queue()
    slow_a = PooledAttempt(spec("demo.tasks:sleep", [30]), events_a, pool)
    slow_b = PooledAttempt(spec("demo.tasks:sleep", [1.0]), events_b, pool)
    slow_a.launch()
    slow_b.launch()
    assert events_a.get(timeout=20).message["t"] == "ready"
    assert slow_a.process is not None and slow_b.process is not None
    killed_pid = slow_a.process.pid
    slow_a.kill()  # as for a timeout
    exit_a, final_a, _ = wait_exit(slow_a, events_a)
    assert exit_a["code"] == -9 and final_a is None
    exit_b, final_b, _ = wait_exit(slow_b, events_b)  # the other attempt is untouched
    assert exit_b["code"] == 0 and final_b is not None and final_b["t"] == "result"
    for _ in range(3):
        _, _, final, _ = run(pool, spec("demo.tasks:whoami"))
        assert final is not None and final["value"]["pid"] != killed_pid


def test_abort_reaches_only_its_own_attempt(pool: RunnerPool) -> None:
    events: queue.Queue[RunnerEvent] = queue.Queue()
    first = PooledAttempt(spec("demo.tasks:sleep", [0.3]), events, pool)
    first.launch()
    wait_exit(first, events)
    first.request_abort()  # late: the attempt it names is over
    _, exit_message, final, _ = run(pool, spec("demo.tasks:sleep", [0.5]))
    assert exit_message["code"] == 0
    assert final is not None and final["t"] == "result"  # not stopped by the stale abort


def test_recycled_after_max_tasks_per_runner(pool: RunnerPool) -> None:
    pids = []
    for _ in range(5):
        _, _, final, _ = run(pool, spec("demo.tasks:whoami", max_tasks_per_runner=2))
        assert final is not None
        pids.append(final["value"]["pid"])
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_recycled_when_an_attempt_leaves_it_over_its_memory_ceiling(pool: RunnerPool) -> None:
    ceiling: dict[str, Any] = {"plugin": "hostile", "max_runner_memory_mb": 64}
    _, _, first, _ = run(pool, spec("hostile.tasks:pid", **ceiling))
    _, _, kept, _ = run(pool, spec("hostile.tasks:pid", **ceiling))
    assert first is not None and kept is not None and first["value"] == kept["value"]
    _, exit_message, held, _ = run(pool, spec("hostile.tasks:hold_memory", [100], **ceiling))
    assert exit_message["code"] == 0 and held is not None and held["t"] == "result"
    _, _, after, _ = run(pool, spec("hostile.tasks:pid", **ceiling))
    assert after is not None and after["value"] != first["value"]


def test_each_attempt_keeps_its_own_output(pool: RunnerPool) -> None:
    first, _, _, _ = run(pool, spec("demo.tasks:chatty", [3]))
    second, _, _, _ = run(pool, spec("demo.tasks:chatty", [2]))
    assert first.output_tail() == "line 0\nline 1\nline 2\n"
    assert second.output_tail() == "line 0\nline 1\n"


def test_processes_a_task_leaves_behind_die_before_the_next_attempt(
    pool: RunnerPool, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    _, _, final, _ = run(
        pool, spec("hostile.tasks:spawn_and_return", [str(pid_file)], plugin="hostile")
    )
    assert final is not None and final["t"] == "result"
    for pid in (int(line) for line in pid_file.read_text().split()):
        assert not _alive(pid), f"process {pid} outlived its attempt"
    _, _, again, _ = run(pool, spec("hostile.tasks:pid", plugin="hostile"))
    assert again is not None and again["t"] == "result"


def test_a_task_that_ignores_sigterm_does_not_disarm_the_next_attempts_stop(
    pool: RunnerPool,
) -> None:
    run(pool, spec("demo.tasks:ignore_term", [0.1]))
    events: queue.Queue[RunnerEvent] = queue.Queue()
    attempt = PooledAttempt(spec("demo.tasks:sleep", [30]), events, pool)
    attempt.launch()
    assert events.get(timeout=20).message["t"] == "ready"
    attempt.terminate()  # SIGTERM alone: the earlier task set it to be ignored
    exit_message, final, _ = wait_exit(attempt, events, timeout=10)
    assert final is not None and final["type"] == "Terminated"
    assert exit_message["code"] == 0


def test_idle_runners_stop_with_the_pool(pool: RunnerPool) -> None:
    _, _, final, _ = run(pool, spec("demo.tasks:whoami"))
    assert final is not None
    pid = final["value"]["pid"]
    pool.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_attempts_with_other_limits_do_not_share_a_process() -> None:
    assert pool_key(spec("demo.tasks:add")) == pool_key(spec("demo.tasks:whoami"))
    assert pool_key(spec("demo.tasks:add")) != pool_key(
        spec("demo.tasks:add", limits={"memory_mb": 200})
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_idle_runner_that_died_unnoticed_costs_its_next_attempt_nothing(
    pool: RunnerPool,
) -> None:
    _, _, first, _ = run(pool, spec("demo.tasks:whoami"))
    assert first is not None
    idle_pid = first["value"]["pid"]
    os.kill(idle_pid, signal.SIGSTOP)  # it cannot answer the next spec, nor die yet
    events: queue.Queue[RunnerEvent] = queue.Queue()
    attempt = PooledAttempt(spec("demo.tasks:whoami"), events, pool)
    attempt.launch()
    assert attempt.process is not None and attempt.process.pid == idle_pid  # handed to it
    os.kill(idle_pid, signal.SIGKILL)  # dies before the attempt began
    exit_message, final, _ = wait_exit(attempt, events)
    assert exit_message["code"] == 0 and final is not None
    assert final["value"]["pid"] != idle_pid  # run by a new runner, as if nothing happened


def test_an_attempt_killed_before_it_began_is_not_run_elsewhere(pool: RunnerPool) -> None:
    _, _, first, _ = run(pool, spec("demo.tasks:whoami"))
    assert first is not None
    os.kill(first["value"]["pid"], signal.SIGSTOP)
    events: queue.Queue[RunnerEvent] = queue.Queue()
    attempt = PooledAttempt(spec("demo.tasks:whoami"), events, pool)
    attempt.launch()
    attempt.kill()  # the node stops it (a fence, an abort) before it began
    exit_message, final, _ = wait_exit(attempt, events)
    assert exit_message["code"] == -9 and final is None


def test_an_idle_runner_whose_node_went_silent_ends_itself(pool: RunnerPool) -> None:
    _, _, first, _ = run(pool, spec("demo.tasks:whoami", watchdog_timeout=1.0))
    assert first is not None
    pid = first["value"]["pid"]
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # the node's guard pings idle runners like this
        pool.ping_idle()
        time.sleep(0.2)
    assert _alive(pid)  # pinged: it waits for work well past its watchdog
    deadline = time.monotonic() + 5.0
    while _alive(pid) and time.monotonic() < deadline:  # nobody pings: a frozen node
        time.sleep(0.1)
    assert not _alive(pid)
