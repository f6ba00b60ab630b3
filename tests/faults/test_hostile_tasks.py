"""Guarantee 9: task code cannot break the node (real nodes, MariaDB and ZooKeeper).

Each hostile task of tests/faults/plugins/hostile runs on a real node. Afterwards the
node still serves (it is alive and runs a normal task), the attempt ended terminal
with its reason recorded, and no process the task started outlives the attempt:
the task writes their pids to a file, checked in /proc once the outcome is recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman import Client, Task, TaskState
from taskman.lab.nodes import NodeProcess
from tests.integration.cluster_support import pid_alive, wait_state, wait_until
from tests.integration.conftest import StartNode

pytestmark = [pytest.mark.integration, pytest.mark.faults]

HOSTILE = Path(__file__).with_name("plugins") / "hostile"
TERMINAL = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.ABORTED)


def plugin_dirs(tmp_path: Path, *, fork: bool) -> list[str]:
    """The hostile plugin, as is (zygote forks) or with ``fork = false`` (fresh interpreters)."""
    if fork:
        return [str(HOSTILE.parent)]
    target = tmp_path / "plugins-cold"
    if not target.exists():
        shutil.copytree(HOSTILE, target / "hostile")
        manifest = target / "hostile" / "plugin.toml"
        lines = manifest.read_text().splitlines()
        first_key = next(i for i, line in enumerate(lines) if line.startswith("name"))
        lines.insert(first_key, "fork = false")
        manifest.write_text("\n".join(lines) + "\n")
    return [str(target)]


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """Where tasks record their descendants; any survivor is killed after the test."""
    path = tmp_path / "descendants.txt"
    yield path
    for pid in recorded(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def recorded(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def wait_terminal(client: Client, task_id: int, timeout: float = 20.0) -> Task:
    def check() -> Task | None:
        task = client.get(task_id)
        return task if task.state in TERMINAL else None

    return wait_until(check, timeout, f"task {task_id} to end")  # type: ignore[no-any-return]


def assert_no_survivors(path: Path, expected: int) -> None:
    pids = recorded(path)
    assert len(pids) == expected, f"the task recorded {pids}"
    # The outcome is recorded only after the attempt's processes are gone; a moment's
    # grace for the kernel to finish a SIGKILL already sent.
    wait_until(
        lambda: not [p for p in pids if pid_alive(p)],
        1.0,
        f"descendants {[p for p in pids if pid_alive(p)]} of the attempt to die",
    )


def assert_serving(node: NodeProcess, client: Client) -> None:
    task_id = client.submit("hostile.tasks:ok", plugin="hostile", args=["after"])
    assert wait_state(client, task_id, TaskState.SUCCEEDED, timeout=15).result == "after"
    assert node.alive


def assert_clean_text(*values: str | None) -> None:
    """Text any database column, JSON encoder and terminal accepts."""
    for value in values:
        assert value is not None
        value.encode("utf-8")  # no lone surrogates
        assert "\x00" not in value


# -- processes the task leaves behind -----------------------------------------------------


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "cold"])
@pytest.mark.parametrize("function", ["fork_and_raise", "mp_fork_and_raise"])
def test_a_task_that_forks_and_raises_fails_once_and_leaves_nothing(
    start_node: StartNode,
    client: Client,
    tmp_path: Path,
    pid_file: Path,
    fork: bool,
    function: str,
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=fork))
    task_id = client.submit(
        f"hostile.tasks:{function}", plugin="hostile", args=[str(pid_file)], max_attempts=1
    )
    task = wait_terminal(client, task_id, timeout=15)
    assert task.state is TaskState.FAILED
    assert task.error_type == "RuntimeError" and "then failed" in (task.error_message or "")
    assert task.attempt == 1 and task.reclaims == 0
    assert_no_survivors(pid_file, 1)
    assert_serving(node, client)


def test_a_forked_copy_of_the_task_never_reports(
    start_node: StartNode, client: Client, tmp_path: Path, pid_file: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit(
        "hostile.tasks:fork_and_return_twice", plugin="hostile", args=[str(pid_file)]
    )
    task = wait_terminal(client, task_id, timeout=15)
    (runner,) = recorded(pid_file)
    assert task.state is TaskState.SUCCEEDED and task.result == runner
    assert len(task.attempts) == 1
    assert_serving(node, client)


@pytest.mark.parametrize(
    ("function", "result"),
    [("daemonise", "daemonised"), ("spawn_and_return", "spawned"), ("setsid_escape", "escaped")],
)
def test_a_task_that_leaves_children_succeeds_without_them(
    start_node: StartNode,
    client: Client,
    tmp_path: Path,
    pid_file: Path,
    function: str,
    result: str,
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit(f"hostile.tasks:{function}", plugin="hostile", args=[str(pid_file)])
    task = wait_terminal(client, task_id, timeout=15)
    assert task.state is TaskState.SUCCEEDED and task.result == result
    assert_no_survivors(pid_file, 1)
    assert_serving(node, client)


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "cold"])
def test_a_runner_that_exits_abruptly_takes_its_children_along(
    start_node: StartNode, client: Client, tmp_path: Path, pid_file: Path, fork: bool
) -> None:
    # The runner cannot clean up after os._exit: its orphans come to the node (a child
    # subreaper), which must know them as the attempt's.
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=fork))
    task_id = client.submit(
        "hostile.tasks:spawn_and_exit", plugin="hostile", args=[str(pid_file)], max_attempts=1
    )
    task = wait_terminal(client, task_id, timeout=15)
    assert task.state is TaskState.FAILED and task.error_type == "RunnerCrashed"
    assert "exited with status 0" in (task.error_message or "")
    assert_no_survivors(pid_file, 2)
    assert_serving(node, client)


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "cold"])
def test_orphans_the_node_never_saw_still_die_with_the_attempt(
    start_node: StartNode, client: Client, tmp_path: Path, pid_file: Path, fork: bool
) -> None:
    # Found by the soak: the node frozen (a VM stall, SIGSTOP) while the task starts
    # children and its runner exits abruptly. The node never saw them below the
    # runner; the one in a session of its own came to the node and lived on.
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=fork))
    cue = tmp_path / "cue"
    task_id = client.submit(
        "hostile.tasks:spawn_on_cue_and_exit",
        plugin="hostile",
        args=[str(pid_file), str(cue)],
        max_attempts=1,
    )
    wait_until(lambda: Path(f"{cue}.waiting").exists(), 15, "the task to start")
    node.pause()
    try:
        cue.touch()
        wait_until(lambda: len(recorded(pid_file)) == 2, 5, "the task's children")
        time.sleep(0.3)  # the runner is gone; still short of its watchdog
    finally:
        node.resume()
    task = wait_terminal(client, task_id, timeout=15)
    assert task.state is TaskState.FAILED and task.error_type == "RunnerCrashed"
    assert_no_survivors(pid_file, 2)
    assert_serving(node, client)


@pytest.mark.parametrize("how", ["abort", "timeout"])
def test_a_task_that_ignores_sigterm_is_still_stopped(
    start_node: StartNode, client: Client, tmp_path: Path, pid_file: Path, how: str
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit(
        "hostile.tasks:ignore_sigterm",
        plugin="hostile",
        args=[str(pid_file)],
        max_attempts=1,
        timeout=1.5 if how == "timeout" else None,
    )
    wait_until(lambda: recorded(pid_file), 15, "the task to start its child")
    if how == "abort":
        client.abort(task_id)
    task = wait_terminal(client, task_id, timeout=15)  # SIGKILL after kill_grace (2 s)
    if how == "abort":
        assert task.state is TaskState.ABORTED and task.error_type == "Aborted"
    else:
        assert task.state is TaskState.FAILED and task.error_type == "Timeout"
    assert_no_survivors(pid_file, 1)
    assert_serving(node, client)


def test_a_task_that_closes_every_descriptor_ends_with_a_reason(
    start_node: StartNode, client: Client, tmp_path: Path, pid_file: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit(
        "hostile.tasks:close_all_fds", plugin="hostile", args=[str(pid_file)], max_attempts=1
    )
    task = wait_terminal(client, task_id, timeout=15)
    # It can no longer report: the runner notices its socket is gone and exits.
    assert task.state is TaskState.FAILED and task.error_type == "RunnerCrashed"
    assert task.error_message
    assert_no_survivors(pid_file, 1)
    assert_serving(node, client)


def test_megabytes_of_output_keep_only_a_clean_tail(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit("hostile.tasks:loud", plugin="hostile", args=[8])
    task = wait_terminal(client, task_id, timeout=15)
    assert task.state is TaskState.SUCCEEDED and task.result == "loud"
    tail = task.attempts[-1].output_tail
    assert_clean_text(tail)
    assert tail is not None and "noise" in tail and len(tail) <= 64 * 1024
    assert_serving(node, client)


def test_an_atexit_handler_cannot_hold_the_attempt(
    start_node: StartNode, client: Client, tmp_path: Path, pid_file: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit("hostile.tasks:exit_in_atexit", plugin="hostile", args=[str(pid_file)])
    task = wait_terminal(client, task_id, timeout=10)
    # The runner ends with os._exit: a handler that ran would hang it for 300 s.
    assert task.state is TaskState.SUCCEEDED and task.result == "registered"
    assert_no_survivors(pid_file, len(recorded(pid_file)))
    assert_serving(node, client)


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "cold"])
def test_the_nodes_death_kills_the_attempts_grandchildren(
    start_node: StartNode, client: Client, tmp_path: Path, pid_file: Path, fork: bool
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=fork))
    client.submit("hostile.tasks:spawn_and_sleep", plugin="hostile", args=[str(pid_file)])
    wait_until(lambda: len(recorded(pid_file)) == 2, 15, "the task to start its children")
    pids = recorded(pid_file)
    assert all(pid_alive(p) for p in pids)
    node.kill()
    wait_until(
        lambda: not [p for p in pids if pid_alive(p)],
        5,
        f"grandchildren {[p for p in pids if pid_alive(p)]} to die with the node",
    )


# -- strings no column accepts --------------------------------------------------------------


def test_a_result_with_lone_surrogates_and_nul_is_stored_readably(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task = wait_terminal(
        client, client.submit("hostile.tasks:return_bad_strings", plugin="hostile")
    )
    assert task.state is TaskState.SUCCEEDED
    # Readable by any JSON consumer: no lone surrogate survives; the rest of the text does.
    json.dumps(task.result, ensure_ascii=False).encode("utf-8")
    assert "name" in task.result["value"] and "end" in task.result["value"]
    assert_serving(node, client)


def test_an_exception_with_lone_surrogates_and_nul_is_recorded(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit("hostile.tasks:raise_bad_strings", plugin="hostile", max_attempts=1)
    task = wait_terminal(client, task_id)
    assert task.state is TaskState.FAILED
    attempt = task.attempts[-1]
    assert_clean_text(task.error_type, task.error_message, attempt.traceback)
    assert "BadError" in (task.error_type or "").replace("\\udcff", "")
    assert "name" in (task.error_message or "") and "end" in (task.error_message or "")
    assert_serving(node, client)


def test_a_progress_message_with_lone_surrogates_does_not_kill_the_node(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit("hostile.tasks:progress_bad_strings", plugin="hostile")
    wait_until(lambda: client.get(task_id).progress == 0.5, 10, "the progress to be written")
    assert_clean_text(client.get(task_id).progress_message)
    task = wait_terminal(client, task_id)
    assert task.state is TaskState.SUCCEEDED and task.result == "progressed"
    assert_serving(node, client)


def test_garbage_on_the_runner_socket_changes_nothing(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task = wait_terminal(client, client.submit("hostile.tasks:raw_messages", plugin="hostile"))
    # Not even a forged {"t": "exit"}: only the runner's real exit ends the attempt.
    assert task.state is TaskState.SUCCEEDED and task.result == "survived"
    assert task.progress is None or 0.0 <= task.progress <= 1.0
    assert_serving(node, client)


def test_an_oversized_message_ends_only_its_attempt(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugin_dirs(tmp_path, fork=True))
    task_id = client.submit(
        "hostile.tasks:oversized_message", plugin="hostile", args=[12], max_attempts=1
    )
    task = wait_terminal(client, task_id)
    assert task.state is TaskState.FAILED and task.error_type == "ProtocolError"
    assert "MiB" in (task.error_message or "")
    assert_serving(node, client)


# -- embedded mode (SQLite, one process) ----------------------------------------------------


def test_embedded_mode_survives_hostile_tasks(tmp_path: Path, pid_file: Path) -> None:
    from taskman.lab import free_port
    from tests.integration.test_embedded import Dev

    dev = Dev(tmp_path / "dev.sqlite3", free_port(), plugins=(str(HOSTILE.parent),))
    try:
        with Client(f"sqlite:///{dev.db}") as client:
            progress = client.submit("hostile.tasks:progress_bad_strings", plugin="hostile")
            raised = client.submit(
                "hostile.tasks:raise_bad_strings", plugin="hostile", max_attempts=1
            )
            returned = client.submit("hostile.tasks:return_bad_strings", plugin="hostile")
            forked = client.submit(
                "hostile.tasks:fork_and_raise",
                plugin="hostile",
                args=[str(pid_file)],
                max_attempts=1,
            )
            spawned = client.submit(
                "hostile.tasks:spawn_and_return", plugin="hostile", args=[str(pid_file)]
            )
            assert wait_terminal(client, progress).state is TaskState.SUCCEEDED
            failed = wait_terminal(client, raised)
            assert failed.state is TaskState.FAILED
            assert_clean_text(failed.error_type, failed.error_message)
            result = wait_terminal(client, returned).result
            json.dumps(result, ensure_ascii=False).encode("utf-8")
            assert wait_terminal(client, forked).error_type == "RuntimeError"
            assert wait_terminal(client, spawned).state is TaskState.SUCCEEDED
            assert_no_survivors(pid_file, 2)
            after = client.submit("hostile.tasks:ok", plugin="hostile", args=["after"])
            assert wait_state(client, after, TaskState.SUCCEEDED, timeout=15).result == "after"
        assert dev.process.poll() is None
    finally:
        dev.stop()
