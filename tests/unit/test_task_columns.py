"""One mapper for the tasks table: every view of a task row decodes its columns the same way."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from taskman.models import TASK_COLUMNS, Task, task_fields
from taskman.states import TaskState
from taskman.store import Candidate, Claim
from taskman.store.dashboard import TaskRow

ROW = {
    "id": "7",
    "state": "running",
    "plugin": "demo",
    "plugin_version": None,
    "function": "demo.tasks:add",
    "args": "[1, 2]",
    "kwargs": '{"x": 1}',
    "priority": 3,
    "datacenter": None,
    "idempotency_key": "k",
    "not_before": None,
    "not_after": None,
    "run_after": datetime(2026, 1, 2, 3, 4, 5),
    "timeout_seconds": 30.0,
    "max_attempts": 3,
    "retry_backoff_seconds": None,
    "limits": '{"memory_mb": 64}',
    "concurrency_key": None,
    "concurrency_limit": None,
    "fence": 100,
    "owner": "n1",
    "owner_datacenter": "dc1",
    "attempt": 1,
    "failures": 0,
    "reclaims": 0,
    "heartbeat_at": None,
    "progress": None,
    "progress_message": None,
    "abort_requested": 0,
    "result": None,
    "error_type": None,
    "error_message": None,
    "created_at": datetime(2026, 1, 2, 3, 4, 0),
    "started_at": None,
    "finished_at": None,
    "wait_us": 1500,
}


def test_every_view_reads_each_of_its_columns_through_the_one_mapper() -> None:
    # A field outside the table would be left to its default (or be missing): these
    # are the only ones the callers supply themselves.
    supplied = {Task: {"attempts"}, TaskRow: set(), Claim: {"waited"}, Candidate: set()}
    for view, extra in supplied.items():
        names = {f.name for f in dataclasses.fields(view)}
        assert names - set(TASK_COLUMNS) == extra, view.__name__


def test_columns_are_decoded_once_and_alike_for_every_view() -> None:
    task = Task.from_row(ROW)
    row = TaskRow.from_row(ROW)
    claim = Claim(**task_fields(Claim, ROW), waited=0.0)
    assert (task.id, row.id, claim.task_id) == (7, 7, 7)
    assert task.state is row.state is TaskState.RUNNING
    assert task.args == claim.args == [1, 2] and task.kwargs == claim.kwargs == {"x": 1}
    assert task.limits == claim.limits == {"memory_mb": 64}
    assert task.timeout == claim.timeout == 30.0
    assert task.abort_requested is row.abort_requested is claim.abort_requested is False
    assert task.run_after == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert task.created_at == row.created_at == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
