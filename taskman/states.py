"""Task and attempt states, and the one table of allowed task transitions."""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    QUEUED = "queued"  # waiting for a node; also where retries and reclaimed tasks go back to
    RUNNING = "running"  # one node holds the claim under the task's current fencing token
    SUCCEEDED = "succeeded"  # terminal: the function returned; its result is stored
    FAILED = "failed"  # terminal: attempts exhausted, a permanent error, or the task can't be run
    ABORTED = "aborted"  # terminal: an application or operator asked for it to stop
    EXPIRED = "expired"  # terminal: not_after passed before any attempt started

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.ABORTED, TaskState.EXPIRED}
)

# Every state change the store makes, and no other. tests/unit/test_transitions.py
# reads each statement's from- and to-state out of the SQL of both backends and
# compares them with this table; the one statement whose to-state is a parameter
# (an attempt ending its task as failed or aborted) is checked by the store against
# it. No node or leader moves a task out of a terminal state: only a retry asked for
# (``Client.retry``, ``taskman retry``, the UI) queues a failed, aborted or expired one.
ALLOWED_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset(
        {TaskState.RUNNING, TaskState.ABORTED, TaskState.EXPIRED, TaskState.FAILED}
    ),
    TaskState.RUNNING: frozenset(
        {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.ABORTED, TaskState.QUEUED}
    ),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset({TaskState.QUEUED}),
    TaskState.ABORTED: frozenset({TaskState.QUEUED}),
    TaskState.EXPIRED: frozenset({TaskState.QUEUED}),
}


class Outcome(str, Enum):
    """How one attempt ended."""

    RUNNING = "running"  # not ended yet
    SUCCEEDED = "succeeded"  # the function returned a value
    ERROR = "error"  # the function raised
    CRASHED = "crashed"  # the runner died without reporting (signal, exit, out of memory)
    TIMEOUT = "timeout"  # the task's wall-clock timeout passed; the runner was killed
    ABORTED = "aborted"  # abort was requested; the runner was stopped
    NODE_LOST = "node_lost"  # the owner's ZooKeeper session ended; the leader reclaimed the task
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"  # the owner stopped heartbeating; reclaimed
    FENCED = "fenced"  # the owner's node gave up the attempt (self-fenced) before an outcome
    REJECTED = "rejected"  # the node could not start it: unknown function, bad plugin

    def __str__(self) -> str:
        return self.value
