"""taskman.cluster.attempts: backoff, and how an attempt's ending maps to a task state."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, cast

import pytest

from taskman.cluster.attempts import (
    ActiveAttempt,
    backoff,
    ending_from_exit,
    ending_from_message,
    failure_ending,
)
from taskman.plugins import Plugin
from taskman.runner import Runner
from taskman.states import Outcome, TaskState
from taskman.store import Claim, Ending

CAP = 300.0


def make_claim(**changes: Any) -> Claim:
    claim = Claim(
        task_id=42,
        attempt=1,
        fence=7,
        plugin="demo",
        plugin_version=None,
        function="demo.tasks:add",
        args=[1, 2],
        kwargs={},
        timeout=30.0,
        max_attempts=3,
        failures=0,
        retry_backoff=2.0,
        abort_requested=False,
    )
    return replace(claim, **changes)


def make_active(stop_reason: Outcome | None = None, **claim_changes: Any) -> ActiveAttempt:
    # These functions read only claim and stop_reason; plugin and runner are stand-ins.
    return ActiveAttempt(
        claim=make_claim(**claim_changes),
        plugin=cast(Plugin, object()),
        runner=cast(Runner, object()),
        deadline=None,
        stop_reason=stop_reason,
    )


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """random.uniform(0.5, 1.5) returns its midpoint: backoff becomes exact."""
    monkeypatch.setattr(random, "uniform", lambda low, high: (low + high) / 2)


# -- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [0.0, -1.0])
def test_backoff_with_no_base_is_zero(base: float) -> None:
    assert backoff(base, 1, CAP) == 0.0
    assert backoff(base, 50, CAP) == 0.0


@pytest.mark.usefixtures("no_jitter")
def test_backoff_doubles_with_each_failure() -> None:
    assert [backoff(1.0, n, CAP) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff(1.0, 0, CAP) == 1.0  # no failures yet: the base


@pytest.mark.usefixtures("no_jitter")
def test_backoff_respects_the_cap() -> None:
    assert backoff(1.0, 9, CAP) == 256.0
    assert backoff(1.0, 10, CAP) == CAP
    assert backoff(1.0, 1000, CAP) == CAP
    assert backoff(5.0, 3, 10.0) == 10.0


def test_backoff_jitter_stays_within_half_and_one_and_a_half_times() -> None:
    random.seed(12345)
    for failures, nominal in [(1, 2.0), (3, 8.0)]:
        draws = [backoff(2.0, failures, CAP) for _ in range(2000)]
        assert all(0.5 * nominal <= d <= 1.5 * nominal for d in draws)
        # The jitter really spreads: both halves of the range are used.
        assert min(draws) < 0.6 * nominal
        assert max(draws) > 1.4 * nominal


def test_backoff_jitter_never_exceeds_the_cap() -> None:
    random.seed(12345)
    draws = [backoff(2.0, 20, CAP) for _ in range(2000)]
    assert max(draws) == CAP
    assert min(draws) >= 0.5 * CAP


def test_backoff_jitter_is_reproducible_with_a_seed() -> None:
    random.seed(7)
    first = [backoff(1.0, 3, CAP) for _ in range(5)]
    random.seed(7)
    assert [backoff(1.0, 3, CAP) for _ in range(5)] == first
    assert len(set(first)) == 5


# -- failure_ending ------------------------------------------------------------------------


@pytest.mark.usefixtures("no_jitter")
def test_failure_retries_while_attempts_remain() -> None:
    ending = failure_ending(make_claim(failures=0), Outcome.ERROR, "ValueError", "boom")
    assert ending == Ending(
        Outcome.ERROR, TaskState.QUEUED, "ValueError", "boom", None, retry_delay=2.0
    )
    assert ending.counts_as_failure
    assert ending.summary == "boom"
    second = failure_ending(make_claim(failures=1), Outcome.ERROR, "ValueError", "boom")
    assert second.state is TaskState.QUEUED
    assert second.retry_delay == 4.0


def test_failure_with_no_attempts_left_fails_the_task() -> None:
    ending = failure_ending(
        make_claim(failures=2), Outcome.ERROR, "ValueError", "boom", traceback="tb"
    )
    assert ending.state is TaskState.FAILED
    assert ending.outcome is Outcome.ERROR
    # The attempt keeps its own error; the task's summary says why it stopped.
    assert ending.error_message == "boom"
    assert ending.task_message == "boom (attempt 3 of 3; no attempts left)"
    assert ending.summary == "boom (attempt 3 of 3; no attempts left)"
    assert ending.traceback == "tb"
    assert ending.retry_delay is None
    assert ending.counts_as_failure


def test_single_attempt_task_fails_at_once() -> None:
    ending = failure_ending(make_claim(max_attempts=1), Outcome.CRASHED, "RunnerCrashed", "x")
    assert ending.state is TaskState.FAILED
    assert ending.error_message == "x"
    assert ending.summary == "x (attempt 1 of 1; no attempts left)"


def test_permanent_failure_fails_at_once_with_the_message_unchanged() -> None:
    ending = failure_ending(
        make_claim(failures=0, max_attempts=10), Outcome.ERROR, "Bad", "bad input", permanent=True
    )
    assert ending.state is TaskState.FAILED
    assert ending.error_message == "bad input"
    assert ending.task_message is None
    assert ending.summary == "bad input"
    assert ending.retry_delay is None


@pytest.mark.usefixtures("no_jitter")
def test_failure_backoff_uses_the_cap() -> None:
    claim = make_claim(failures=5, max_attempts=100, retry_backoff=10.0)
    assert failure_ending(claim, Outcome.ERROR, "E", "m", backoff_cap=60.0).retry_delay == 60.0


def test_failure_with_zero_backoff_retries_immediately() -> None:
    claim = make_claim(retry_backoff=0.0)
    assert failure_ending(claim, Outcome.ERROR, "E", "m").retry_delay == 0.0


# -- ending_from_message -------------------------------------------------------------------


def error(**fields: Any) -> dict[str, Any]:
    message = {"t": "error", "type": "ValueError", "message": "boom", "traceback": "TB"}
    message.update(fields)
    return message


def test_result_succeeds() -> None:
    ending = ending_from_message(make_active(), {"t": "result", "value": {"a": [1, 2]}}, CAP)
    assert ending == Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json='{"a":[1,2]}')


def test_result_of_none_is_json_null() -> None:
    ending = ending_from_message(make_active(), {"t": "result", "value": None}, CAP)
    assert ending.result_json == "null"


@pytest.mark.parametrize("reason", [Outcome.ABORTED, Outcome.TIMEOUT, Outcome.FENCED])
def test_result_succeeds_even_when_the_node_was_stopping_it(reason: Outcome) -> None:
    ending = ending_from_message(make_active(reason), {"t": "result", "value": 1}, CAP)
    assert ending.state is TaskState.SUCCEEDED
    assert ending.result_json == "1"


@pytest.mark.usefixtures("no_jitter")
def test_error_is_retried() -> None:
    ending = ending_from_message(make_active(), error(), CAP)
    assert ending == Ending(
        Outcome.ERROR, TaskState.QUEUED, "ValueError", "boom", "TB", retry_delay=2.0
    )


def test_error_on_the_last_attempt_fails() -> None:
    ending = ending_from_message(make_active(failures=2), error(), CAP)
    assert ending.state is TaskState.FAILED
    assert ending.outcome is Outcome.ERROR
    assert ending.error_message == "boom"
    assert ending.summary == "boom (attempt 3 of 3; no attempts left)"


def test_permanent_error_fails_at_once() -> None:
    ending = ending_from_message(make_active(), error(permanent=True, type="PermanentError"), CAP)
    assert ending == Ending(Outcome.ERROR, TaskState.FAILED, "PermanentError", "boom", "TB")


def test_error_with_missing_fields_has_defaults() -> None:
    ending = ending_from_message(make_active(), {"t": "error"}, CAP)
    assert ending.error_type == "Error"
    assert ending.error_message == ""
    assert ending.traceback is None
    assert ending.state is TaskState.QUEUED


def test_function_not_found_is_rejected_without_retry() -> None:
    ending = ending_from_message(
        make_active(), error(type="FunctionNotFound", message="No module named 'x'"), CAP
    )
    assert ending == Ending(
        Outcome.REJECTED, TaskState.FAILED, "FunctionNotFound", "No module named 'x'", "TB"
    )
    assert ending.counts_as_failure


def test_error_after_abort_request_is_aborted() -> None:
    ending = ending_from_message(make_active(Outcome.ABORTED), error(type="Terminated"), CAP)
    assert ending == Ending(
        Outcome.ABORTED,
        TaskState.ABORTED,
        "Aborted",
        "aborted on request",
        "TB",
        counts_as_failure=False,
    )


@pytest.mark.usefixtures("no_jitter")
def test_error_after_timeout_is_a_timeout_and_retried() -> None:
    ending = ending_from_message(make_active(Outcome.TIMEOUT), error(type="Terminated"), CAP)
    assert ending == Ending(
        Outcome.TIMEOUT,
        TaskState.QUEUED,
        "Timeout",
        "the task ran longer than its timeout of 30.0 s",
        "TB",
        retry_delay=2.0,
    )


def test_timeout_on_the_last_attempt_fails() -> None:
    ending = ending_from_message(
        make_active(Outcome.TIMEOUT, failures=2, timeout=5.0), error(permanent=True), CAP
    )
    assert ending.state is TaskState.FAILED
    assert ending.outcome is Outcome.TIMEOUT
    assert ending.error_message == "the task ran longer than its timeout of 5.0 s"
    assert ending.summary == (
        "the task ran longer than its timeout of 5.0 s (attempt 3 of 3; no attempts left)"
    )


# -- ending_from_exit ----------------------------------------------------------------------


@pytest.mark.usefixtures("no_jitter")
def test_crash_is_retried() -> None:
    ending = ending_from_exit(make_active(), "was killed by SIGKILL", CAP)
    assert ending == Ending(
        Outcome.CRASHED,
        TaskState.QUEUED,
        "RunnerCrashed",
        "the runner was killed by SIGKILL before reporting a result",
        None,
        retry_delay=2.0,
    )


def test_crash_on_the_last_attempt_fails() -> None:
    ending = ending_from_exit(make_active(failures=2), "exited with status 1", CAP)
    assert ending.state is TaskState.FAILED
    assert ending.outcome is Outcome.CRASHED
    assert ending.error_message == "the runner exited with status 1 before reporting a result"
    assert ending.summary == (
        "the runner exited with status 1 before reporting a result "
        "(attempt 3 of 3; no attempts left)"
    )


def test_exit_after_abort_is_aborted() -> None:
    ending = ending_from_exit(make_active(Outcome.ABORTED), "was killed by SIGTERM", CAP)
    assert ending == Ending(
        Outcome.ABORTED,
        TaskState.ABORTED,
        "Aborted",
        "aborted on request (was killed by SIGTERM)",
        counts_as_failure=False,
    )


@pytest.mark.usefixtures("no_jitter")
def test_exit_after_timeout_is_a_timeout() -> None:
    ending = ending_from_exit(make_active(Outcome.TIMEOUT, timeout=1.5), "was killed", CAP)
    assert ending.outcome is Outcome.TIMEOUT
    assert ending.state is TaskState.QUEUED
    assert ending.error_type == "Timeout"
    assert ending.error_message == "the task ran longer than its timeout of 1.5 s"
    assert ending.retry_delay == 2.0
    assert ending.counts_as_failure


def test_fenced_exit_requeues_at_once_and_is_not_the_tasks_fault() -> None:
    # Even on the last attempt: the node gave up, the task did not fail.
    ending = ending_from_exit(make_active(Outcome.FENCED, failures=2), "was killed", CAP)
    assert ending == Ending(
        Outcome.FENCED,
        TaskState.QUEUED,
        "NodeGaveUp",
        "the node stopped the runner (was killed)",
        retry_delay=0.0,
        counts_as_failure=False,
    )


def test_active_attempt_key_is_task_and_fence() -> None:
    assert make_active().key == (42, 7)
