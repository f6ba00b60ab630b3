"""One place where a node's task events are emitted; logs, metrics and counters listen.

A step says what happened once (``events.emit("task.fenced", write=..., ...)``);
each listener turns it into its own form. Like dramatiq's middleware: a new
metric or log field is one listener's change, not an edit at every call site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskman import metrics

Listener = Callable[[str, dict[str, Any]], None]

# Fields that feed metrics only: too noisy, or already in the line, for the logs.
METRIC_ONLY = frozenset(
    {"claim_seconds", "waited", "attempt_seconds", "counts_as_failure", "spawn_seconds"}
)

# Log level per event; absent: info. None: not logged (counted, measured).
LEVELS: dict[str, str | None] = {
    "task.fenced": "warning",
    "task.given_up": "warning",
    "task.orphaned_by_stall": "warning",
    "task.record_failed": "warning",
    "node.self_fenced": "error",
    "loop.error": "error",
    "runner.message_failed": "exception",  # emitted inside the except block
    "claim.lost_race": None,
    "claim.concurrency_full": None,
    "task.recorded": None,
    "runner.ready": None,
}

# The node's own tally (logged at stop): event -> counter name.
COUNTED = {
    "task.claimed": "claimed",
    "task.fenced": "fenced",
    "task.retry": "retried",
    "task.succeeded": "succeeded",
    "task.failed": "failed",
    "task.aborted": "aborted",
    "node.self_fenced": "self_fenced",
    "loop.error": "loop_errors",
    "runner.message_failed": "runner_message_failed",
    "claim.lost_race": "claim_lost_race",
    "claim.concurrency_full": "concurrency_full",
}


class TaskEvents:
    def __init__(self, listeners: list[Listener] | None = None) -> None:
        self.listeners: list[Listener] = list(listeners or [])

    def emit(self, name: str, **fields: Any) -> None:
        for listener in self.listeners:
            listener(name, fields)


class LogListener:
    def __init__(self, log: Any) -> None:
        self.log = log

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        level = LEVELS.get(name, "info")
        if level is None:
            return
        shown = {k: v for k, v in fields.items() if k not in METRIC_ONLY}
        getattr(self.log, level)(name, **shown)


class Counters:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        counter = COUNTED.get(name)
        if counter is not None:
            self.counts[counter] = self.counts.get(counter, 0) + 1


_ENDED = {
    "task.succeeded": metrics.TASKS_SUCCEEDED,
    "task.failed": metrics.TASKS_FAILED,
    "task.aborted": metrics.TASKS_ABORTED,
}


def metrics_listener(name: str, fields: dict[str, Any]) -> None:
    """Prometheus, from the same events (names and labels: docs and taskman/metrics.py)."""
    if name == "task.claimed":
        metrics.TASKS_CLAIMED.labels(fields["plugin"]).inc()
        metrics.CLAIM_SECONDS.observe(fields["claim_seconds"])
        metrics.SUBMIT_TO_START.observe(fields["waited"])
    elif name == "task.fenced":
        metrics.FENCED.labels(fields["write"]).inc()
    elif name == "task.retry":
        if fields["counts_as_failure"]:
            metrics.TASKS_RETRIED.labels(fields["plugin"]).inc()
    elif name in _ENDED:
        _ENDED[name].labels(fields["plugin"]).inc()
    elif name == "task.recorded" and fields.get("attempt_seconds") is not None:
        metrics.ATTEMPT_SECONDS.labels(fields["plugin"], fields["outcome"]).observe(
            fields["attempt_seconds"]
        )
    elif name == "runner.ready":
        metrics.SPAWN_SECONDS.observe(fields["spawn_seconds"])
    elif name == "node.self_fenced":
        metrics.SELF_FENCED.inc()
    elif name == "loop.error":
        metrics.LOOP_ERRORS.labels(fields["loop"]).inc()


def node_events(log: Any) -> tuple[TaskEvents, Counters]:
    """The node's emitter: counters, metrics and logs listening."""
    counters = Counters()
    return TaskEvents([counters, metrics_listener, LogListener(log)]), counters
