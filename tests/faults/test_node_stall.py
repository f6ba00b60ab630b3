"""A node stalled for a few seconds (a VM hiccup, CPU throttling), short of its session.

Its runners' watchdog kills them (they cannot tell a stall from a dead node);
that is the node's trouble, never the task's failure (invariant 11).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from taskman import Client, Outcome, TaskState
from tests.integration.cluster_support import FAST_NODE, read_log, wait_state, wait_until
from tests.integration.conftest import StartNode

SESSION = FAST_NODE["session_timeout"]


def test_a_short_node_stall_is_not_counted_as_the_tasks_failure(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    a = start_node("a", "dc1")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(3, str(log)), max_attempts=1)
    wait_until(lambda: read_log(log), 15, "the attempt to start")
    a.pause()
    time.sleep(0.55 * SESSION)  # past the runners' watchdog, short of the session
    a.resume()
    task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
    first, *rest = task.attempts
    assert first.outcome is Outcome.FENCED, first
    assert rest and rest[-1].outcome is Outcome.SUCCEEDED
    # The node kept its session throughout: no self-fencing, no reclaim.
    assert not [e for e in a.events() if e["event"] in ("node.self_fenced", "task.reclaimed")]
    assert [e for e in a.events() if e["event"] == "task.orphaned_by_stall"]


def test_a_stall_the_runner_survives_keeps_the_attempts_result(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    """A VM stall freezes the node and its runners together. A runner that wakes to
    the node's pings and finishes its task has done it: its result stands, once."""
    log = tmp_path / "exec.log"
    a = start_node("a", "dc1")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(3, str(log)), max_attempts=1)
    runner_pid = wait_until(lambda: read_log(log), 15, "the attempt to start")[0][3]
    os.kill(runner_pid, signal.SIGSTOP)
    a.pause()
    try:
        time.sleep(0.35 * SESSION)  # far past the runners' watchdog, short of the session
    finally:
        a.resume()
        # The node's pings reach the runner's socket before it wakes: it reads them
        # before it looks at its watchdog, so it lives on.
        time.sleep(0.4)
        os.kill(runner_pid, signal.SIGCONT)
    task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
    assert [a.outcome for a in task.attempts] == [Outcome.SUCCEEDED]
    assert [row[4] for row in read_log(log)].count("done") == 1
