"""The cluster core against real MariaDB and ZooKeeper, with real node processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from taskman import Client, Outcome, TaskState
from taskman.plugins import EXAMPLES_DIR
from taskman.store import TaskStore
from tests.integration.cluster_support import (
    FAST_NODE,
    pid_alive,
    read_log,
    wait_state,
    wait_until,
)
from tests.integration.conftest import StartNode

SESSION = FAST_NODE["session_timeout"]


def test_two_nodes_run_200_tasks_each_exactly_once(start_node: StartNode, client: Client) -> None:
    a = start_node("a", "dc1")
    b = start_node("b", "dc2")
    ids = [client.submit("demo.tasks:add", plugin="demo", args=(i, 1)) for i in range(200)]
    for task_id in ids:
        wait_state(client, task_id, TaskState.SUCCEEDED, timeout=120)
    owners: Counter[str] = Counter()
    for i, task_id in enumerate(ids):
        task = client.get(task_id)
        assert task.result == i + 1
        assert task.attempt == 1
        assert len(task.attempts) == 1
        assert task.attempts[0].outcome is Outcome.SUCCEEDED
        assert task.attempts[0].fence == task.fence
        owners[task.attempts[0].node] += 1
    assert set(owners) == {"a", "b"}, owners
    claimed = [
        {**e, "by": name}
        for name, n in (("a", a), ("b", b))
        for e in n.events()
        if e["event"] == "task.claimed"
    ]
    assert len(claimed) == 200
    assert len({(e["task_id"], e["attempt"]) for e in claimed}) == 200
    # A token is the zxid of one ZooKeeper multi: one claim batch of one node. The
    # tasks of a batch share it; no two nodes ever hold the same one.
    holders: dict[int, set[str]] = {}
    for e in claimed:
        holders.setdefault(e["token"], set()).add(e["by"])
    assert all(len(nodes) == 1 for nodes in holders.values()), holders
    assert len(holders) > 2  # many batches, not one


def test_killed_node_work_is_reclaimed_within_the_bound(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    a = start_node("a", "dc1")
    ids = [client.submit("demo.tasks:sleep", plugin="demo", args=(4, str(log))) for _ in range(3)]
    for task_id in ids:
        wait_state(client, task_id, TaskState.RUNNING)
    wait_until(lambda: len(read_log(log)) >= 3, 10, "three runners to start")
    start_node("b", "dc2")
    first_runners = {row[3] for row in read_log(log)}
    a.kill()
    killed_at = time.time()

    recovery = []
    for task_id in ids:
        task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=40)
        first, second = task.attempts
        assert first.node == "a" and first.outcome is Outcome.NODE_LOST
        assert second.node == "b" and second.outcome is Outcome.SUCCEEDED
        assert second.fence > first.fence
        assert second.started_at is not None
        recovery.append(second.started_at.timestamp() - killed_at)
    print(
        f"\nrecovery after SIGKILL of a node: max {max(recovery):.2f} s "
        f"(session timeout {SESSION} s)"
    )
    assert max(recovery) < SESSION + 5
    # The dead node's runners died with it: none of them finished.
    rows = read_log(log)
    assert not any(pid_alive(pid) for pid in first_runners)
    done = [(task, attempt) for task, attempt, _, _, event in rows if event == "done"]
    assert sorted(done) == sorted((task_id, 2) for task_id in ids)


def test_killed_runner_is_recorded_as_crashed_and_retried(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    start_node("a")
    task_id = client.submit(
        "demo.tasks:sleep", plugin="demo", args=(3, str(log)), max_attempts=2, retry_backoff=0
    )
    start = wait_until(lambda: read_log(log), 15, "the runner to start")[0]
    os.kill(start[3], signal.SIGKILL)
    task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
    first, second = task.attempts
    assert first.outcome is Outcome.CRASHED
    assert first.error_type == "RunnerCrashed"
    assert "SIGKILL" in (first.error_message or "")
    assert second.outcome is Outcome.SUCCEEDED and second.fence > first.fence
    assert task.failures == 1


def test_zombie_owner_after_pause_changes_nothing(
    start_node: StartNode, client: Client, tmp_path: Path, dsn: str
) -> None:
    log = tmp_path / "exec.log"
    a = start_node("a", "dc1")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(6, str(log)))
    wait_state(client, task_id, TaskState.RUNNING)
    first_start = wait_until(lambda: read_log(log), 15, "the runner to start")[0]
    old_token = client.get(task_id).fence
    start_node("b", "dc2")

    a.pause()
    # While a is frozen, b reclaims the task under a larger token.
    task = wait_until(
        lambda: (t := client.get(task_id)).owner == "b" and t.state is TaskState.RUNNING and t,
        SESSION + 10,
        "b to reclaim the task",
    )
    new_token = task.fence
    assert new_token > old_token
    # a's runner killed itself when a went silent, before b's attempt started.
    assert not pid_alive(first_start[3])
    a.resume()
    a.wait_for_event("node.self_fenced", timeout=10)

    done = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
    first, second = done.attempts[0], done.attempts[-1]
    assert first.node == "a" and first.outcome is Outcome.NODE_LOST
    assert second.node == "b" and second.outcome is Outcome.SUCCEEDED
    assert done.fence == new_token
    assert done.result["fence"] == new_token
    # Nothing a wrote after waking was accepted: its token is stale everywhere.
    store = TaskStore(dsn)
    try:
        assert store.heartbeat([(task_id, old_token)])[0].fence == new_token
        assert not store.progress(task_id, old_token, 0.5, "late")
    finally:
        store.close()
    events = [(r[1], r[4]) for r in read_log(log)]
    assert (1, "done") not in events and (len(done.attempts), "done") in events


def test_leader_death_hands_the_reaper_to_another_node(
    start_node: StartNode, client: Client, tmp_path: Path, dsn: str
) -> None:
    a = start_node("a", "dc1")
    first_epoch = a.wait_for_event("leader.elected", timeout=10)["epoch"]
    b = start_node("b", "dc2")
    c = start_node("c", "dc3")
    a.kill()
    new_leader = None
    deadline = time.monotonic() + SESSION + 10
    while new_leader is None and time.monotonic() < deadline:
        for node in (b, c):
            if any(e["event"] == "leader.elected" for e in node.events()):
                new_leader = node
        time.sleep(0.1)
    assert new_leader is not None, "no node took over leadership"
    epoch = next(e["epoch"] for e in new_leader.events() if e["event"] == "leader.elected")
    assert epoch > first_epoch
    # The new leader does the reaper's work: kill the other node while it runs a task.
    worker = c if new_leader is b else b
    log = tmp_path / "exec.log"
    task_id = client.submit(
        "demo.tasks:sleep",
        plugin="demo",
        args=(3, str(log)),
        datacenter=worker.values["datacenter"],
    )
    wait_state(client, task_id, TaskState.RUNNING)
    worker.kill()
    # The task is pinned to the dead node's datacenter: it is re-queued, not lost.
    task = wait_until(
        lambda: (t := client.get(task_id)).state is TaskState.QUEUED and t,
        SESSION + 10,
        "the leader to re-queue the dead node's task",
    )
    assert task.attempts[0].outcome is Outcome.NODE_LOST
    store = TaskStore(dsn)
    try:
        rows = store.db.query("SELECT epoch, node FROM leadership WHERE name = 'reaper'")
    finally:
        store.close()
    assert rows[0]["node"] == new_leader.node_id and rows[0]["epoch"] == epoch


def test_datacenter_constraint(start_node: StartNode, client: Client) -> None:
    start_node("a", "dc1")
    start_node("b", "dc2")
    ids = [
        client.submit("demo.tasks:add", plugin="demo", args=(1, 2), datacenter="dc2")
        for _ in range(20)
    ]
    for task_id in ids:
        task = wait_state(client, task_id, TaskState.SUCCEEDED)
        assert task.attempts[0].datacenter == "dc2" and task.attempts[0].node == "b"


def test_plugin_env_path_and_versions_side_by_side(start_node: StartNode, client: Client) -> None:
    start_node("a")
    newest = client.submit("greeter:greet", plugin="greeter", args=("ann",))
    pinned = client.submit("greeter:greet", plugin="greeter", args=("bob",), version="1.0")
    who = client.submit("demo.tasks:whoami", plugin="demo")
    assert wait_state(client, newest, TaskState.SUCCEEDED).result == {
        "version": "2.0",
        "greeting": "hello from greeter 2.0, ann",
    }
    pinned_task = wait_state(client, pinned, TaskState.SUCCEEDED)
    assert pinned_task.result == {"version": "1.0", "greeting": "hello from greeter 1.0, bob"}
    assert pinned_task.attempts[0].plugin_version == "1.0"
    me = wait_state(client, who, TaskState.SUCCEEDED)
    assert me.result["greeting"] == "hello from demo"
    assert me.result["fence"] == me.fence and me.result["task_id"] == who
    assert me.result["attempt"] == 1
    assert me.result["pid"] != me.attempts[0].node  # ran in its own process


def test_unknown_plugin_version_or_function_fail_clearly(
    start_node: StartNode, client: Client
) -> None:
    start_node("a", unrunnable_grace=1.0)
    missing_fn = client.submit("demo.tasks:nope", plugin="demo")
    # The client refuses these three at submit (tests/integration/test_placement.py);
    # queued anyway, the nodes fail them too.
    not_allowed = client.submit("os:getcwd", plugin="demo", allow_unserved=True)
    no_plugin = client.submit("x.y:z", plugin="nope", allow_unserved=True)
    no_version = client.submit(
        "greeter:greet", plugin="greeter", args=("x",), version="9.0", allow_unserved=True
    )

    task = wait_state(client, missing_fn, TaskState.FAILED)
    assert task.attempt == 1 and task.attempts[0].outcome is Outcome.REJECTED
    assert task.error_type == "FunctionNotFound" and "nope" in (task.error_message or "")

    task = wait_state(client, not_allowed, TaskState.FAILED)
    assert task.attempts[0].outcome is Outcome.REJECTED
    assert "does not allow os:getcwd" in (task.error_message or "")

    task = wait_state(client, no_plugin, TaskState.FAILED, timeout=15)
    assert task.attempt == 0 and "no live node has plugin 'nope'" in (task.error_message or "")
    task = wait_state(client, no_version, TaskState.FAILED, timeout=15)
    assert "version 9.0" in (task.error_message or "")


def test_failed_attempts_record_exceptions_and_retry(start_node: StartNode, client: Client) -> None:
    start_node("a")
    task_id = client.submit(
        "demo.tasks:fail", plugin="demo", args=("kaput",), max_attempts=2, retry_backoff=0.1
    )
    task = wait_state(client, task_id, TaskState.FAILED)
    assert [a.outcome for a in task.attempts] == [Outcome.ERROR, Outcome.ERROR]
    for attempt in task.attempts:
        assert attempt.error_type == "ValueError" and attempt.error_message == "kaput"
        assert "in fail\n    raise ValueError(message)" in (attempt.traceback or "")
    assert "no attempts left" in (task.error_message or "")
    permanent = client.submit("demo.tasks:fail_permanently", plugin="demo", max_attempts=5)
    task = wait_state(client, permanent, TaskState.FAILED)
    assert task.attempt == 1 and task.error_type == "taskman.runtime.PermanentError"


def test_abort_and_timeout_stop_running_attempts(start_node: StartNode, client: Client) -> None:
    start_node("a")
    aborted = client.submit("demo.tasks:sleep", plugin="demo", args=(60,))
    timed_out = client.submit(
        "demo.tasks:sleep", plugin="demo", args=(60,), timeout=1.0, max_attempts=1
    )
    wait_state(client, aborted, TaskState.RUNNING)
    requested = time.monotonic()
    assert client.abort(aborted) is TaskState.RUNNING
    task = wait_state(client, aborted, TaskState.ABORTED, timeout=15)
    latency = time.monotonic() - requested
    print(f"\nabort latency: {latency:.2f} s")
    assert latency < 5
    assert task.attempts[0].outcome is Outcome.ABORTED
    task = wait_state(client, timed_out, TaskState.FAILED, timeout=20)
    assert task.attempts[0].outcome is Outcome.TIMEOUT and task.error_type == "Timeout"


def test_output_tail_is_captured(start_node: StartNode, client: Client) -> None:
    start_node("a")
    task_id = client.submit("demo.tasks:chatty", plugin="demo", args=(20000,))
    task = wait_state(client, task_id, TaskState.SUCCEEDED)
    tail = task.attempts[0].output_tail or ""
    assert tail.rstrip().endswith("line 19999")
    assert len(tail) <= 64 * 1024


def test_runner_works_in_a_plugin_interpreter_without_taskman(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    plugin = tmp_path / "plugins" / "isolated"
    (plugin / "src").mkdir(parents=True)
    (plugin / "plugin.toml").write_text(
        f'name = "isolated"\nversion = "1.0"\nallow_root = true\npython = "{venv / "bin" / "python"}"\n'
        'path = ["src"]\n[env]\nISOLATED = "yes"\n'
    )
    (plugin / "src" / "probe.py").write_text(
        "import importlib.util, os, sys\n"
        "from taskman import runtime\n\n"
        "def run():\n"
        "    runtime.progress(0.5, 'half')\n"
        "    return {'prefix': sys.prefix, 'task_id': runtime.task_id(),\n"
        "            'token': runtime.fencing_token(), 'env': os.environ.get('ISOLATED'),\n"
        "            'node_dsn_visible': any('TASKMAN_DSN' in k for k in os.environ),\n"
        "            'pymysql': importlib.util.find_spec('pymysql') is not None}\n"
    )
    start_node("a", plugin_dirs=[str(tmp_path / "plugins")])
    task_id = client.submit("probe:run", plugin="isolated")
    task = wait_state(client, task_id, TaskState.SUCCEEDED)
    assert task.result == {
        "prefix": str(venv),
        "task_id": task_id,
        "token": task.fence,
        "env": "yes",
        "node_dsn_visible": False,
        "pymysql": False,
    }


def test_a_broken_manifest_is_reported_and_the_other_plugins_still_serve(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    broken = tmp_path / "more" / "broken"
    broken.mkdir(parents=True)
    (broken / "plugin.toml").write_text('name = "broken"\nversion = "1.0"\nbogus = 1\n')
    node = start_node("a", plugin_dirs=[str(EXAMPLES_DIR), str(tmp_path / "more")])
    rejected = node.wait_for_event("plugin.rejected")
    assert str(broken / "plugin.toml") in rejected["problem"] and "bogus" in rejected["problem"]
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    assert wait_state(client, task_id, TaskState.SUCCEEDED).result == 2
