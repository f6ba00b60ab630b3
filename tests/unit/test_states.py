"""taskman.states: the transition table and the state values, pinned; and the public API."""

from __future__ import annotations

import taskman
from taskman.states import ALLOWED_TRANSITIONS, TERMINAL_STATES, Outcome, TaskState

Q, R, S, F, A, E = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.ABORTED,
    TaskState.EXPIRED,
)


def test_allowed_transitions_table_is_pinned() -> None:
    assert {
        Q: frozenset({R, A, E, F}),
        R: frozenset({S, F, A, Q}),
        S: frozenset(),
        F: frozenset({Q}),  # a retry asked for (RETRY_TASK)
        A: frozenset({Q}),
        E: frozenset({Q}),
    } == ALLOWED_TRANSITIONS


def test_terminal_states() -> None:
    assert {F, S, A, E} == TERMINAL_STATES
    for state in TaskState:
        assert state.terminal is (state in {S, F, A, E})


def test_only_running_may_succeed_and_only_queued_may_expire() -> None:
    assert [s for s in TaskState if S in ALLOWED_TRANSITIONS[s]] == [R]
    assert [s for s in TaskState if E in ALLOWED_TRANSITIONS[s]] == [Q]
    assert Q not in ALLOWED_TRANSITIONS[Q]
    assert R not in ALLOWED_TRANSITIONS[R]


def test_task_state_values() -> None:
    assert [s.value for s in TaskState] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "aborted",
        "expired",
    ]
    assert TaskState("queued") == "queued"
    assert TaskState("queued") is TaskState.QUEUED
    assert str(TaskState.RUNNING) == "running"
    assert f"{TaskState.FAILED}" == "failed"


def test_outcome_values() -> None:
    assert {o.value for o in Outcome} == {
        "running",
        "succeeded",
        "error",
        "crashed",
        "timeout",
        "aborted",
        "node_lost",
        "heartbeat_timeout",
        "fenced",
        "rejected",
    }
    assert Outcome("fenced") == "fenced"
    assert str(Outcome.NODE_LOST) == "node_lost"


def test_public_api_is_pinned() -> None:
    """A change to taskman's public names must change this list."""
    assert taskman.__all__ == [
        "AmbiguousCommitError",
        "Attempt",
        "Client",
        "ConfigError",
        "CoordinationError",
        "FencedError",
        "IdempotencyConflictError",
        "Outcome",
        "PayloadTooLargeError",
        "PluginError",
        "RunnerError",
        "SchemaError",
        "StoreError",
        "Task",
        "TaskNotFoundError",
        "TaskRequest",
        "TaskState",
        "TaskStateError",
        "TaskmanError",
        "TransientStoreError",
        "UnservedError",
        "ValidationError",
        "WaitTimeoutError",
        "__version__",
    ]
    assert taskman.__all__ == sorted(taskman.__all__)
    for name in taskman.__all__:
        assert hasattr(taskman, name), name
    assert taskman.__version__ == "0.1.0"
