"""ZooKeeper faults the chaos suite does not script: a follower cut off from its leader.

A follower that has lost its leader keeps answering reads from its stale view for
up to syncLimit x tickTime (1 s in the lab). A node probing its session with a
plain read there would believe itself alive while the quorum may already be
expiring its session; the probe must need the leader (a sync).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman.cluster.zk import SessionMonitor, connect
from taskman.lab import ZooKeeperEnsemble
from tests.integration.cluster_support import wait_until
from tests.integration.conftest import StartNode


@pytest.fixture
def ensemble(tmp_path: Path) -> Iterator[ZooKeeperEnsemble]:
    with ZooKeeperEnsemble(tmp_path / "zk", size=3) as zk:
        yield zk


def test_the_session_probe_fails_on_a_follower_that_lost_its_leader(
    ensemble: ZooKeeperEnsemble,
) -> None:
    leader = wait_until(ensemble.leader, 15, "a ZooKeeper leader")
    follower = next(i for i in range(ensemble.size) if i != leader)
    leader_pid = ensemble.pids[leader]
    assert leader_pid is not None
    # Attached to the follower only; a 3 s session probes every 0.3 s.
    client = connect(ensemble.server_hosts(follower), 3.0)
    monitor = SessionMonitor(client, "/", 3.0)
    monitor.start()
    try:
        wait_until(lambda: monitor.silence() < 0.3, 5, "a confirmed round trip")
        os.kill(leader_pid, signal.SIGSTOP)  # to the follower: its leader went silent
        try:
            time.sleep(0.9)  # inside syncLimit x tickTime: the follower still serves reads
            silence = monitor.silence()
        finally:
            os.kill(leader_pid, signal.SIGCONT)
        print(f"\nprobe silence 0.9 s after the leader went quiet: {silence:.2f} s")
        assert silence > 0.7, "the probe was answered without the quorum's leader"
    finally:
        monitor.stop()
        client.stop()
        client.close()


def test_a_node_refuses_an_ensemble_that_negotiates_a_shorter_session(
    start_node: StartNode,
) -> None:
    """The lab ensemble's maxSessionTimeout is 30 s. A node asking for 40 s gets 30: its
    runners' watchdog and its self-fencing, derived from 40, would outlive its session."""
    a = start_node("a", session_timeout=40.0, heartbeat_timeout=60.0, wait=False)
    assert a.process is not None
    try:
        code = a.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the node runs with a session shorter than its self-fencing budget")
    assert code != 0
    text = a.log_path.read_text()
    assert "negotiated a session of 30.0 s" in text and "maxSessionTimeout" in text, text[-2000:]
