"""taskman.bulk.build_batch: what submit_many checks before it writes, and how it names a bad item."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskman import Client, TaskRequest
from taskman.bulk import ITEM_FIELDS, MAX_BATCH_ITEMS, Batch, build_batch
from taskman.errors import (
    IdempotencyConflictError,
    PayloadTooLargeError,
    UnservedError,
    ValidationError,
)
from taskman.store import bulk as store_bulk
from taskman.validation import build_task

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def item(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"function": "demo.tasks:add", "plugin": "demo", "args": [1, 2]}
    fields.update(changes)
    return fields


def build(items: list[dict[str, Any]], **options: Any) -> Batch:
    return build_batch(items, now=NOW, **options)


def test_items_become_tasks_in_order_with_their_fields() -> None:
    typed: TaskRequest = {"function": "demo.tasks:add", "plugin": "demo", "priority": 7}
    batch = build(
        [
            item(args=[0]),
            dict(typed),
            item(kwargs={"x": 1}, version="1.2", not_after=NOW + timedelta(hours=1)),
        ]
    )
    assert [t.args_json for t in batch.tasks] == ["[0]", "[]", "[1,2]"]
    assert batch.tasks[1].priority == 7
    assert batch.tasks[2].kwargs_json == '{"x":1}' and batch.tasks[2].plugin_version == "1.2"
    assert batch.tasks[2].not_after == datetime(2030, 6, 1, 13, 0, 0)  # naive UTC, as stored
    assert batch.twins == (0, 1, 2) and batch.own == [0, 1, 2]


def test_a_batch_task_is_what_submit_would_store() -> None:
    fields = item(kwargs={"k": [1]}, priority=3, timeout=5, limits={"memory_mb": 64})
    (task,) = build([fields]).tasks
    single = build_task(**fields, now=NOW)
    assert task._replace(request_id="") == single._replace(request_id="")


def test_request_ids_are_unique_and_share_one_prefix_per_batch() -> None:
    first = build([item(args=[i]) for i in range(300)]).tasks
    second = build([item()]).tasks
    ids = [t.request_id for t in first]
    assert len(set(ids)) == 300 and all(len(r) == 32 for r in ids)
    assert ids == sorted(ids)  # item order is request-id order: one range holds the batch
    assert {r[:20] for r in ids} == {ids[0][:20]} != {second[0].request_id[:20]}


def test_empty_batch_is_empty() -> None:
    assert build([]) == Batch((), ())


@pytest.mark.parametrize(
    ("bad", "kind", "message"),
    [
        (item(function="demo.tasks.add"), ValidationError, "malformed function reference"),
        (item(args="[1, 2]"), ValidationError, "args must be a list or tuple"),
        (item(args=[object()]), ValidationError, "args is not JSON-serialisable"),
        (item(not_after=datetime(2031, 1, 1)), ValidationError, "naive datetime"),
        (item(not_after=NOW - timedelta(seconds=1)), ValidationError, "already in the past"),
        (item(priority=2**40), ValidationError, "32-bit integer"),
        (item(idempotency_key=""), ValidationError, "idempotency_key must be"),
        (item(args=["x" * 200]), PayloadTooLargeError, "over the limit of 100 bytes"),
        (item(plugin=None), ValidationError, "missing plugin"),
        ({"plugin": "demo"}, ValidationError, "missing function"),
        (item(retries=3), ValidationError, "unknown field retries; known fields: args,"),
        (["demo.tasks:add", "demo"], ValidationError, "must be a mapping"),
    ],
)
def test_a_bad_item_fails_the_batch_naming_its_index(
    bad: Any, kind: type[ValidationError], message: str
) -> None:
    items = [item(), item(), bad, item(function="also bad")]
    with pytest.raises(kind) as caught:
        build(items, max_payload=100)
    assert type(caught.value) is kind  # the kind a single submit raises
    assert caught.value.item == 2  # the first bad item, not a later one
    assert str(caught.value).startswith("item 2: ")
    assert message in caught.value.reason and not caught.value.reason.startswith("item")


def test_allow_unserved_in_an_item_says_it_is_the_batchs() -> None:
    with pytest.raises(
        ValidationError, match=r"allow_unserved is the whole batch's: .* --allow-unserved\)"
    ) as caught:
        build([item(allow_unserved=True)])
    assert caught.value.item == 0


def test_the_fields_are_submits_keyword_arguments() -> None:
    submit = inspect.signature(Client.submit).parameters
    assert set(ITEM_FIELDS) == set(submit) - {"self", "allow_unserved"}


@pytest.mark.parametrize("items", [item(), "demo.tasks:add"])
def test_a_batch_is_a_list_of_items_not_one_item(items: Any) -> None:
    with pytest.raises(ValidationError, match="takes a list of items") as caught:
        build_batch(items)
    assert caught.value.item is None


def test_too_many_items_are_refused_without_reading_an_endless_source() -> None:
    read = itertools.count()

    def endless() -> Iterator[dict[str, Any]]:
        for _ in read:
            yield item()

    with pytest.raises(ValidationError, match=f"at most {MAX_BATCH_ITEMS} tasks") as caught:
        build_batch(endless())
    assert caught.value.item is None
    assert next(read) == MAX_BATCH_ITEMS + 1  # it stopped one past the limit


def test_the_whole_batchs_arguments_have_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("taskman.bulk.MAX_BATCH_PAYLOAD", 1000)
    fits = [item(args=["x" * 90]) for _ in range(10)]  # 96 bytes each
    assert len(build(fits).tasks) == 10
    with pytest.raises(
        PayloadTooLargeError, match="the batch's arguments are 1016 bytes"
    ) as caught:
        build([*fits, item(args=["y" * 50])])
    assert caught.value.item is None


# -- idempotency keys inside one batch ---------------------------------------------------


def test_the_same_key_and_request_twice_is_one_task() -> None:
    batch = build(
        [
            item(idempotency_key="a", kwargs={"x": 1, "y": 2}),
            item(idempotency_key="b"),
            # Same request: equal JSON whatever the key order; other fields may differ.
            item(idempotency_key="a", kwargs={"y": 2, "x": 1}, priority=9),
            item(),
            item(),  # no key: two tasks, however alike
        ]
    )
    assert batch.twins == (0, 1, 0, 3, 4)
    assert batch.own == [0, 1, 3, 4]


@pytest.mark.parametrize(
    "other",
    [
        item(idempotency_key="a", args=[9]),
        item(idempotency_key="a", function="demo.tasks:sleep"),
        item(idempotency_key="a", plugin="other"),
        item(idempotency_key="a", version="1.0"),
        item(idempotency_key="a", kwargs={"x": 1}),
    ],
)
def test_the_same_key_with_another_request_names_both_items(other: dict[str, Any]) -> None:
    with pytest.raises(IdempotencyConflictError) as caught:
        build([item(), item(idempotency_key="a"), item(), other])
    assert caught.value.item == 3
    assert "idempotency key 'a' is also item 1's" in str(caught.value)


def test_keys_differing_by_trailing_spaces_are_different_keys() -> None:
    batch = build([item(idempotency_key="k"), item(idempotency_key="k ", args=[5])])
    assert batch.twins == (0, 1)


# -- errors as a batch's --------------------------------------------------------------------


def test_at_item_keeps_the_kind_and_its_details() -> None:
    error = UnservedError("no node has ever served plugin 'x'", "plugins demo 1.0").at_item(4)
    assert isinstance(error, UnservedError)
    assert (error.item, error.missing, error.served) == (
        4,
        "no node has ever served plugin 'x'",
        "plugins demo 1.0",
    )
    assert str(error).startswith("item 4: no node has ever served plugin 'x' (served:")
    assert error.reason.startswith("no node has ever served")
    plain = ValidationError("bad")
    assert (plain.item, plain.reason) == (None, "bad")


# -- the store's statements ------------------------------------------------------------------


def _tasks(sizes: list[int]) -> list[Any]:
    return [build_task("m:f", plugin="p", args=["x" * n], now=NOW) for n in sizes]


def test_statements_hold_at_most_so_many_rows_in_item_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_bulk, "ROWS_PER_STATEMENT", 3)
    tasks = _tasks([1] * 8)
    assert list(store_bulk._chunks(tasks, [0, 1, 2, 4, 5, 6, 7])) == [[0, 1, 2], [4, 5, 6], [7]]


def test_statements_hold_at_most_so_many_argument_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_bulk, "BYTES_PER_STATEMENT", 100)
    # args ["x"*n] is n + 4 bytes of JSON, kwargs {} 2 more; é is 2 bytes.
    tasks = _tasks([40, 40, 40, 200, 10])
    assert list(store_bulk._chunks(tasks, [0, 1, 2, 3, 4])) == [[0, 1], [2], [3], [4]]
    wide = [build_task("m:f", plugin="p", args=["é" * 30], now=NOW) for _ in range(3)]
    assert list(store_bulk._chunks(wide, [0, 1, 2])) == [[0], [1], [2]]  # 66 bytes each
