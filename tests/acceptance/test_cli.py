"""The real ``taskman`` command as a subprocess, against the session's MariaDB and ZooKeeper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskman import Client
from taskman.cli.exitcodes import Exit
from tests.integration.cluster_support import ZK_AUTH
from tests.integration.conftest import StartNode


def taskman(*args: str, dsn: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
    if dsn:
        environ["TASKMAN_DSN"] = dsn
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "taskman", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_submit_wait_status_tasks_round_trip(start_node: StartNode, dsn: str) -> None:
    start_node("a")
    done = taskman(
        "submit",
        "demo.tasks:add",
        "--plugin",
        "demo",
        "--args",
        "[2, 3]",
        "--wait",
        "--json",
        dsn=dsn,
    )
    assert done.returncode == Exit.OK, done.stderr
    task = json.loads(done.stdout)
    assert task["state"] == "succeeded" and task["result"] == 5
    status = taskman("status", str(task["id"]), dsn=dsn)
    assert status.returncode == Exit.OK
    assert "succeeded" in status.stdout and "result: 5" in status.stdout
    listed = taskman("tasks", "--state", "succeeded", "--json", dsn=dsn)
    assert [t["id"] for t in json.loads(listed.stdout)] == [task["id"]]
    failed = taskman(
        "submit", "demo.tasks:fail", "--plugin", "demo", "--max-attempts", "1", "--wait", dsn=dsn
    )
    assert failed.returncode == Exit.TASK_FAILED
    assert "ValueError: boom" in failed.stdout


def test_abort_and_not_found_exit_codes(dsn: str) -> None:
    submitted = taskman(
        "submit",
        "demo.tasks:add",
        "--plugin",
        "demo",
        "--not-before",
        "2099-01-01T00:00:00Z",
        dsn=dsn,
    )
    assert submitted.returncode == Exit.OK, submitted.stderr
    task_id = submitted.stdout.strip()
    aborted = taskman("abort", task_id, dsn=dsn)
    assert aborted.returncode == Exit.OK and "aborted" in aborted.stdout
    again = taskman("abort", task_id, dsn=dsn)
    assert again.returncode == Exit.STATE and "already aborted" in again.stderr
    missing = taskman("status", "999999", dsn=dsn)
    assert missing.returncode == Exit.NOT_FOUND and "no task with id 999999" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "not a ref", "--plugin", "demo"], "malformed function reference"),
        (["submit", "m:f", "--plugin", "demo", "--args", "[1,"], "--args is not valid JSON"),
        (
            ["submit", "m:f", "--plugin", "demo", "--not-after", "2030-01-01T00:00:00"],
            "has no timezone",
        ),
        (["submit", "m:f", "--plugin", "demo", "--not-after", "yesterday"], "not an ISO 8601"),
        (
            ["submit", "m:f", "--plugin", "demo", "--not-after", "2001-01-01T00:00:00Z"],
            "already in the past",
        ),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(
    dsn: str, args: list[str], message: str
) -> None:
    result = taskman(*args, dsn=dsn)
    assert result.returncode == Exit.INVALID, result.stderr
    assert message in result.stderr
    with Client(dsn) as client:
        assert client.list() == []


def test_missing_dsn_and_bad_config_are_config_errors(tmp_path: Path) -> None:
    result = taskman("tasks")
    assert result.returncode == Exit.CONFIG and "TASKMAN_DSN" in result.stderr
    config = tmp_path / "node.toml"
    config.write_text('node_id = "a"\nbogus = 1\n')
    result = taskman("node", "--config", str(config))
    assert result.returncode == Exit.CONFIG
    assert "unknown key 'bogus'" in result.stderr and str(config) in result.stderr


def test_unreachable_database_is_unavailable() -> None:
    result = taskman(
        "status", "1", dsn="mysql://u:secret-pw@127.0.0.1:1/x", TASKMAN_RETRY_DEADLINE="1"
    )
    assert result.returncode == Exit.UNAVAILABLE
    assert "secret-pw" not in result.stderr + result.stdout


def test_nodes_lists_live_nodes_and_the_leader(
    start_node: StartNode, zk_hosts: str, cluster_name: str
) -> None:
    start_node("a", "dc1")
    start_node("b", "dc2")
    result = taskman(
        "nodes",
        "--zookeeper",
        zk_hosts,
        "--cluster",
        cluster_name,
        "--json",
        TASKMAN_ZOOKEEPER_AUTH=ZK_AUTH,
    )
    assert result.returncode == Exit.OK, result.stderr
    data = json.loads(result.stdout)
    assert {n["node_id"]: n["datacenter"] for n in data["nodes"]} == {"a": "dc1", "b": "dc2"}
    assert data["leader"] == "a" and [n["leader"] for n in data["nodes"]] == [True, False]
    assert data["nodes"][0]["plugins"]["greeter"] == ["1.0", "2.0"]


def test_submit_takes_limits_and_refuses_unknown_ones(start_node: StartNode, dsn: str) -> None:
    start_node("a")
    hog = taskman(
        "submit",
        "demo.tasks:hog_memory",
        "--plugin",
        "demo",
        "--args",
        "[2000]",
        "--limit",
        "memory_mb=300",
        "--max-attempts",
        "1",
        "--wait",
        dsn=dsn,
    )
    assert hog.returncode == Exit.TASK_FAILED
    assert "memory limit (memory_mb = 300)" in hog.stdout
    bad = taskman("submit", "demo.tasks:add", "--plugin", "demo", "--limit", "disk_gb=3", dsn=dsn)
    assert bad.returncode == Exit.INVALID and "unknown limit 'disk_gb'" in bad.stderr
