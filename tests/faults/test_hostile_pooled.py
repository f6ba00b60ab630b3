"""Hostile task code in pooled runners (plugin hostile-pooled): a warm runner that runs
attempts one after another must contain each attempt as a fresh process would.

Every task ends terminal with its reason, nothing it started outlives it, and
the next attempt in the same pool runs normally.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman import Client, Task, TaskState
from tests.integration.cluster_support import pid_alive, wait_state, wait_until
from tests.integration.conftest import StartNode

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PLUGINS = Path(__file__).with_name("plugins")  # hostile and hostile-pooled
TERMINAL = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.ABORTED)

# function, (state, error type or result) it must end with, submit options
CASES: list[tuple[str, tuple[TaskState, str | None], dict[str, object]]] = [
    ("fork_and_raise", (TaskState.FAILED, "RuntimeError"), {}),
    ("mp_fork_and_raise", (TaskState.FAILED, "RuntimeError"), {}),
    ("fork_and_return_twice", (TaskState.SUCCEEDED, None), {}),
    ("daemonise", (TaskState.SUCCEEDED, None), {}),
    ("spawn_and_return", (TaskState.SUCCEEDED, None), {}),
    ("setsid_escape", (TaskState.SUCCEEDED, None), {}),
    ("spawn_and_exit", (TaskState.FAILED, "RunnerCrashed"), {}),
    ("close_all_fds", (TaskState.FAILED, "RunnerCrashed"), {}),
    ("ignore_sigterm", (TaskState.FAILED, "Timeout"), {"timeout": 1.5}),
]


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "descendants.txt"
    yield path
    for pid in _recorded(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _recorded(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _terminal(client: Client, task_id: int) -> Task:
    def check() -> Task | None:
        task = client.get(task_id)
        return task if task.state in TERMINAL else None

    return wait_until(check, 20, f"task {task_id} to end")  # type: ignore[no-any-return]


def _runner_pid(client: Client) -> int:
    task_id = client.submit("hostile.tasks:pid", plugin="hostile-pooled")
    return int(wait_state(client, task_id, TaskState.SUCCEEDED, timeout=15).result)


@pytest.mark.parametrize(("function", "expected", "options"), CASES, ids=[c[0] for c in CASES])
def test_hostile_tasks_in_a_pooled_runner_end_alone_and_leave_nothing(
    start_node: StartNode,
    client: Client,
    pid_file: Path,
    function: str,
    expected: tuple[TaskState, str | None],
    options: dict[str, object],
) -> None:
    start_node("a", plugin_dirs=[str(PLUGINS)], slots=1)
    before = _runner_pid(client)
    task_id = client.submit(
        f"hostile.tasks:{function}",
        plugin="hostile-pooled",
        args=[str(pid_file)],
        max_attempts=1,
        **options,  # type: ignore[arg-type]
    )
    task = _terminal(client, task_id)
    state, kind = expected
    assert task.state is state, (task.error_type, task.error_message)
    assert len(task.attempts) == 1
    if kind is not None:
        assert task.error_type == kind and task.error_message
    pids = _recorded(pid_file)
    assert pids, "the task recorded no process"
    wait_until(lambda: not [p for p in pids if pid_alive(p) and p != before], 2.0, "survivors")
    after = _runner_pid(client)
    if state is TaskState.SUCCEEDED or kind == "RuntimeError":
        assert after == before  # the task's own ending: its runner runs the next attempt
    else:
        assert after != before  # a runner it broke or the node stopped is never reused


def test_embedded_mode_runs_pooled_tasks_in_warm_runners(tmp_path: Path, pid_file: Path) -> None:
    from taskman.lab import free_port
    from tests.integration.test_embedded import Dev

    dev = Dev(tmp_path / "dev.sqlite3", free_port(), plugins=(str(PLUGINS),))
    try:
        with Client(f"sqlite:///{dev.db}") as client:
            runners = {_runner_pid(client) for _ in range(4)}
            assert len(runners) == 1  # one after another: one warm runner ran them all
            forked = client.submit(
                "hostile.tasks:fork_and_raise",
                plugin="hostile-pooled",
                args=[str(pid_file)],
                max_attempts=1,
            )
            assert _terminal(client, forked).error_type == "RuntimeError"
            pids = _recorded(pid_file)
            wait_until(lambda: not [p for p in pids if pid_alive(p)], 2.0, "survivors")
            assert _runner_pid(client) in runners  # its own error: the runner stays
        assert dev.process.poll() is None
    finally:
        dev.stop()
