"""Property tests: no input crashes validation or the runner protocol; garbage is never accepted."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from taskman.errors import TaskmanError, ValidationError
from taskman.runner import protocol
from taskman.validation import FUNCTION_REF, build_task

NOW = datetime(2026, 6, 1, tzinfo=UTC)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(),
    st.lists(st.integers()),
    st.dictionaries(st.text(), st.integers()),
    st.datetimes(),
    st.datetimes(timezones=st.just(UTC)),
    st.sets(st.integers()),
    st.tuples(st.text()),
)


@settings(max_examples=400, deadline=None)
@given(
    function=st.one_of(st.text(), st.sampled_from(["demo.tasks:add", "a:b", "x.y:z.w"]), anything),
    plugin=st.one_of(st.text(max_size=120), st.just("demo"), anything),
    args=st.one_of(st.lists(json_values, max_size=5), anything),
    kwargs=st.one_of(st.dictionaries(st.text(), json_values, max_size=5), anything),
    priority=st.one_of(st.integers(), anything),
    not_before=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC)), anything),
    not_after=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC)), anything),
    timeout=st.one_of(st.none(), st.floats(), anything),
    max_attempts=st.one_of(st.none(), st.integers(), anything),
    limits=st.one_of(st.none(), st.dictionaries(st.text(), st.integers()), anything),
)
def test_build_task_accepts_only_sound_submissions(**fields: Any) -> None:
    try:
        task = build_task(now=NOW, **fields)
    except ValidationError:
        return  # a clear refusal is fine; anything else would be a crash
    # What was accepted is sound: a valid reference, JSON that round-trips, sane bounds.
    assert FUNCTION_REF.match(task.function)
    assert isinstance(json.loads(task.args_json), list)
    assert isinstance(json.loads(task.kwargs_json), dict)
    assert -(2**31) <= task.priority < 2**31
    assert 1 <= task.max_attempts <= 1000
    assert task.timeout is None or (math.isfinite(task.timeout) and task.timeout > 0)
    if task.not_after is not None:
        assert task.not_after > NOW.replace(tzinfo=None)
        if task.not_before is not None:
            assert task.not_after > task.not_before
    for dt in (task.not_before, task.not_after):
        assert dt is None or dt.tzinfo is None  # stored as naive UTC
    if task.limits_json is not None:
        assert all(v >= 1 for v in json.loads(task.limits_json).values())


@given(st.binary(max_size=512))
def test_runner_messages_are_decoded_or_refused_never_crash(line: bytes) -> None:
    try:
        message = protocol.decode(line)
    except ValueError:
        return  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
    assert isinstance(message, dict) and "t" in message


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_protocol_round_trips_any_json_object(body: dict[str, Any]) -> None:
    message = {"t": "progress", **body}
    assert protocol.decode(protocol.encode(message)) == message


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_not_after_near_now_is_refused_unless_in_the_future(seconds: int) -> None:
    try:
        task = build_task("m:f", plugin="p", not_after=NOW + timedelta(seconds=seconds), now=NOW)
    except TaskmanError:
        assert seconds <= 0
    else:
        assert seconds > 0 and task.not_after is not None
