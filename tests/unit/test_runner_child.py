"""taskman.runner.child: the pure helpers (resolving a function, encoding an error)."""

from __future__ import annotations

import json
import os.path

import pytest

from taskman import runtime
from taskman.runner.child import error_message, resolve


def test_resolve_module_function() -> None:
    assert resolve("json:dumps") is json.dumps


def test_resolve_dotted_module_and_attribute_path() -> None:
    assert resolve("os.path:join") is os.path.join
    assert resolve("json:JSONDecoder.decode") is json.JSONDecoder.decode


def test_resolve_non_callable_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"os\.path:sep is not callable"):
        resolve("os.path:sep")


def test_resolve_missing_module_or_attribute() -> None:
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        resolve("no_such_module_xyz:f")
    with pytest.raises(AttributeError, match="no_such_function"):
        resolve("json:no_such_function")


def _raised(exc: BaseException) -> BaseException:
    """The exception with a real traceback, as the child sees it."""
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_error_message_for_a_builtin_exception() -> None:
    message = error_message(_raised(ValueError("bad value")), permanent=False)
    assert set(message) == {"t", "type", "message", "traceback", "permanent"}
    assert message["t"] == "error"
    assert message["type"] == "ValueError"
    assert message["message"] == "bad value"
    assert message["permanent"] is False
    assert "Traceback (most recent call last)" in message["traceback"]
    assert "in _raised" in message["traceback"]
    assert message["traceback"].rstrip().endswith("ValueError: bad value")
    json.dumps(message, allow_nan=False)  # what the channel sends


def test_error_message_qualifies_non_builtin_types_and_marks_permanent() -> None:
    message = error_message(_raised(runtime.PermanentError("no")), permanent=True)
    assert message["type"] == "taskman.runtime.PermanentError"
    assert message["permanent"] is True


def test_error_message_kind_overrides_the_type() -> None:
    message = error_message(_raised(ImportError("x")), permanent=True, kind="FunctionNotFound")
    assert message["type"] == "FunctionNotFound"
    assert message["message"] == "x"


def test_error_message_truncates_long_text() -> None:
    message = error_message(_raised(RuntimeError("m" * 20_000)), permanent=False)
    assert message["message"] == "m" * 10_000
    assert len(message["traceback"]) <= 200_000


def test_the_node_knows_the_childs_orphaned_exit_status() -> None:
    # The child imports nothing of ours, so the node keeps its own copy.
    from taskman.runner import EXIT_ORPHANED
    from taskman.runner.child import EXIT_ORPHANED as CHILDS

    assert EXIT_ORPHANED == CHILDS
