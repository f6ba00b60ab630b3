"""What a runner sends is task-controlled: every message the node keeps is safe to store."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskman.runner import protocol
from taskman.text import UnsafeValueError, clean_json, clean_text

# Text as task code can make it: lone surrogates (category Cs), NUL and controls included.
hostile_text = st.text(st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["\udcff", "a\x00b", "\ud800\udc00x", "\x1b[2J", "x" * 300]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)  # NaN: a test of its own
    | hostile_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=12,
)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    return []


@given(
    st.sampled_from(["ready", "hb", "progress", "result", "error", "exit", "spec", 3, None]),
    st.dictionaries(
        st.sampled_from(["fraction", "message", "value", "type", "traceback", "permanent", "code"]),
        json_values,
        max_size=5,
    ),
)
def test_a_kept_message_holds_only_storable_text(kind: Any, body: dict[str, Any]) -> None:
    line = json.dumps({**body, "t": kind}).encode()  # json escapes what the runner sends
    try:
        message = protocol.from_runner(line)
    except UnsafeValueError:
        assert kind == "result"  # only a result can be refused outright (NaN inside)
        return
    if message is None:
        assert kind not in ("ready", "hb", "result", "error")
        return
    assert message["t"] in ("ready", "hb", "progress", "result", "error")
    for text in strings_in(message):
        text.encode("utf-8")  # no lone surrogate left
        if message["t"] != "result":
            assert "\x00" not in text
    if message["t"] == "progress":
        assert 0.0 <= message["fraction"] <= 1.0 and len(message["message"]) <= 1000
    if message["t"] == "error":
        assert 1 <= len(message["type"]) <= 255 and isinstance(message["permanent"], bool)


def test_a_forged_exit_and_nan_are_ignored_and_a_bad_result_refused() -> None:
    assert protocol.from_runner(b'{"t":"exit","code":0}\n') is None
    assert protocol.from_runner(b'{"t":"progress","fraction":NaN}\n') is None
    assert protocol.from_runner(b'{"t":"progress","fraction":0.5e1}\n') is None
    with pytest.raises(UnsafeValueError):
        protocol.from_runner(b'{"t":"result","value":' + b"[" * 300 + b"]" * 300 + b"}\n")


@given(hostile_text, st.integers(min_value=1, max_value=50))
def test_clean_text_is_storable_and_fits(text: str, limit: int) -> None:
    cleaned = clean_text(text, limit)
    cleaned.encode("utf-8")
    assert "\x00" not in cleaned and len(cleaned) <= limit
    if text.isascii() and "\x00" not in text:
        assert cleaned == text[:limit]  # ordinary text is left alone


def test_clean_json_escapes_surrogates_and_keeps_nul() -> None:
    assert clean_json({"k\udcff": ["v\udcff\x00"]}) == {"k\\udcff": ["v\\udcff\x00"]}
