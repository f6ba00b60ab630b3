"""What the client returns: plain, frozen views of a task and its attempts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from taskman.states import Outcome, TaskState


def _utc(value: datetime | None) -> datetime | None:
    # The store keeps UTC in DATETIME columns; hand out aware datetimes.
    return None if value is None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Attempt:
    task_id: int
    attempt: int
    fence: int
    node: str
    datacenter: str
    plugin_version: str | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: Outcome
    error_type: str | None
    error_message: str | None
    traceback: str | None
    output_tail: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Attempt:
        return cls(
            task_id=int(row["task_id"]),
            attempt=int(row["attempt"]),
            fence=int(row["fence"]),
            node=row["node"],
            datacenter=row["datacenter"],
            plugin_version=row["plugin_version"],
            started_at=_utc(row["started_at"]),
            ended_at=_utc(row["ended_at"]),
            outcome=Outcome(row["outcome"]),
            error_type=row["error_type"],
            error_message=row["error_message"],
            traceback=row["traceback"],
            output_tail=row["output_tail"],
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self.__dict__)


@dataclass(frozen=True)
class Task:
    id: int
    state: TaskState
    plugin: str
    plugin_version: str | None
    function: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    datacenter: str | None
    idempotency_key: str | None
    not_before: datetime | None
    not_after: datetime | None
    run_after: datetime | None
    timeout: float | None
    max_attempts: int
    retry_backoff: float | None  # None: the node's default applies
    limits: dict[str, int] | None
    concurrency_key: str | None
    concurrency_limit: int | None
    fence: int
    owner: str | None
    owner_datacenter: str | None
    attempt: int
    failures: int
    reclaims: int
    heartbeat_at: datetime | None
    progress: float | None
    progress_message: str | None
    abort_requested: bool
    result: Any
    error_type: str | None
    error_message: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    attempts: tuple[Attempt, ...] = field(default=())

    @property
    def error(self) -> str | None:
        """A one-line summary of why the task (or its last attempt) failed."""
        if self.error_type is None:
            return None
        return f"{self.error_type}: {self.error_message or ''}".rstrip(": ")

    @property
    def done(self) -> bool:
        return self.state.terminal

    @classmethod
    def from_row(cls, row: dict[str, Any], attempts: tuple[Attempt, ...] = ()) -> Task:
        return cls(
            id=int(row["id"]),
            state=TaskState(row["state"]),
            plugin=row["plugin"],
            plugin_version=row["plugin_version"],
            function=row["function"],
            args=json.loads(row["args"]),
            kwargs=json.loads(row["kwargs"]),
            priority=int(row["priority"]),
            datacenter=row["datacenter"],
            idempotency_key=row["idempotency_key"],
            not_before=_utc(row["not_before"]),
            not_after=_utc(row["not_after"]),
            run_after=_utc(row["run_after"]),
            timeout=row["timeout_seconds"],
            max_attempts=int(row["max_attempts"]),
            retry_backoff=row["retry_backoff_seconds"],
            limits=None if row["limits"] is None else json.loads(row["limits"]),
            concurrency_key=row["concurrency_key"],
            concurrency_limit=row["concurrency_limit"],
            fence=int(row["fence"]),
            owner=row["owner"],
            owner_datacenter=row["owner_datacenter"],
            attempt=int(row["attempt"]),
            failures=int(row["failures"]),
            reclaims=int(row["reclaims"]),
            heartbeat_at=_utc(row["heartbeat_at"]),
            progress=row["progress"],
            progress_message=row["progress_message"],
            abort_requested=bool(row["abort_requested"]),
            result=None if row["result"] is None else json.loads(row["result"]),
            error_type=row["error_type"],
            error_message=row["error_message"],
            created_at=_utc(row["created_at"]),
            started_at=_utc(row["started_at"]),
            finished_at=_utc(row["finished_at"]),
            attempts=attempts,
        )

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "attempts"}
        data["error"] = self.error
        data["attempts"] = [a.to_dict() for a in self.attempts]
        return _jsonable(data)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, TaskState | Outcome):
            out[key] = value.value
        else:
            out[key] = value
    return out
