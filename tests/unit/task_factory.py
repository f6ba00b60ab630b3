"""Tasks and attempts as the client returns them, built in memory for pure-logic tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taskman.models import Attempt, Task
from taskman.states import Outcome, TaskState

NOW = datetime(2026, 11, 30, 6, 0, 0, tzinfo=UTC)


def make_task(**fields: Any) -> Task:
    values: dict[str, Any] = {
        "id": 42,
        "state": TaskState.QUEUED,
        "plugin": "demo",
        "plugin_version": None,
        "function": "demo.tasks:sleep",
        "args": [],
        "kwargs": {},
        "priority": 0,
        "datacenter": None,
        "idempotency_key": None,
        "not_before": None,
        "not_after": None,
        "run_after": NOW,
        "timeout": None,
        "max_attempts": 3,
        "retry_backoff": None,
        "limits": None,
        "concurrency_key": None,
        "concurrency_limit": None,
        "fence": 0,
        "owner": None,
        "owner_datacenter": None,
        "attempt": 0,
        "failures": 0,
        "reclaims": 0,
        "heartbeat_at": None,
        "progress": None,
        "progress_message": None,
        "abort_requested": False,
        "result": None,
        "error_type": None,
        "error_message": None,
        "created_at": NOW,
        "started_at": None,
        "finished_at": None,
        "attempts": (),
    }
    values.update(fields)
    return Task(**values)


def make_attempt(number: int, outcome: Outcome = Outcome.RUNNING, **fields: Any) -> Attempt:
    values: dict[str, Any] = {
        "task_id": 42,
        "attempt": number,
        "fence": 0x1_0000_0000 + number,
        "node": "dc1-node1",
        "datacenter": "dc1",
        "plugin_version": "1.0",
        "started_at": NOW,
        "ended_at": None if outcome is Outcome.RUNNING else NOW,
        "outcome": outcome,
        "error_type": None,
        "error_message": None,
        "traceback": None,
        "output_tail": None,
    }
    values.update(fields)
    return Attempt(**values)
