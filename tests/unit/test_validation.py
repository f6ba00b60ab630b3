"""taskman.validation.build_task: every rejection, and what a valid submission becomes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from taskman.errors import PayloadTooLargeError, TaskmanError, ValidationError
from taskman.validation import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_RETRY_BACKOFF,
    NewTask,
    build_task,
    check_aware,
    check_function,
    check_plugin,
    check_version,
    encode_json,
)

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def build(**changes: Any) -> NewTask:
    """A valid submission with some arguments changed."""
    fields: dict[str, Any] = {"function": "demo.tasks:add", "plugin": "demo", "now": NOW}
    fields.update(changes)
    function = fields.pop("function")
    return build_task(function, **fields)


# -- function references -------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "demo.tasks.add",  # no colon
        "",  # empty
        "a:b:c",  # two colons
        "1mod:f",  # module starts with a digit
        "mod:1f",  # callable starts with a digit
        ":f",  # no module
        "mod:",  # no callable
        "mod.:f",  # empty module part
        "mod :f",  # whitespace
        "demo-tasks:f",  # not an identifier
    ],
)
def test_malformed_function_reference_is_rejected(reference: str) -> None:
    with pytest.raises(ValidationError, match="malformed function reference") as info:
        build(function=reference)
    assert repr(reference) in str(info.value)
    assert "package.module:callable" in str(info.value)


@pytest.mark.parametrize("reference", [None, 42, b"demo.tasks:add", ["demo.tasks:add"]])
def test_non_string_function_reference_is_rejected(reference: object) -> None:
    with pytest.raises(ValidationError, match="malformed function reference"):
        build(function=reference)


@pytest.mark.parametrize("reference", ["m:f", "a.b.c:d", "pkg.mod:Class.method", "_p:_f"])
def test_well_formed_function_reference_is_accepted(reference: str) -> None:
    assert check_function(reference) == reference
    assert build(function=reference).function == reference


# -- args and kwargs -----------------------------------------------------------------------


@pytest.mark.parametrize("args", ["abc", b"abc", {"a": 1}, 5, None, {1, 2}])
def test_args_must_be_list_or_tuple(args: object) -> None:
    with pytest.raises(ValidationError, match="args must be a list or tuple"):
        build(args=args)


def test_args_tuple_and_list_both_encode_as_json_array() -> None:
    assert build(args=(1, "x")).args_json == '[1,"x"]'
    assert build(args=[1, "x"]).args_json == '[1,"x"]'


@pytest.mark.parametrize("kwargs", [{1: "x"}, {("a",): 1}, {"ok": 1, None: 2}, ["a"], "a=1"])
def test_kwargs_must_be_dict_with_string_keys(kwargs: object) -> None:
    with pytest.raises(ValidationError, match="kwargs must be a dict with string keys"):
        build(kwargs=kwargs)


def test_kwargs_none_means_empty_dict() -> None:
    assert build(kwargs=None).kwargs_json == "{}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("args", [{1, 2}]),
        ("args", [object()]),
        ("args", [float("nan")]),
        ("args", [float("inf")]),
        ("kwargs", {"x": {1, 2}}),
        ("kwargs", {"x": object()}),
        ("kwargs", {"x": float("nan")}),
    ],
)
def test_arguments_must_be_json_serialisable(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=f"^{field} is not JSON-serialisable"):
        build(**{field: value})


def test_encode_json_is_compact_and_keeps_unicode() -> None:
    assert encode_json("args", ["é", {"a": 1}]) == '["é",{"a":1}]'


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        ["x", 5, -0.0, 1e300, 2**70, None, True, False],
        {"é": [1.5, {"nested": ["\u2028\n\"'\\", "🚀"]}], "b": None},
        [[[[["deep"]]]]],
    ],
)
def test_encode_json_is_what_json_dumps_makes(value: Any) -> None:
    # The encoder is built once (validation._reused_encoder): its output must stay json.dumps'.
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert encode_json("args", value) == expected
    assert encode_json("args", value) == expected  # and again: nothing kept between calls


def test_arguments_that_contain_themselves_are_refused() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    for _ in range(2):  # the error leaves nothing behind that fails the next call
        with pytest.raises(ValidationError, match=r"^args is not JSON-serialisable: it contains"):
            build(args=looped)
        assert build(args=[1, [1]]).args_json == "[1,[1]]"


# -- payload size --------------------------------------------------------------------------


def _payload_size(task: NewTask) -> int:
    return len(task.args_json.encode()) + len(task.kwargs_json.encode())


def test_payload_exactly_at_limit_passes_and_one_byte_over_fails() -> None:
    args = ["x" * 100]
    size = _payload_size(build(args=args))
    assert size == len('["' + "x" * 100 + '"]') + len("{}")
    assert _payload_size(build(args=args, max_payload=size)) == size
    with pytest.raises(PayloadTooLargeError) as info:
        build(args=args, max_payload=size - 1)
    message = str(info.value)
    assert f"{size} bytes" in message
    assert f"limit of {size - 1} bytes" in message


def test_payload_too_large_is_a_validation_error() -> None:
    assert issubclass(PayloadTooLargeError, ValidationError)
    assert issubclass(ValidationError, TaskmanError)
    with pytest.raises(ValidationError, match="over the limit"):
        build(kwargs={"blob": "y" * 50}, max_payload=20)


def test_payload_counts_utf8_bytes_not_characters() -> None:
    # '["éé"]' is 6 characters but 8 bytes; with '{}' that makes 10 bytes.
    assert _payload_size(build(args=["éé"], max_payload=10)) == 10
    with pytest.raises(PayloadTooLargeError, match="10 bytes"):
        build(args=["éé"], max_payload=9)


def test_default_payload_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_PAYLOAD == 1024 * 1024
    with pytest.raises(PayloadTooLargeError):
        build(args=["z" * DEFAULT_MAX_PAYLOAD])


# -- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["not_before", "not_after"])
def test_naive_datetimes_are_rejected(field: str) -> None:
    naive = datetime(2031, 1, 1, 0, 0, 0)
    with pytest.raises(ValidationError, match="naive") as info:
        build(**{field: naive})
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("value", ["2031-01-01T00:00:00Z", 1_900_000_000, 1.5])
def test_times_must_be_datetimes(value: object) -> None:
    with pytest.raises(ValidationError, match="not_before must be a datetime"):
        build(not_before=value)


def test_not_after_must_be_later_than_not_before() -> None:
    start = NOW + timedelta(hours=1)
    with pytest.raises(ValidationError, match="not_after must be later than not_before"):
        build(not_before=start, not_after=start)
    with pytest.raises(ValidationError, match="not_after must be later than not_before"):
        build(not_before=start, not_after=start - timedelta(seconds=1))
    task = build(not_before=start, not_after=start + timedelta(seconds=1))
    assert task.not_after == task.not_before + timedelta(seconds=1)  # type: ignore[operator]


def test_not_after_in_the_past_is_rejected_relative_to_now() -> None:
    with pytest.raises(ValidationError, match="already in the past") as info:
        build(not_after=NOW - timedelta(seconds=1))
    assert "2030-06-01T11:59:59Z" in str(info.value)
    with pytest.raises(ValidationError, match="already in the past"):
        build(not_after=NOW)
    assert build(not_after=NOW + timedelta(seconds=1)).not_after == datetime(2030, 6, 1, 12, 0, 1)


def test_not_after_past_check_honours_now_in_another_timezone() -> None:
    # 14:00 at UTC+2 is 12:00 UTC: a not_after of 12:30 UTC is still in the future.
    now = datetime(2030, 6, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    task = build(now=now, not_after=datetime(2030, 6, 1, 12, 30, tzinfo=UTC))
    assert task.not_after == datetime(2030, 6, 1, 12, 30)
    with pytest.raises(ValidationError, match="already in the past"):
        build(now=now, not_after=datetime(2030, 6, 1, 11, 59, tzinfo=UTC))


def test_aware_datetimes_are_stored_as_naive_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    new_york = timezone(timedelta(hours=-5))
    task = build(
        not_before=datetime(2030, 6, 2, 9, 0, tzinfo=tokyo),
        not_after=datetime(2030, 6, 2, 5, 30, tzinfo=new_york),
    )
    assert task.not_before == datetime(2030, 6, 2, 0, 0)
    assert task.not_before.tzinfo is None  # type: ignore[union-attr]
    assert task.not_after == datetime(2030, 6, 2, 10, 30)
    assert task.not_after.tzinfo is None  # type: ignore[union-attr]


def test_check_aware_passes_none_through() -> None:
    assert check_aware("not_before", None) is None


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [True, False, 2**31, -(2**31) - 1, 10**12, 1.0, "1", None])
def test_priority_must_be_a_32_bit_integer(priority: object) -> None:
    with pytest.raises(ValidationError, match="priority must be a 32-bit integer"):
        build(priority=priority)


@pytest.mark.parametrize("priority", [0, 1, -1, 2**31 - 1, -(2**31)])
def test_priority_within_32_bits_is_accepted(priority: int) -> None:
    assert build(priority=priority).priority == priority


@pytest.mark.parametrize("attempts", [0, -1, 1001, True, False, 2.0, "3"])
def test_max_attempts_must_be_1_to_1000(attempts: object) -> None:
    with pytest.raises(ValidationError, match="max_attempts must be an integer from 1 to 1000"):
        build(max_attempts=attempts)


@pytest.mark.parametrize("attempts", [1, 1000])
def test_max_attempts_bounds_are_accepted(attempts: int) -> None:
    assert build(max_attempts=attempts).max_attempts == attempts


@pytest.mark.parametrize("timeout", [-1, -0.001, 0, 0.0])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValidationError, match="timeout must be positive"):
        build(timeout=timeout)


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), True, "10"])
def test_timeout_must_be_a_finite_number(timeout: object) -> None:
    with pytest.raises(ValidationError, match="timeout must be a number of seconds"):
        build(timeout=timeout)


def test_timeout_is_optional_and_stored_as_float() -> None:
    assert build().timeout is None
    assert build(timeout=5).timeout == 5.0
    assert isinstance(build(timeout=5).timeout, float)


@pytest.mark.parametrize("backoff", [float("nan"), float("-inf"), False, "1"])
def test_retry_backoff_must_be_a_finite_number(backoff: object) -> None:
    with pytest.raises(ValidationError, match="retry_backoff must be a number of seconds"):
        build(retry_backoff=backoff)


def test_retry_backoff_may_be_zero_but_not_negative() -> None:
    assert build(retry_backoff=0).retry_backoff == 0.0
    with pytest.raises(ValidationError, match="retry_backoff must be positive"):
        build(retry_backoff=-0.5)


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["", "-demo", "de mo", "demo/x", "x" * 101, None, 7])
def test_bad_plugin_name_is_rejected(plugin: object) -> None:
    with pytest.raises(ValidationError, match="invalid plugin name"):
        build(plugin=plugin)
    with pytest.raises(ValidationError, match="invalid plugin name"):
        check_plugin(plugin)


@pytest.mark.parametrize("version", ["1.x", "", "v1", "1.", ".1", "1..2", "1.2.3.4.5.6.7", 1, 1.0])
def test_bad_version_is_rejected(version: object) -> None:
    with pytest.raises(ValidationError, match="invalid plugin version") as info:
        build(version=version)
    assert "dotted numbers" in str(info.value)


@pytest.mark.parametrize("version", ["1", "1.0", "10.20.30", "1.2.3.4.5.6"])
def test_good_version_is_accepted(version: str) -> None:
    assert check_version(version) == version
    assert build(version=version).plugin_version == version


@pytest.mark.parametrize("datacenter", ["", "-dc", "dc 1", "dc/1", "x" * 65, 1])
def test_bad_datacenter_is_rejected(datacenter: object) -> None:
    with pytest.raises(ValidationError, match="invalid datacenter name"):
        build(datacenter=datacenter)


def test_datacenter_is_optional() -> None:
    assert build().datacenter is None
    assert build(datacenter="eu-west_1.a").datacenter == "eu-west_1.a"


@pytest.mark.parametrize("key", ["", "k" * 256, 5, b"key"])
def test_bad_idempotency_key_is_rejected(key: object) -> None:
    with pytest.raises(ValidationError, match="idempotency_key must be a non-empty string"):
        build(idempotency_key=key)


def test_idempotency_key_of_255_characters_is_accepted() -> None:
    assert build(idempotency_key="k" * 255).idempotency_key == "k" * 255


# -- the happy path ------------------------------------------------------------------------


def test_defaults() -> None:
    task = build(args=[1, 2])
    assert task == NewTask(
        request_id=task.request_id,
        plugin="demo",
        plugin_version=None,
        function="demo.tasks:add",
        args_json="[1,2]",
        kwargs_json="{}",
        priority=0,
        datacenter=None,
        not_before=None,
        not_after=None,
        timeout=None,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        retry_backoff=None,
        idempotency_key=None,
    )
    assert task.max_attempts == 3
    # No backoff given: the node's default (DEFAULT_RETRY_BACKOFF unless configured) applies.
    assert task.retry_backoff is None
    assert DEFAULT_RETRY_BACKOFF == 1.0


def test_request_id_is_32_hex_characters_and_unique_per_call() -> None:
    ids = {build().request_id for _ in range(20)}
    assert len(ids) == 20
    for request_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)


def test_new_task_is_frozen() -> None:
    task = build()
    with pytest.raises(AttributeError):
        task.priority = 5  # type: ignore[misc]
