"""The admin UI in a real browser: headless Debian chromium against real nodes, DB and ZooKeeper."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from taskman import Client, Outcome, TaskState
from tests.browser.support import UIProcess
from tests.integration.cluster_support import wait_state
from tests.integration.conftest import StartNode

pytestmark = pytest.mark.integration

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script> & "quotes"'


def test_dashboard_shows_counts_datacenters_nodes_and_leader(
    start_node: StartNode, client: Client, ui: UIProcess, page: Any, artifacts: Path
) -> None:
    start_node("dc1-n1", "dc1")
    start_node("dc2-n1", "dc2", slots=2)
    ids = [client.submit("demo.tasks:add", plugin="demo", args=(i, 1)) for i in range(3)]
    failed = client.submit("demo.tasks:fail", plugin="demo", max_attempts=1)
    for task_id in ids:
        wait_state(client, task_id, TaskState.SUCCEEDED)
    wait_state(client, failed, TaskState.FAILED)

    page.goto(ui.url + "/")
    # The leader takes office within a reaper pass; the page refreshes itself every 5 s.
    page.wait_for_selector("#leader", timeout=20_000)
    assert page.inner_text("#count-succeeded .n") == "3"
    assert page.inner_text("#count-failed .n") == "1"
    assert "dc1-n1" in page.inner_text("#dc-dc1")
    assert "dc2-n1" in page.inner_text("#dc-dc2")
    assert "/2" in page.inner_text("#node-dc2-n1")  # slots used / slots
    assert "demo" in page.inner_text("#node-dc1-n1")
    assert page.inner_text("#leader") in {"dc1-n1", "dc2-n1"}
    assert "4 succeeded" not in page.inner_text("main")  # the chart counts what finished: 3
    assert "3 succeeded" in page.inner_text(".legend")
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    page.click("#count-failed")  # the count links to the filtered task list
    page.wait_for_selector(f"#task-{failed}")
    assert page.locator("#task-table tbody tr").count() == 1


def test_progress_bar_moves_and_the_task_completes(
    start_node: StartNode, client: Client, ui: UIProcess, page: Any, artifacts: Path
) -> None:
    start_node("dc1-n1", "dc1")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(5,))
    wait_state(client, task_id, TaskState.RUNNING)
    page.goto(f"{ui.url}/tasks/{task_id}")

    seen: list[float] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(set(seen)) < 3:
        value = float(page.locator("#progress").get_attribute("value") or 0)
        if 0 < value < 1 and (not seen or value != seen[-1]):
            seen.append(value)
            if len(seen) == 2:
                page.screenshot(path=str(artifacts / "task-running.png"), full_page=True)
        page.wait_for_timeout(300)
    assert len(set(seen)) >= 3 and seen == sorted(seen), f"progress did not move: {seen}"
    assert "s left" in page.inner_text("#progress-message")

    page.wait_for_selector("#state .s-succeeded", timeout=20_000)
    assert page.locator("#progress").get_attribute("value") == "1.0"
    assert '"slept": 5' in page.inner_text("#result")
    attempt = page.inner_text("#attempt-1")
    assert "succeeded" in attempt and "dc1-n1" in attempt and "dc1" in attempt
    task = client.get(task_id)
    assert str(task.fence) in attempt  # the fencing token of the attempt
    page.screenshot(path=str(artifacts / "task-succeeded.png"), full_page=True)


def test_abort_a_running_task_with_the_button(
    start_node: StartNode, client: Client, ui: UIProcess, page: Any, artifacts: Path
) -> None:
    start_node("dc1-n1", "dc1")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(120,))
    wait_state(client, task_id, TaskState.RUNNING)
    page.goto(f"{ui.url}/tasks/{task_id}")
    page.wait_for_selector("#state .s-running")

    page.click("#abort")
    page.wait_for_selector("#confirm")  # a confirmation step, not a one-click abort
    assert f"Abort task {task_id}?" in page.inner_text("#confirm h1")
    page.screenshot(path=str(artifacts / "abort-confirm.png"), full_page=True)
    page.click("#confirm-abort")

    page.wait_for_selector("#notice")
    assert "Abort requested" in page.inner_text("#notice")
    page.wait_for_selector("#state .s-aborted", timeout=20_000)
    assert page.locator("#abort").count() == 0
    assert "aborted" in page.inner_text("#attempt-1")
    page.screenshot(path=str(artifacts / "task-aborted.png"), full_page=True)
    task = client.get(task_id)
    assert task.state is TaskState.ABORTED
    assert task.attempts[-1].outcome is Outcome.ABORTED


def test_failed_task_shows_its_traceback_escaped_and_can_be_retried(
    start_node: StartNode, client: Client, ui: UIProcess, page: Any, artifacts: Path
) -> None:
    start_node("dc1-n1", "dc1")
    task_id = client.submit("demo.tasks:fail", plugin="demo", args=(HOSTILE,), max_attempts=1)
    wait_state(client, task_id, TaskState.FAILED)

    page.goto(f"{ui.url}/tasks?state=failed")
    page.click(f"#task-{task_id} a")
    page.wait_for_selector("#attempt-1 details.traceback[open]")
    traceback = page.inner_text("#attempt-1 details.traceback pre")
    assert "Traceback (most recent call last)" in traceback
    assert "raise ValueError(message)" in traceback
    assert f"ValueError: {HOSTILE}" in traceback  # shown as text, exactly
    assert json.loads(page.inner_text("#args")) == [HOSTILE]
    assert page.locator("main img, main script").count() == 0  # nothing was injected
    page.screenshot(path=str(artifacts / "task-failed.png"), full_page=True)

    page.click("#retry")
    page.click("#confirm-retry")
    page.wait_for_selector("#notice")
    assert "queued again" in page.inner_text("#notice")
    page.wait_for_selector("#attempt-2", timeout=20_000)  # the retry ran, and failed again
    page.wait_for_selector("#state .s-failed", timeout=20_000)
    assert client.get(task_id).attempts[1].fence > client.get(task_id).attempts[0].fence
