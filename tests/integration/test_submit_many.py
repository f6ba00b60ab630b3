"""Client.submit_many and ``taskman submit --from-file`` against a real MariaDB and a SQLite file.

A contract test: every test runs on both backends (``store_dsn``). Rows are read
through a separate connection, never through the client under test.
"""

from __future__ import annotations

import io
import json
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskman import (
    Client,
    IdempotencyConflictError,
    PayloadTooLargeError,
    UnservedError,
    ValidationError,
)
from taskman.cli import run
from taskman.cli.exitcodes import Exit
from taskman.store import TaskStore, make_database
from taskman.store.placement import Offer, PlacementStore
from tests.integration.backends import raw

FN = "demo.tasks:add"


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client(dsn) as c:
        yield c


def _count(dsn: str) -> int:
    with raw(dsn) as cur:
        cur.execute("SELECT COUNT(*) AS n FROM tasks")
        row = cur.fetchone()
        assert row is not None
        return int(row["n"])


def _rows(dsn: str) -> dict[int, dict[str, Any]]:
    with raw(dsn) as cur:
        cur.execute("SELECT id, request_id, idempotency_key, args, priority, state FROM tasks")
        return {int(r["id"]): r for r in cur.fetchall()}


def _item(i: Any, **more: Any) -> dict[str, Any]:
    return {"function": FN, "plugin": "demo", "args": [i], **more}


def test_ids_come_back_in_item_order_each_naming_its_item(client: Client, dsn: str) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    items = [_item(i, priority=i % 3) for i in range(40)]
    items[7] = _item(7, kwargs={"x": "ü"}, version="1.0", not_before=later, datacenter="dc1")
    ids = client.submit_many(items)
    assert len(ids) == 40 and ids == sorted(ids) and len(set(ids)) == 40
    rows = _rows(dsn)
    assert [json.loads(rows[task_id]["args"]) for task_id in ids] == [[i] for i in range(40)]
    assert {r["state"] for r in rows.values()} == {"queued"}
    assert len({r["request_id"] for r in rows.values()}) == 40
    task = client.get(ids[7])
    assert (task.kwargs, task.plugin_version, task.datacenter) == ({"x": "ü"}, "1.0", "dc1")
    assert task.not_before == later.replace(microsecond=task.not_before.microsecond)
    assert client.get(ids[5]).priority == 2
    # Due together, equal priority: claimed in item order, as submitted one by one.
    store = TaskStore(dsn)
    try:
        firsts = [c.task_id for c in store.candidates("dc1", {"demo": ["1.0"]}, 5)]
    finally:
        store.close()
    assert firsts == [ids[i] for i in (2, 5, 8, 11, 14)]  # priority 2 first, then by id


def test_an_empty_batch_stores_nothing(client: Client, dsn: str) -> None:
    assert client.submit_many([]) == []
    assert _count(dsn) == 0


