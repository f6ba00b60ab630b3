"""taskman.runtime: what task code sees outside a runner, and progress throttling inside one."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from taskman import runtime


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts outside a runner; runtime._ctx is put back afterwards."""
    monkeypatch.setattr(runtime, "_ctx", runtime._Context())
    yield


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def sent(clock: Clock) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    runtime._bind(5, 2, 99, messages.append)
    return messages


# -- outside a runner ----------------------------------------------------------------------


def test_progress_outside_a_runner_does_nothing() -> None:
    assert runtime._ctx.send is None
    runtime.progress(0.5, "half")
    runtime.progress(0)
    runtime.progress(1)
    assert runtime._ctx.pending is None
    assert runtime._ctx.last_sent == 0.0


@pytest.mark.parametrize("fraction", [-0.01, 1.01, 2, float("nan"), float("inf")])
def test_progress_outside_0_to_1_is_a_value_error(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        runtime.progress(fraction)


@pytest.mark.parametrize("fraction", [True, False, "0.5", None, [0.5]])
def test_progress_that_is_not_a_number_is_a_type_error(fraction: object) -> None:
    with pytest.raises(TypeError, match="progress fraction must be a number"):
        runtime.progress(fraction)  # type: ignore[arg-type]


@pytest.mark.parametrize("function", [runtime.task_id, runtime.attempt, runtime.fencing_token])
def test_identity_outside_a_runner_raises(function: Any) -> None:
    with pytest.raises(RuntimeError, match="not running inside a taskman runner"):
        function()


def test_should_abort_is_false_until_set() -> None:
    assert runtime.should_abort() is False
    runtime._ctx.abort.set()
    assert runtime.should_abort() is True


def test_terminated_is_not_an_exception() -> None:
    assert issubclass(runtime.Terminated, BaseException)
    assert not issubclass(runtime.Terminated, Exception)
    assert issubclass(runtime.PermanentError, Exception)


# -- inside a runner -----------------------------------------------------------------------


def test_identity_inside_a_runner(sent: list[dict[str, Any]]) -> None:
    assert (runtime.task_id(), runtime.attempt(), runtime.fencing_token()) == (5, 2, 99)


def test_validation_still_applies_inside_a_runner(sent: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        runtime.progress(1.5)
    with pytest.raises(TypeError):
        runtime.progress(True)
    assert sent == []


def test_first_progress_is_sent_at_once(sent: list[dict[str, Any]]) -> None:
    runtime.progress(0.25, "a quarter")
    assert sent == [{"t": "progress", "fraction": 0.25, "message": "a quarter"}]


def test_two_quick_calls_send_one_and_flush_sends_the_held_back_one(
    sent: list[dict[str, Any]], clock: Clock
) -> None:
    runtime.progress(0.1, "first")
    clock.now += runtime.PROGRESS_MIN_INTERVAL / 2
    runtime.progress(0.2, "second")
    assert sent == [{"t": "progress", "fraction": 0.1, "message": "first"}]
    runtime._flush()
    assert sent[1:] == [{"t": "progress", "fraction": 0.2, "message": "second"}]
    runtime._flush()  # nothing more is held back
    assert len(sent) == 2


def test_only_the_newest_held_back_update_is_kept(sent: list[dict[str, Any]], clock: Clock) -> None:
    runtime.progress(0.1)
    for fraction in (0.2, 0.3, 0.4):
        clock.now += 0.01
        runtime.progress(fraction, f"at {fraction}")
    runtime._flush()
    assert [m["fraction"] for m in sent] == [0.1, 0.4]
    assert sent[-1]["message"] == "at 0.4"


def test_progress_after_the_interval_is_sent_and_drops_the_held_back_one(
    sent: list[dict[str, Any]], clock: Clock
) -> None:
    runtime.progress(0.1)
    clock.now += 0.01
    runtime.progress(0.2)
    clock.now += runtime.PROGRESS_MIN_INTERVAL
    runtime.progress(0.3)
    runtime._flush()
    assert [m["fraction"] for m in sent] == [0.1, 0.3]


def test_flush_restarts_the_throttle_interval(sent: list[dict[str, Any]], clock: Clock) -> None:
    runtime.progress(0.1)
    clock.now += 0.05
    runtime.progress(0.2)
    runtime._flush()  # sends 0.2 now
    clock.now += 0.06  # 0.11 s after 0.1, only 0.06 s after the flush
    runtime.progress(0.3)
    assert [m["fraction"] for m in sent] == [0.1, 0.2]
    assert runtime._ctx.pending == {"t": "progress", "fraction": 0.3, "message": ""}


def test_progress_message_is_a_truncated_string_and_fraction_a_float(
    sent: list[dict[str, Any]],
) -> None:
    runtime.progress(1, "x" * 5000)
    assert sent[0]["fraction"] == 1.0
    assert isinstance(sent[0]["fraction"], float)
    assert sent[0]["message"] == "x" * 1000


def test_flush_without_a_sender_does_nothing() -> None:
    runtime._ctx.pending = {"t": "progress", "fraction": 0.5, "message": ""}
    runtime._flush()
    assert runtime._ctx.pending is None
