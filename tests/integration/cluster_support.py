"""Helpers for tests that run real nodes against the session's MariaDB and ZooKeeper."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskman import Client, Task, TaskState

# Short timeouts keep the tests quick while keeping every ratio of the defaults.
# Every test cluster authenticates to ZooKeeper; its znodes are closed to other clients.
ZK_AUTH = "taskman:zk-test-secret-91"
FAST_NODE = {
    "zookeeper_auth": ZK_AUTH,
    "session_timeout": 4.0,
    "heartbeat_interval": 0.5,
    "poll_interval": 0.2,
    "heartbeat_timeout": 6.0,
    "kill_grace": 2.0,
    "slots": 4,
}


def wait_until(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message}")


def wait_state(client: Client, task_id: int, state: TaskState, timeout: float = 30.0) -> Task:
    def check() -> Task | None:
        task = client.get(task_id)
        return task if task.state is state else None

    return wait_until(check, timeout, f"task {task_id} to be {state.value}")  # type: ignore[no-any-return]


def read_log(path: Path) -> list[tuple[int, int, int, int, str]]:
    """Lines of demo.tasks.sleep's execution log: (task, attempt, token, pid, event)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        task, attempt, token, pid, event = line.split()
        rows.append((int(task), int(attempt), int(token), int(pid), event))
    return rows


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it yet
