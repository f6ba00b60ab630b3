"""The records the store reads and writes about attempts: claims, endings, running views."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskman.models import AttemptCall, task_fields
from taskman.states import Outcome, TaskState
from taskman.text import clean_optional


@dataclass(frozen=True)
class Candidate:
    """A queued task a node may try to claim."""

    task_id: int
    attempt: int  # attempts so far; the claim makes attempt + 1
    plugin: str
    plugin_version: str | None
    function: str
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    priority: int = 0


@dataclass(frozen=True)
class Claim(AttemptCall):
    """What a node needs to run the attempt it just claimed: the call, and how to supervise it."""

    plugin: str
    plugin_version: str | None
    timeout: float | None
    max_attempts: int
    failures: int
    retry_backoff: float | None  # None: the node's default
    abort_requested: bool
    limits: dict[str, int] | None = None
    # Seconds from due (submit, not_before, retry, or back in the queue after a reclaim)
    # to this claim, by the DB clock.
    waited: float = 0.0


@dataclass(frozen=True)
class ClaimRequest:
    """One task of a claim batch: the attempt count seen and the token to claim it under."""

    task_id: int
    seen_attempt: int
    fence: int
    plugin_version: str


@dataclass(frozen=True)
class Ending:
    """How an attempt ended, and what that makes of its task (``cluster/attempts.py`` decides)."""

    outcome: Outcome
    state: TaskState  # the task's next state; QUEUED: run again after ``retry_delay``
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    result_json: str | None = None
    retry_delay: float | None = None
    counts_as_failure: bool = True
    task_message: str | None = None  # the task's summary, when it differs from the attempt's

    @property
    def summary(self) -> str | None:
        """The message the task row keeps (the attempt row keeps ``error_message``)."""
        return self.error_message if self.task_message is None else self.task_message


@dataclass(frozen=True)
class Finish:
    """One ending to record for attempt ``attempt`` of a task, fenced by ``fence``."""

    task_id: int
    attempt: int
    fence: int
    ending: Ending
    output_tail: str | None = None


def storable(r: Finish) -> Finish:
    """The record with its text cut to its columns and free of what no column takes."""
    ending = dataclasses.replace(
        r.ending,
        error_type=clean_optional(r.ending.error_type, 255),
        error_message=clean_optional(r.ending.error_message, 60_000 // 4),
        traceback=clean_optional(r.ending.traceback),
        task_message=clean_optional(r.ending.task_message, 60_000 // 4),
    )
    return dataclasses.replace(r, ending=ending, output_tail=clean_optional(r.output_tail))


def claim_from(row: dict[str, Any] | None, fence: int) -> Claim | None:
    if row is None or int(row["fence"]) != fence:
        return None
    return Claim(**task_fields(Claim, row), waited=max(0, int(row["wait_us"] or 0)) / 1e6)


@dataclass(frozen=True)
class RunningView:
    """The database's view of one attempt a node believes it owns."""

    task_id: int
    fence: int
    state: str
    abort_requested: bool


@dataclass(frozen=True)
class RunningTask:
    """A running task as the leader's reaper sees it."""

    task_id: int
    attempt: int
    fence: int
    owner: str | None
    heartbeat_at: datetime | None
    reclaims: int
