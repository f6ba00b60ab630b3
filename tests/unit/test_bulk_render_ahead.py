"""submit_many renders a chunk's statement while the server runs the one before."""

from __future__ import annotations

import threading

import pytest

from taskman.store.bulk import _ahead


def test_items_come_in_order_and_each_is_rendered_once() -> None:
    calls: list[int] = []

    def render(item: int) -> str:
        calls.append(item)
        return f"sql {item}"

    assert list(_ahead([1, 2, 3, 4], render)) == ["sql 1", "sql 2", "sql 3", "sql 4"]
    assert sorted(calls) == [1, 2, 3, 4]
    assert list(_ahead([], render)) == [] and list(_ahead([9], render)) == ["sql 9"]


def test_the_next_item_renders_while_the_caller_uses_this_one() -> None:
    rendering = {i: threading.Event() for i in range(3)}

    def render(item: int) -> int:
        rendering[item].set()
        return item

    results = _ahead([0, 1, 2], render)
    assert next(results) == 0
    # The caller holds item 0 (its INSERT would be running now): item 1 is under way.
    assert rendering[1].wait(timeout=5)
    assert list(results) == [1, 2]


def test_a_render_that_fails_raises_in_the_caller_after_the_items_before_it() -> None:
    def render(item: int) -> int:
        if item == 2:
            raise ValueError("no column accepts this")
        return item

    used: list[int] = []
    with pytest.raises(ValueError, match="no column accepts this"):
        for item in _ahead([0, 1, 2, 3], render):
            used.append(item)
    assert used == [0, 1]
