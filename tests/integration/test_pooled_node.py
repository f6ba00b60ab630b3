"""Pooled isolation on real nodes (MariaDB, ZooKeeper): every guarantee holds per attempt."""

from __future__ import annotations

import shutil
from pathlib import Path

from taskman import Client, TaskState
from taskman.plugins import EXAMPLES_DIR
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.conftest import StartNode


def pooled_plugins(tmp_path: Path, *extra: str, tables: str = "") -> list[str]:
    """A copy of the demo plugin with ``isolation = "pooled"`` and the given keys."""
    target = tmp_path / "plugins-pooled"
    shutil.copytree(EXAMPLES_DIR / "demo", target / "demo")
    manifest = target / "demo" / "plugin.toml"
    lines = manifest.read_text().splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("["))
    lines[first_table:first_table] = ['isolation = "pooled"', 'preload = ["demo.tasks"]', *extra]
    manifest.write_text("\n".join(lines) + "\n" + tables)
    return [str(target)]


def test_pooled_tasks_share_warm_runners_and_each_keeps_its_own_outcome(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    start_node("a", plugin_dirs=pooled_plugins(tmp_path), slots=2)
    who = [client.submit("demo.tasks:whoami", plugin="demo") for _ in range(12)]
    failing = client.submit("demo.tasks:fail", plugin="demo", args=("no",), max_attempts=1)
    crash = client.submit("demo.tasks:crash", plugin="demo", max_attempts=1)
    tasks = [wait_state(client, t, TaskState.SUCCEEDED) for t in who]
    pids = {task.result["pid"] for task in tasks}
    assert len(pids) <= 3  # two slots; a crash replaces at most one runner
    for task in tasks:
        # Bound per attempt: its own id and token, though the process ran others before.
        assert task.result["task_id"] == task.id and task.result["fence"] == task.fence
    failed = wait_state(client, failing, TaskState.FAILED)
    assert (failed.error_message or "").startswith("no (attempt 1 of 1")
    crashed = wait_state(client, crash, TaskState.FAILED)
    assert "SIGKILL" in (crashed.error_message or "")
    assert "about to crash" in (crashed.attempts[0].output_tail or "")
    after = wait_state(
        client, client.submit("demo.tasks:whoami", plugin="demo"), TaskState.SUCCEEDED
    )
    assert after.result["task_id"] == after.id


def test_a_timeout_ends_only_its_attempt_and_it_is_retried_in_a_fresh_runner(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    start_node("a", plugin_dirs=pooled_plugins(tmp_path), slots=3)
    slow = client.submit(
        "demo.tasks:sleep", plugin="demo", args=(30.0,), timeout=1.0, max_attempts=2
    )
    steady = client.submit("demo.tasks:sleep", plugin="demo", args=(3.0,))
    timed_out = wait_state(client, slow, TaskState.FAILED, timeout=60)
    assert [str(a.outcome) for a in timed_out.attempts] == ["timeout", "timeout"]
    assert timed_out.attempts[0].fence < timed_out.attempts[1].fence
    assert wait_state(client, steady, TaskState.SUCCEEDED).result["slept"] == 3.0


def test_abort_stops_a_pooled_attempt(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    start_node("a", plugin_dirs=pooled_plugins(tmp_path), slots=2)
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(30.0,))
    wait_until(lambda: client.get(task_id).state is TaskState.RUNNING, 30, "running")
    client.abort(task_id)
    assert wait_state(client, task_id, TaskState.ABORTED).attempts[-1].outcome.value == "aborted"
    after = wait_state(
        client, client.submit("demo.tasks:add", plugin="demo", args=(1, 2)), TaskState.SUCCEEDED
    )
    assert after.result == 3


def test_functions_can_opt_out_and_cpu_limits_run_in_a_process_of_their_own(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    plugins = pooled_plugins(
        tmp_path, tables='\n[isolation_by_function]\n"demo.tasks:whoami" = "process"\n'
    )
    start_node("a", plugin_dirs=plugins, slots=1)
    own = [client.submit("demo.tasks:whoami", plugin="demo") for _ in range(3)]
    assert len({wait_state(client, t, TaskState.SUCCEEDED).result["pid"] for t in own}) == 3
    burn = client.submit(
        "demo.tasks:burn_cpu",
        plugin="demo",
        args=(30.0,),
        limits={"cpu_seconds": 1},
        max_attempts=1,
    )
    assert wait_state(client, burn, TaskState.FAILED, timeout=60).error_type is not None