def test_a_bad_item_fails_the_whole_batch_and_writes_nothing(client: Client, dsn: str) -> None:
    kept = client.submit(FN, plugin="demo", args=["kept"])
    items = [_item(i) for i in range(100)]
    items[37] = _item(37, not_after=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(ValidationError, match=r"^item 37: not_after .* is already in the past"):
        client.submit_many(items)
    items[37] = _item("x" * (1024 * 1024))
    with pytest.raises(PayloadTooLargeError) as caught:
        client.submit_many(items)
    assert caught.value.item == 37
    assert _count(dsn) == 1 and client.get(kept).args == ["kept"]


def test_each_item_is_checked_against_what_nodes_serve(client: Client, dsn: str) -> None:
    placement = PlacementStore(make_database(dsn))
    try:
        placement.publish("n1", "dc1", [Offer("demo", "1.0", ("demo.tasks:*",), {})])
    finally:
        placement.db.close()
    items = [_item(i) for i in range(10)]
    items[4] = {"function": "os:getcwd", "plugin": "demo"}
    items[6] = {"function": FN, "plugin": "demoo"}
    with pytest.raises(UnservedError, match=r"^item 4: plugin 'demo' does not allow os:getcwd"):
        client.submit_many(items)
    items[4] = _item(4)
    with pytest.raises(UnservedError, match=r"^item 6: no node has ever served plugin 'demoo'"):
        client.submit_many(items)
    assert _count(dsn) == 0
    ids = client.submit_many(items, allow_unserved=True)
    assert client.get(ids[6]).plugin == "demoo" and _count(dsn) == 10


# -- idempotency keys ---------------------------------------------------------------------------


def test_a_key_that_names_a_task_gives_its_id(client: Client, dsn: str) -> None:
    first = client.submit(FN, plugin="demo", args=[1], kwargs={"a": 1, "b": 2}, idempotency_key="a")
    ids = client.submit_many(
        [
            _item("new"),
            _item(1, kwargs={"b": 2, "a": 1}, idempotency_key="a", priority=5),
            _item("keyed", idempotency_key="b"),
        ]
    )
    assert ids[1] == first and len(set(ids)) == 3
    assert _count(dsn) == 3
    # The batch's own keys count like any other now.
    assert client.submit(FN, plugin="demo", args=["keyed"], idempotency_key="b") == ids[2]
    assert client.submit_many([_item("keyed", idempotency_key="b")]) == [ids[2]]
    assert _count(dsn) == 3


def test_a_key_that_names_another_request_fails_the_batch(client: Client, dsn: str) -> None:
    first = client.submit(FN, plugin="demo", args=[1], idempotency_key="a")
    items = [_item(i) for i in range(5)] + [_item(2, idempotency_key="a")]
    with pytest.raises(IdempotencyConflictError) as caught:
        client.submit_many(items)
    assert caught.value.item == 5
    assert f"idempotency key 'a' already names task {first}" in str(caught.value)
    assert _count(dsn) == 1


def test_keys_repeated_inside_a_batch(client: Client, dsn: str) -> None:
    ids = client.submit_many(
        [_item(1, idempotency_key="k"), _item(2), _item(1, idempotency_key="k"), _item(2)]
    )
    assert ids[0] == ids[2] and len(set(ids)) == 3
    assert _count(dsn) == 3
    with pytest.raises(
        IdempotencyConflictError, match=r"^item 2: idempotency key 'j' is also item 0's"
    ):
        client.submit_many([_item(1, idempotency_key="j"), _item(2), _item(3, idempotency_key="j")])
    assert _count(dsn) == 3


def test_concurrent_batches_sharing_keys_make_one_task_per_key(dsn: str) -> None:
    keys = [f"k-{i}" for i in range(300)]
    workers = 4
    clients = [Client(dsn) for _ in range(workers)]
    barrier = threading.Barrier(workers, timeout=30)

    def batch(n: int, c: Client) -> list[tuple[str | None, int]]:
        order = random.Random(n).sample(keys, len(keys))  # each batch in its own order
        items = [_item(k, idempotency_key=k) for k in order]
        items += [_item(f"free-{n}-{i}") for i in range(50)]
        barrier.wait()
        ids = c.submit_many(items)
        return [(item.get("idempotency_key"), i) for item, i in zip(items, ids, strict=True)]

    try:
        for c in clients:
            c.counts()  # connect first: the barrier lines up the transactions
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = [
                f.result(timeout=120)
                for f in [pool.submit(batch, n, c) for n, c in enumerate(clients)]
            ]
    finally:
        for c in clients:
            c.close()
    by_key: dict[str, set[int]] = {}
    for result in results:
        for key, task_id in result:
            if key is not None:
                by_key.setdefault(key, set()).add(task_id)
    assert all(len(found) == 1 for found in by_key.values()) and len(by_key) == 300
    assert _count(dsn) == 300 + workers * 50


# -- size ----------------------------------------------------------------------------------------


def test_several_thousand_tasks_in_one_batch(client: Client, dsn: str) -> None:
    keyed = {
        i: client.submit(FN, plugin="demo", args=[i], idempotency_key=f"k{i}")
        for i in range(0, 4000, 397)
    }
    items = [_item(i, idempotency_key=f"k{i}" if i in keyed else None) for i in range(4000)]
    ids = client.submit_many(items)
    assert all(ids[i] == task_id for i, task_id in keyed.items())
    new = [task_id for i, task_id in enumerate(ids) if i not in keyed]
    assert new == sorted(new) and len(set(new)) == 4000 - len(keyed)
    assert min(new) > max(keyed.values())
    rows = _rows(dsn)
    assert len(rows) == 4000
    assert all(json.loads(rows[task_id]["args"]) == [i] for i, task_id in enumerate(ids))


def test_large_arguments_are_split_across_statements(client: Client, dsn: str) -> None:
    # 20 tasks of 900 kB are 18 MB: over MariaDB's 16 MiB packet as one statement.
    blob = "x" * 900_000
    ids = client.submit_many([_item(f"{i}{blob}") for i in range(20)])
    assert len(set(ids)) == 20
    assert client.get(ids[13]).args == [f"13{blob}"]
    assert _count(dsn) == 20


# -- the command line ------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], dsn: str, *argv: str) -> tuple[int, str, str]:
    code = run(["submit", *argv, "--dsn", dsn])
    out = capsys.readouterr()
    return code, out.out, out.err


def _lines(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(i) + "\n" for i in items)


def test_from_file_submits_every_line_and_prints_the_ids(
    capsys: pytest.CaptureFixture[str], dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        _lines([{"function": FN, "plugin": "demo", "args": [1, 2]}])
        + "\n"
        + _lines(
            [
                {
                    "function": FN,
                    "plugin": "demo",
                    "args": [3, 4],
                    "priority": 5,
                    "not_after": "2099-01-01T00:00:00Z",
                    "idempotency_key": "line-3",
                }
            ]
        )
    )
    code, out, err = _cli(capsys, dsn, "--from-file", str(path))
    assert code == Exit.OK, err
    ids = [int(line) for line in out.split()]
    with Client(dsn) as client:
        first, second = (client.get(i) for i in ids)
    assert first.args == [1, 2]
    assert (second.args, second.priority, second.idempotency_key) == ([3, 4], 5, "line-3")
    assert second.not_after == datetime(2099, 1, 1, tzinfo=UTC)

    monkeypatch.setattr("sys.stdin", io.StringIO(path.read_text()))
    code, out, _ = _cli(capsys, dsn, "--from-file", "-", "--json")
    assert code == Exit.OK
    again = json.loads(out)["ids"]
    assert again[1] == ids[1] and again[0] not in ids  # the keyed line names its task
    assert _count(dsn) == 3


def test_from_file_with_a_bad_line_names_it_and_submits_nothing(
    capsys: pytest.CaptureFixture[str], dsn: str, tmp_path: Path
) -> None:
    good = {"function": FN, "plugin": "demo", "args": [1]}
    path = tmp_path / "tasks.jsonl"
    path.write_text(_lines([good, good]) + "\n" + _lines([good, {**good, "max_attempts": 0}, good]))
    code, out, err = _cli(capsys, dsn, "--from-file", str(path))
    assert code == Exit.INVALID
    assert out == ""
    assert f"{path} line 5: max_attempts must be an integer from 1 to 1000, got 0" in err
    path.write_text(_lines([good]) + '{"function": "demo.tasks:add", "plugin": }\n')
    code, _, err = _cli(capsys, dsn, "--from-file", str(path))
    assert code == Exit.INVALID and f"{path} line 2: not valid JSON" in err
    assert _count(dsn) == 0
