"""`taskman submit --wait` and `taskman wait` as real processes, against real nodes.

Without a terminal they print plain lines on stderr, one per change; on a
pseudo-terminal they redraw one status line with a progress bar. Ctrl-C leaves
the task running and says how to abort it.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from taskman import Client, TaskState
from taskman.cli.exitcodes import Exit
from tests.acceptance.test_cli import taskman
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.conftest import StartNode


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
    env["TASKMAN_DSN"] = dsn
    env.update(extra)
    return env


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("task ")]


def test_version() -> None:
    result = taskman("--version")
    assert result.returncode == Exit.OK
    assert result.stdout.strip() == "taskman 0.1.0"


def test_plain_lines_show_the_claim_progress_and_the_end(start_node: StartNode, dsn: str) -> None:
    start_node("a")
    done = taskman(
        "submit", "demo.tasks:sleep", "--plugin", "demo", "--args", "[4]", "--wait", dsn=dsn
    )
    assert done.returncode == Exit.OK, done.stderr
    lines = _lines(done.stderr)
    task_id = int(lines[0].split()[1].rstrip(":"))
    assert lines[0] == f"task {task_id}: demo.tasks:sleep (plugin demo): queued"
    assert lines[1].startswith(f"task {task_id}: attempt 1 claimed by a (dc1), token ")
    progress = [line for line in lines if ": progress " in line]
    assert len(progress) >= 2, lines  # a 4 s task reports progress on every heartbeat
    assert all(line.endswith(" s left") for line in progress)
    assert lines[-1].startswith(f"task {task_id}: succeeded in ") and lines[-1].endswith(
        "after 1 attempt"
    )
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    # stdout keeps only the result, as before: --json stays parseable.
    assert "state: succeeded" in done.stdout and "task " not in done.stdout
    as_json = taskman("wait", str(task_id), "--json", dsn=dsn)
    assert json.loads(as_json.stdout)["state"] == "succeeded"
    quiet = taskman("wait", str(task_id), "--quiet", dsn=dsn)
    assert quiet.returncode == Exit.OK and quiet.stderr == ""


def test_failures_retries_and_the_exit_code(start_node: StartNode, dsn: str) -> None:
    start_node("a")
    failed = taskman(
        "submit",
        "demo.tasks:fail",
        "--plugin",
        "demo",
        "--max-attempts",
        "2",
        "--retry-backoff",
        "4",
        "--wait",
        dsn=dsn,
    )
    assert failed.returncode == Exit.TASK_FAILED
    text = "\n".join(_lines(failed.stderr))
    assert "attempt 1 failed: ValueError: boom; retrying in " in text
    assert "attempt 2 claimed by a (dc1)" in text
    assert "attempt 2 failed: ValueError: boom" in text
    assert "failed in " in text.splitlines()[-1] and "ValueError: boom" in text.splitlines()[-1]
    assert "ValueError: boom" in failed.stdout


def test_a_queued_task_says_why_it_waits(start_node: StartNode, dsn: str) -> None:
    start_node("a")
    refused = taskman("submit", "x.y:z", "--plugin", "nope", "--wait", dsn=dsn)
    assert refused.returncode == Exit.INVALID
    assert "no node has ever served plugin 'nope'" in refused.stderr
    assert "--allow-unserved" in refused.stderr
    with Client(dsn) as client:
        assert client.list() == []

    unserved = taskman(
        "submit",
        "x.y:z",
        "--plugin",
        "nope",
        "--allow-unserved",
        "--wait",
        "--wait-timeout",
        "4",
        dsn=dsn,
    )
    assert unserved.returncode == Exit.TIMEOUT
    assert "still queued: no live node serves plugin 'nope' (never served)" in unserved.stderr
    assert "is still queued after 4.0 s" in unserved.stderr

    pinned = taskman(
        "submit",
        "demo.tasks:add",
        "--plugin",
        "demo",
        "--datacenter",
        "dc9",
        "--allow-unserved",
        "--wait",
        "--wait-timeout",
        "3",
        dsn=dsn,
    )
    assert "still queued: its datacenter 'dc9' has no live node" in pinned.stderr

    later = taskman(
        "submit",
        "demo.tasks:add",
        "--plugin",
        "demo",
        "--not-before",
        "2099-01-01T00:00:00Z",
        "--wait",
        "--wait-timeout",
        "3",
        dsn=dsn,
    )
    assert "still queued: not before 2099-01-01 00:00:00 UTC" in later.stderr


def test_a_full_concurrency_cap_is_a_reason(
    start_node: StartNode, dsn: str, client: Client
) -> None:
    start_node("a")
    capped = {"concurrency_key": "one-at-a-time", "concurrency_limit": 1}
    busy = client.submit("demo.tasks:sleep", plugin="demo", args=(30,), **capped)
    wait_state(client, busy, TaskState.RUNNING)
    waiting = client.submit("demo.tasks:add", plugin="demo", args=(1, 1), **capped)
    result = taskman("wait", str(waiting), "--timeout", "4", dsn=dsn)
    assert result.returncode == Exit.TIMEOUT
    assert (
        "still queued: its concurrency cap is full: 1 of 1 running (key 'one-at-a-time')"
        in result.stderr
    )
    client.abort(busy)
    assert wait_state(client, waiting, TaskState.SUCCEEDED).result == 2


def test_a_reclaim_is_told_and_the_next_claim_too(
    start_node: StartNode, dsn: str, client: Client
) -> None:
    a = start_node("a")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(60,))
    wait_state(client, task_id, TaskState.RUNNING)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "taskman", "wait", str(task_id)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(dsn),
    )
    try:
        start_node("b")
        time.sleep(1.0)  # the watcher has read the running task once
        a.kill()  # its session expires (4 s); the leader, b, re-queues the task
        wait_until(
            lambda: (t := client.get(task_id)).state is TaskState.RUNNING and t.attempt == 2,
            40,
            "the second attempt",
        )
        client.abort(task_id)
        _, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == Exit.TASK_FAILED
    text = "\n".join(_lines(err))
    assert "attempt 1 reclaimed: owner a lost its ZooKeeper session" in text, err
    assert "attempt 2 claimed by b (dc1)" in text
    assert text.splitlines()[-1].startswith(f"task {task_id}: aborted")


def test_ctrl_c_leaves_the_task_running_and_says_how_to_abort_it(
    start_node: StartNode, dsn: str, client: Client
) -> None:
    start_node("a")
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskman",
            "submit",
            "demo.tasks:sleep",
            "--plugin",
            "demo",
            "--args",
            "[60]",
            "--wait",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(dsn),
    )
    try:
        wait_until(
            lambda: (found := client.list(state="running")) and found[0].progress is not None,
            30,
            "the task to run and report progress",
        )
        time.sleep(1.5)  # the waiter has seen it running
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=15)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    (task,) = client.list()
    assert waiter.returncode == Exit.INTERRUPTED, err
    assert "Traceback" not in err
    assert f"stopped waiting; task {task.id} is still running and goes on" in err
    assert f"abort it:        taskman abort {task.id}" in err
    assert f"taskman wait {task.id}" in err
    assert out == ""
    time.sleep(1.0)
    assert client.get(task.id).state is TaskState.RUNNING  # the task goes on
    assert client.abort(task.id) is TaskState.RUNNING
    assert wait_state(client, task.id, TaskState.ABORTED).state is TaskState.ABORTED


def _read_pty(fd: int, process: subprocess.Popen[bytes], timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    return out


def test_a_terminal_gets_a_live_progress_bar(
    start_node: StartNode, dsn: str, tmp_path: Path
) -> None:
    start_node("a")
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskman",
            "submit",
            "demo.tasks:sleep",
            "--plugin",
            "demo",
            "--args",
            "[4]",
            "--wait",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(dsn, TERM="xterm", COLUMNS="100"),
        close_fds=True,
    )
    os.close(slave)
    try:
        screen = _read_pty(master, process, timeout=60).decode(errors="replace")
        process.wait(timeout=10)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    (tmp_path / "screen.txt").write_text(screen)
    assert process.returncode == Exit.OK, screen
    redraws = [frame for frame in screen.split("\r\x1b[K") if frame.startswith("task ")]
    bars = [frame for frame in redraws if " running [" in frame]
    assert len(bars) >= 3, screen  # redrawn in place while it runs
    assert any("#" in frame and "% " in frame and " s left" in frame for frame in bars), bars
    assert all(len(frame.split("\r")[0]) <= 99 for frame in bars)
    assert "succeeded in " in screen and "state: succeeded" in screen
