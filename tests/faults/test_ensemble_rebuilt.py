"""The ZooKeeper ensemble is lost and rebuilt from scratch: its zxids start low again.

Every fencing token the database holds came from the old ensemble, so every claim
(`fence < new token`) and every leader (`GREATEST(epoch)`) of the new one would be
refused forever. A node must refuse to start on such an ensemble and say how to
come back; `taskman cluster rebase-tokens` is that way back.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman import Client, TaskState
from taskman.cluster.zk import connect
from taskman.lab import ZooKeeperEnsemble
from tests.integration.cluster_support import wait_state
from tests.integration.conftest import StartNode


@pytest.fixture
def two_ensembles(tmp_path: Path) -> Iterator[tuple[ZooKeeperEnsemble, ZooKeeperEnsemble]]:
    with (
        ZooKeeperEnsemble(tmp_path / "old") as old,
        ZooKeeperEnsemble(tmp_path / "new") as new,
    ):
        # The old ensemble has lived a while: its zxids are well ahead of a new one's.
        client = connect(old.hosts, 10.0)
        try:
            for _ in range(300):
                client.create("/burn", b"")
                client.delete("/burn")
        finally:
            client.stop()
            client.close()
        yield old, new


def test_a_rebuilt_ensemble_is_refused_until_the_tokens_are_rebased(
    start_node: StartNode,
    client: Client,
    two_ensembles: tuple[ZooKeeperEnsemble, ZooKeeperEnsemble],
    tmp_path: Path,
) -> None:
    old, new = two_ensembles
    marker = tmp_path / "crashed-once"
    a = start_node("a", zookeeper=old.hosts)
    task_id = client.submit(
        "demo.tasks:crash_once", plugin="demo", args=(str(marker),), max_attempts=1
    )
    first = wait_state(client, task_id, TaskState.FAILED, timeout=30)
    a.stop(timeout=15)

    # The ensemble is gone; the operator brings up a new, empty one.
    b = start_node("b", zookeeper=new.hosts, wait=False)
    assert b.process is not None
    try:
        code = b.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("a node runs on an ensemble whose tokens are below the database's")
    assert code != 0
    assert "taskman cluster rebase-tokens" in b.log_path.read_text()

    rebase = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskman",
            "cluster",
            "rebase-tokens",
            "--config",
            str(b.config_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rebase.returncode == 0, rebase.stderr
    assert '"token_base"' in rebase.stdout

    b.start()
    b.wait_for_event("leader.elected", timeout=20)
    client.retry(task_id)  # a task that ran under the old ensemble runs again
    task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
    assert task.result == "survived"
    assert task.fence > first.fence
