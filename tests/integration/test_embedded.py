"""Embedded mode: `taskman dev` on SQLite, as a real process, with no MySQL or ZooKeeper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman import Client, Outcome, TaskState
from taskman.cli.exitcodes import Exit
from taskman.lab import free_port
from taskman.store import make_database
from taskman.store.placement import PlacementStore
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.embedded_support import Dev
from tests.integration.scrape_support import fetch, sample


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    instance = Dev(tmp_path / "dev.sqlite3", free_port())
    yield instance
    instance.stop()


def test_dev_runs_tasks_with_progress_abort_and_failures(dev: Dev) -> None:
    with Client(f"sqlite:///{dev.db}") as client:
        ok = client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
        bad = client.submit("demo.tasks:fail", plugin="demo", max_attempts=2, retry_backoff=0)
        slow = client.submit("demo.tasks:sleep", plugin="demo", args=(30,))
        assert wait_state(client, ok, TaskState.SUCCEEDED).result == 5
        failed = wait_state(client, bad, TaskState.FAILED)
        assert [a.outcome for a in failed.attempts] == [Outcome.ERROR, Outcome.ERROR]
        assert "ValueError: boom" in (failed.attempts[0].traceback or "")
        wait_until(lambda: (client.get(slow).progress or 0) > 0, 10, "progress")
        assert client.abort(slow) is TaskState.RUNNING
        aborted = wait_state(client, slow, TaskState.ABORTED, timeout=15)
        assert aborted.attempts[0].outcome is Outcome.ABORTED
    page = urllib.request.urlopen(f"http://127.0.0.1:{dev.port}/").read().decode()
    assert "dev" in page and "local" in page


def test_dev_publishes_what_it_serves_and_the_cli_refuses_a_misspelt_plugin(dev: Dev) -> None:
    dsn = f"sqlite:///{dev.db}"
    store = PlacementStore(make_database(dsn))
    try:
        rows = wait_until(store.served, 15, "taskman dev to publish what it serves")
    finally:
        store.db.close()
    assert {(r.node, r.datacenter, r.plugin, r.version) for r in rows} == {
        ("dev", "local", "demo", "1.0"),
        ("dev", "local", "greeter", "1.0"),
        ("dev", "local", "greeter", "2.0"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
    refused = subprocess.run(
        [sys.executable, "-m", "taskman", "submit", "demo.tasks:add", "--plugin", "dmeo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "TASKMAN_DSN": dsn},
    )
    assert refused.returncode == Exit.INVALID
    assert "no node has ever served plugin 'dmeo' (served: plugins demo 1.0; greeter" in (
        refused.stderr
    )
    with Client(dsn) as client:
        assert client.list() == []
        queued = client.submit("demo.tasks:add", plugin="dmeo", allow_unserved=True)
        assert client.why_queued(queued) == ["no live node serves plugin 'dmeo' (never served)"]
        client.abort(queued)


def test_a_second_dev_on_the_same_file_is_refused(dev: Dev) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskman",
            "dev",
            "--db",
            str(dev.db),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == Exit.CONFIG
    assert "already used by taskman dev" in result.stderr


def test_work_of_a_killed_dev_is_reclaimed_with_a_larger_token(tmp_path: Path) -> None:
    db = tmp_path / "dev.sqlite3"
    first = Dev(db, free_port())
    with Client(f"sqlite:///{db}") as client:
        task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(2,))
        running = wait_state(client, task_id, TaskState.RUNNING)
        first.process.kill()
        first.process.wait()
        time.sleep(0.5)
        second = Dev(db, free_port())
        try:
            done = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
        finally:
            second.stop()
    assert done.attempts[0].outcome is Outcome.NODE_LOST
    assert done.attempts[-1].fence > running.fence


def test_schedules_tick_in_embedded_mode(dev: Dev) -> None:
    with Client(f"sqlite:///{dev.db}") as client:
        client.add_schedule("every-second", "demo.tasks:add", plugin="demo", every=1, args=(1, 1))
        tasks = wait_until(
            lambda: (found := client.list(plugin="demo")) and len(found) >= 3 and found,
            15,
            "three ticks to become tasks",
        )
        for task in tasks[:3]:
            assert (task.idempotency_key or "").startswith("schedule:every-second:")
        assert len({t.idempotency_key for t in tasks}) == len(tasks)  # one task per tick
        assert wait_state(client, tasks[-1].id, TaskState.SUCCEEDED).result == 2


def test_dev_serves_metrics_health_and_readiness_without_the_ui_login(tmp_path: Path) -> None:
    # With a UI token set, pages need it; the probes stay open, as on a cluster node.
    dev = Dev(
        tmp_path / "dev.sqlite3", free_port(), env={"TASKMAN_UI_TOKEN": "probe-test-token-0123"}
    )
    base = f"http://127.0.0.1:{dev.port}"
    try:
        assert fetch(base + "/")[0] == 303  # to /login
        status, headers, body = fetch(base + "/readyz")
        assert status == 200, body
        ready = json.loads(body)
        assert ready["status"] == "ready"
        assert ready["checks"]["coordinator"]["ok"] and ready["checks"]["database"]["ok"]
        assert (ready["node_id"], ready["datacenter"]) == ("dev", "local")
        status, _, body = fetch(base + "/healthz")
        assert status == 200 and json.loads(body)["status"] == "alive"
        assert "set-cookie" not in headers
        with Client(f"sqlite:///{dev.db}") as client:
            task_id = client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
            wait_state(client, task_id, TaskState.SUCCEEDED)

        def scraped() -> str | None:
            status, headers, text = fetch(base + "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain; version=")
            done = sample(text, "taskman_tasks_succeeded_total", plugin="demo") == 1
            # The leader's gauges: every 5 s, as on a cluster's leader.
            published = sample(text, "taskman_queue_depth", state="succeeded") == 1
            return text if done and published else None

        text = wait_until(scraped, 15, "the dev node's metrics to show its work")
        assert sample(text, "taskman_tasks_claimed_total", plugin="demo") == 1
        assert sample(text, "taskman_is_leader") == 1
        assert sample(text, "taskman_nodes_live", datacenter="local") == 1
        assert fetch(base + "/metrics/x")[0] == 303  # only the three paths skip the login
    finally:
        dev.stop()
