"""Operations against real servers: metrics, health endpoints, logs, drain, retry, retention."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from taskman import Client, TaskState
from taskman.lab import MariaDBServer, ZooKeeperEnsemble, free_port
from taskman.lab.nodes import NodeProcess
from taskman.plugins import EXAMPLES_DIR
from taskman.store import TaskStore, make_database
from tests.integration.cluster_support import FAST_NODE, ZK_AUTH, wait_state, wait_until
from tests.integration.conftest import StartNode
from tests.integration.scrape_support import get, sample


def test_metrics_move_with_the_work(start_node: StartNode, client: Client) -> None:
    port = free_port()
    start_node("a", metrics_address=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/metrics"
    status, before = get(url)
    assert status == 200
    assert sample(before, "taskman_zookeeper_connected") == 1.0
    assert sample(before, "taskman_slots_free") == FAST_NODE["slots"]
    ok = [client.submit("demo.tasks:add", plugin="demo", args=(i, i)) for i in range(5)]
    bad = client.submit("demo.tasks:fail", plugin="demo", max_attempts=1)
    slow = client.submit("demo.tasks:sleep", plugin="demo", args=(3,))
    for task_id in ok:
        wait_state(client, task_id, TaskState.SUCCEEDED)
    wait_state(client, bad, TaskState.FAILED)
    wait_state(client, slow, TaskState.RUNNING)
    time.sleep(1.5)  # gauges are set on the node's next loop pass, leader depth every 5 s
    _, during = get(url)
    assert sample(during, "taskman_tasks_claimed_total", plugin="demo") == 7
    assert sample(during, "taskman_tasks_succeeded_total", plugin="demo") == 5
    assert sample(during, "taskman_tasks_failed_total", plugin="demo") == 1
    assert sample(during, "taskman_runners_running") == 1
    assert sample(during, "taskman_slots_free") == FAST_NODE["slots"] - 1
    assert sample(during, "taskman_is_leader") == 1
    assert sample(during, "taskman_submit_to_start_seconds_count") == 7
    assert sample(during, "taskman_runner_spawn_seconds_count") >= 6
    assert (
        sample(during, "taskman_attempt_duration_seconds_count", plugin="demo", outcome="succeeded")
        == 5
    )

    def depth() -> dict[str, float] | None:
        text = get(url)[1]
        found = {s: sample(text, "taskman_queue_depth", state=s) for s in ("succeeded", "failed")}
        found["running"] = sample(text, "taskman_queue_depth", state="running")
        return found if found["failed"] == 1 else None

    counts = wait_until(depth, 10, "the leader to publish queue depth")
    assert counts["succeeded"] + counts["running"] == 6


def test_health_and_readiness_report_their_reasons(
    dsn: str, tmp_path: Path, cluster_name: str
) -> None:
    # Its own ZooKeeper, so pausing it cannot disturb other tests.
    with ZooKeeperEnsemble(tmp_path / "zk") as zk:
        port = free_port()
        node = NodeProcess(
            tmp_path / "nodes",
            "a",
            datacenter="dc1",
            dsn=dsn,
            zookeeper=zk.hosts,
            plugin_dirs=[str(EXAMPLES_DIR)],
            cluster=cluster_name,
            metrics_address=f"127.0.0.1:{port}",
            **FAST_NODE,
        ).start()
        try:
            status, body = get(f"http://127.0.0.1:{port}/readyz")
            ready = json.loads(body)
            assert status == 200 and ready["status"] == "ready"
            assert ready["checks"]["database"]["ok"] and ready["checks"]["zookeeper"]["ok"]
            zk.pause_server(0)
            try:

                def not_ready() -> dict[str, Any] | None:
                    code, text = get(f"http://127.0.0.1:{port}/readyz")
                    return json.loads(text) if code == 503 else None

                report = wait_until(not_ready, 10, "readyz to fail without ZooKeeper")
                assert report["checks"]["zookeeper"]["ok"] is False
                assert "last confirmed round trip" in report["checks"]["zookeeper"]["detail"]
                assert report["checks"]["database"]["ok"] is True
                status, body = get(f"http://127.0.0.1:{port}/healthz")
                assert status == 200 and json.loads(body)["node_id"] == "a"
            finally:
                zk.resume_server(0)
        finally:
            node.stop(timeout=15)


def test_logs_are_json_with_stable_fields_and_no_secrets(
    start_node: StartNode, client: Client, tmp_path: Path, dsn: str
) -> None:
    plugin = tmp_path / "plugins" / "secretive"
    (plugin / "src").mkdir(parents=True)
    planted = "s3cr3t-planted-value"
    (plugin / "plugin.toml").write_text(
        f'name = "secretive"\nversion = "1.0"\nallow_root = true\npath = ["src"]\n[env]\nAPI_KEY = "{planted}"\n'
    )
    (plugin / "src" / "leak.py").write_text(
        "import os\n\ndef run():\n    raise RuntimeError('key is ' + os.environ['API_KEY'])\n"
    )
    node = start_node("a", plugin_dirs=[str(tmp_path / "plugins")])
    task_id = client.submit("leak:run", plugin="secretive", max_attempts=1)
    wait_state(client, task_id, TaskState.FAILED)
    node.wait_for_event("task.failed")
    node.stop()
    text = node.log_path.read_text()
    password = TaskStore(dsn).db.dsn.password
    assert planted not in text and password not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    assert {"node.started", "task.claimed", "task.failed", "node.stopped"} <= names
    claimed = next(e for e in events if e["event"] == "task.claimed")
    assert {"task_id", "attempt", "token", "node", "datacenter", "timestamp", "level"} <= set(
        claimed
    )


def test_drain_lets_running_work_finish_then_exits(
    start_node: StartNode, client: Client, zk_hosts: str, cluster_name: str
) -> None:
    node = start_node("a")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(2,))
    wait_state(client, task_id, TaskState.RUNNING)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskman",
            "node",
            "drain",
            "a",
            "--zookeeper",
            zk_hosts,
            "--cluster",
            cluster_name,
            "--zookeeper-auth",
            ZK_AUTH,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    node.wait_for_event("node.drain_requested", timeout=5)
    later = client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    assert node.process is not None
    assert node.process.wait(timeout=20) == 0
    task = client.get(task_id)
    assert task.state is TaskState.SUCCEEDED and task.attempt == 1  # finished, not cut off
    assert client.get(later).state is TaskState.QUEUED  # a draining node claims nothing new


def test_drain_timeout_hands_running_work_back_at_once(
    start_node: StartNode, client: Client
) -> None:
    node = start_node("a", drain_timeout=1.0)
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(30,))
    wait_state(client, task_id, TaskState.RUNNING)
    stopped = time.monotonic()
    node.stop(timeout=20)
    other = time.monotonic()
    start_node("b")
    task = wait_until(
        lambda: (t := client.get(task_id)).owner == "b" and t, 10, "b to take the task"
    )
    # Handed back fenced and re-queued: no session timeout (4 s) to wait for.
    print(f"\ndrain hand-back: node stopped in {other - stopped:.2f} s")
    assert task.attempts[0].outcome.value == "fenced" and task.reclaims == 1


def test_retry_requeues_a_failed_task_as_a_new_attempt(
    start_node: StartNode, client: Client
) -> None:
    start_node("a")
    task_id = client.submit(
        "demo.tasks:crash_once", plugin="demo", args=("/nonexistent/x",), max_attempts=1
    )
    failed = wait_state(client, task_id, TaskState.FAILED)
    with pytest.raises(Exception, match="only failed, aborted or expired"):
        client.retry(client.submit("demo.tasks:sleep", plugin="demo", args=(5,)))
    client.retry(task_id)
    again = wait_state(client, task_id, TaskState.FAILED)
    assert again.attempt == failed.attempt + 1
    assert again.attempts[-1].fence > failed.attempts[-1].fence


def test_retention_prunes_a_million_old_rows_in_small_batches(
    mariadb: MariaDBServer, start_node: StartNode, dsn: str
) -> None:
    # The bulk insert below can outlast the store's default 30 s read timeout on a
    # slow disk (one durable COMMIT of a million rows): give it room, no retries.
    store = TaskStore(make_database(dsn, read_timeout=600.0, retry_deadline=0.0))
    try:
        # A million finished tasks, 40 days old, straight into the table.
        store.db.execute(
            "INSERT INTO tasks (request_id, plugin, `function`, args, kwargs, run_after, "
            "max_attempts, state, created_at, finished_at) "
            "SELECT LPAD(HEX(seq), 32, '0'), 'demo', 'demo.tasks:add', '[]', '{}', NOW(6), 1, "
            "IF(seq % 10 = 0, 'failed', 'succeeded'), NOW(6) - INTERVAL 41 DAY, "
            "NOW(6) - INTERVAL 40 DAY FROM seq_1_to_1000000"
        )
        fresh = Client(dsn).submit("demo.tasks:add", plugin="demo", args=(1, 2))
        dry = subprocess.run(
            [sys.executable, "-m", "taskman", "prune", "--dry-run", "--dsn", dsn, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(dry.stdout)["would_delete"] == {
            "succeeded": 900_000,
            "failed": 100_000,
            "aborted": 0,
            "expired": 0,
        }
        started = time.monotonic()
        start_node("a", prune_batch=5000)
        remaining = wait_until(
            lambda: (n := store.db.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"]) <= 1 and n,
            600,
            "retention to prune the old rows",
            interval=1.0,
        )
        took = time.monotonic() - started
        print(f"\nretention pruned 1,000,000 rows in {took:.1f} s (batches of 5000)")
        assert remaining == 1
        assert Client(dsn).get(fresh).state is TaskState.SUCCEEDED  # work went on meanwhile
    finally:
        store.close()
