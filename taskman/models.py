"""Plain, frozen views of a task and its attempts: what the client returns, and the call
one attempt makes (``AttemptCall``, which the store's claim extends and the runner runs)."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from taskman.states import Outcome, TaskState


def _utc(value: datetime | None) -> datetime | None:
    # The store keeps UTC in DATETIME columns; hand out aware datetimes.
    return None if value is None else value.replace(tzinfo=UTC)


def _as_is(value: Any) -> Any:
    return value


def _json_or_none(value: str | None) -> Any:
    return None if value is None else json.loads(value)


# The one mapper of the tasks table: each field a task view may have, the column it
# is read from and how. Task, the UI's TaskRow and the node's Claim and Candidate all
# read their rows through ``task_fields``, so a column is decoded the same way everywhere.
TASK_COLUMNS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "id": ("id", int),
    "task_id": ("id", int),
    "state": ("state", TaskState),
    "plugin": ("plugin", _as_is),
    "plugin_version": ("plugin_version", _as_is),
    "function": ("function", _as_is),
    "args": ("args", json.loads),
    "kwargs": ("kwargs", json.loads),
    "priority": ("priority", int),
    "datacenter": ("datacenter", _as_is),
    "idempotency_key": ("idempotency_key", _as_is),
    "not_before": ("not_before", _utc),
    "not_after": ("not_after", _utc),
    "run_after": ("run_after", _utc),
    "timeout": ("timeout_seconds", _as_is),
    "max_attempts": ("max_attempts", int),
    "retry_backoff": ("retry_backoff_seconds", _as_is),
    "limits": ("limits", _json_or_none),
    "concurrency_key": ("concurrency_key", _as_is),
    "concurrency_limit": ("concurrency_limit", _as_is),
    "fence": ("fence", int),
    "owner": ("owner", _as_is),
    "owner_datacenter": ("owner_datacenter", _as_is),
    "attempt": ("attempt", int),
    "failures": ("failures", int),
    "reclaims": ("reclaims", int),
    "heartbeat_at": ("heartbeat_at", _utc),
    "progress": ("progress", _as_is),
    "progress_message": ("progress_message", _as_is),
    "abort_requested": ("abort_requested", bool),
    "result": ("result", _json_or_none),
    "error_type": ("error_type", _as_is),
    "error_message": ("error_message", _as_is),
    "created_at": ("created_at", _utc),
    "started_at": ("started_at", _utc),
    "finished_at": ("finished_at", _utc),
}


@functools.cache
def _task_plan(view: type) -> tuple[tuple[str, str, Callable[[Any], Any]], ...]:
    return tuple(
        (f.name, *TASK_COLUMNS[f.name]) for f in dataclasses.fields(view) if f.name in TASK_COLUMNS
    )


def task_fields(view: type, row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of dataclass ``view`` that are tasks columns, decoded from ``row``.

    Fields that are not columns (a task's attempts, a claim's wait) are the caller's.
    """
    return {name: decode(row[column]) for name, column, decode in _task_plan(view)}


@dataclass(frozen=True)
class AttemptCall:
    """Which function attempt ``attempt`` of a task calls, with what, under which token.

    One shape for the node's two sides: ``store.Claim`` extends it with what the node
    needs to supervise the attempt, and ``runner.RunnerSpec`` carries the claim itself
    as its ``call``: nothing copies these fields from one to the other.
    """

    task_id: int
    attempt: int
    fence: int
    function: str
    args: list[Any]
    kwargs: dict[str, Any]


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
    def from_row(cls, row: Mapping[str, Any], attempts: tuple[Attempt, ...] = ()) -> Task:
        return cls(**task_fields(cls, row), attempts=attempts)

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
