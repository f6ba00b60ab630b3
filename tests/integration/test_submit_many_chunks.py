"""submit_many across statement and read-back boundaries, on a real MariaDB and a SQLite file.

A batch goes in as several INSERTs (``ROWS_PER_STATEMENT`` rows each, naming only
the columns some task of the chunk sets) and its ids come back in ranges of
``READ_BACK_ITEMS`` request ids. These tests cross those boundaries, with the
sizes made small where a real size would only make them slower, and check what
the rows hold through a separate connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskman import Client, StoreError
from taskman.store import bulk as bulk_store
from tests.integration.backends import is_sqlite, raw

FN = "demo.tasks:add"


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client(dsn) as c:
        yield c


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Statements of 7 rows and read-backs of 11 request ids: many boundaries in 60 items."""
    monkeypatch.setattr(bulk_store, "ROWS_PER_STATEMENT", 7)
    monkeypatch.setattr(bulk_store, "READ_BACK_ITEMS", 11)


def _item(i: Any, **more: Any) -> dict[str, Any]:
    return {"function": FN, "plugin": "demo", "args": [i], **more}


def _rows(dsn: str) -> dict[int, dict[str, Any]]:
    with raw(dsn) as cur:
        cur.execute(
            "SELECT id, idempotency_key, args, kwargs, priority, datacenter, plugin_version, "
            "not_before, not_after, run_after, created_at, timeout_seconds, max_attempts, "
            "retry_backoff_seconds, limits, concurrency_key, concurrency_limit, state FROM tasks"
        )
        return {int(r["id"]): r for r in cur.fetchall()}


def test_optional_fields_set_in_some_chunks_only(
    client: Client, dsn: str, small_chunks: None
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    items = [_item(i) for i in range(60)]
    # Chunk 1 (items 7-13) sets every optional field on one task; chunk 2 none;
    # chunk 3 only a not_before; the rest a field or two each.
    items[9] = _item(
        9,
        kwargs={"k": "v"},
        version="1.0",
        priority=-3,
        not_before=later,
        not_after=later + timedelta(hours=1),
        timeout=2.5,
        max_attempts=7,
        retry_backoff=0,
        idempotency_key="nine",
        datacenter="dc2",
        limits={"memory_mb": 64},
        concurrency_key="ck",
        concurrency_limit=2,
    )
    items[22] = _item(22, not_before=later)
    items[40] = _item(40, datacenter="dc1", timeout=1)
    ids = client.submit_many(items)
    assert len(set(ids)) == 60 and ids == sorted(ids)
    rows = _rows(dsn)
    assert [json.loads(rows[i]["args"]) for i in ids] == [[i] for i in range(60)]
    full = rows[ids[9]]
    assert full["idempotency_key"] == "nine" and json.loads(full["kwargs"]) == {"k": "v"}
    assert (full["plugin_version"], full["priority"], full["datacenter"]) == ("1.0", -3, "dc2")
    assert (full["timeout_seconds"], full["max_attempts"], full["retry_backoff_seconds"]) == (
        2.5,
        7,
        0.0,
    )
    assert json.loads(full["limits"]) == {"memory_mb": 64}
    assert (full["concurrency_key"], full["concurrency_limit"]) == ("ck", 2)
    naive = later.replace(tzinfo=None)
    for item in (9, 22):
        assert rows[ids[item]]["not_before"] == naive
        assert rows[ids[item]]["run_after"] == naive  # later than the statement's now
    assert rows[ids[9]]["not_after"] == naive + timedelta(hours=1)
    assert (rows[ids[40]]["datacenter"], rows[ids[40]]["timeout_seconds"]) == ("dc1", 1.0)
    plain = [rows[ids[i]] for i in range(60) if i not in (9, 22, 40)]
    assert all(
        r["not_before"] is None
        and r["datacenter"] is None
        and r["idempotency_key"] is None
        and r["limits"] is None
        and r["priority"] == 0
        and r["max_attempts"] == 3
        and r["state"] == "queued"
        and r["run_after"] == r["created_at"]  # due at once: the statement's now
        for r in plain
    )


def test_keys_across_chunks_existing_and_repeated(
    client: Client, dsn: str, small_chunks: None
) -> None:
    stored = {
        i: client.submit(FN, plugin="demo", args=[i], idempotency_key=f"k{i}") for i in (3, 30)
    }
    items = [_item(i) for i in range(60)]
    for i in (3, 30):  # known to the database, in chunks 0 and 4
        items[i] = _item(i, idempotency_key=f"k{i}")
    items[12] = _item("twin", idempotency_key="t")  # the same request in chunks 1 and 8
    items[58] = _item("twin", idempotency_key="t", priority=4)
    items[20] = _item(20, idempotency_key="fresh")
    ids = client.submit_many(items)
    assert (ids[3], ids[30]) == (stored[3], stored[30])
    assert ids[12] == ids[58] and ids[20] not in ids[:20]
    new = [task_id for i, task_id in enumerate(ids) if i not in (3, 30, 58)]
    assert new == sorted(new) and len(set(new)) == 57 and min(new) > max(stored.values())
    rows = _rows(dsn)
    assert len(rows) == 2 + 57
    assert rows[ids[12]]["idempotency_key"] == "t" and rows[ids[12]]["priority"] == 0
    # Again: every keyed item names its task, the others make new ones.
    again = client.submit_many(items)
    assert [again[i] for i in (3, 12, 20, 30, 58)] == [ids[i] for i in (3, 12, 20, 30, 58)]
    assert len(_rows(dsn)) == 2 + 57 + 55


def test_a_failure_in_a_late_chunk_leaves_nothing(
    client: Client, dsn: str, small_chunks: None
) -> None:
    # The database itself refuses one row of the last chunk: a trigger, not validation.
    poison = json.dumps(["poison"], separators=(",", ":"))
    with raw(dsn) as cur:
        if is_sqlite(dsn):
            cur.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON tasks "
                f"WHEN NEW.args = '{poison}' BEGIN SELECT RAISE(ABORT, 'poison'); END"
            )
        else:
            cur.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON tasks FOR EACH ROW "
                f"IF NEW.args = '{poison}' THEN "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poison'; END IF"
            )
    kept = client.submit(FN, plugin="demo", args=["kept"], idempotency_key="kept")
    items = [_item(i, idempotency_key=f"k{i}" if i % 5 == 0 else None) for i in range(60)]
    items[57] = _item("poison")
    with pytest.raises(StoreError, match="poison"):
        client.submit_many(items)
    assert list(_rows(dsn)) == [kept]
    items[57] = _item(57)  # the same client, the same keys: nothing of the failed batch is left
    ids = client.submit_many(items)
    assert len(set(ids)) == 60 and len(_rows(dsn)) == 61


def test_values_are_stored_as_given(client: Client, dsn: str) -> None:
    nasty = [
        "it's",
        'say "hi"',
        "back\\slash\\",
        "\\'",
        "nul\x00byte",
        "line\nfeed\r\n\x1a",
        "%s %% %(x)s {rows}",
        "ü ß 漢字 🚀",
        "",
        "NULL",
        "'); DROP TABLE tasks; --",
    ]
    items = [
        _item(text, kwargs={"k": text}, idempotency_key=f"{text}:{i}")
        for i, text in enumerate(nasty)
    ]
    items.append({"function": FN, "plugin": "demo", "args": [1.5, -0.0, 1e300, True, None, 2**62]})
    ids = client.submit_many(items)
    for i, text in enumerate(nasty):
        task = client.get(ids[i])
        assert (task.args, task.kwargs, task.idempotency_key) == (
            [text],
            {"k": text},
            f"{text}:{i}",
        )
    assert client.get(ids[-1]).args == [1.5, -0.0, 1e300, True, None, 2**62]


def test_values_are_stored_as_given_without_backslash_escapes(
    mariadb_dsn: str,
) -> None:
    # Under sql_mode NO_BACKSLASH_ESCAPES a backslash is an ordinary character and a
    # quote is doubled: the rendering must follow the session's mode.
    with Client(mariadb_dsn) as client:
        client._bulk.db.execute(
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"
        )
        texts = ["back\\slash", "it's \\' \\\\", "nul\x00", "\n"]
        ids = client.submit_many([_item(t, idempotency_key=t) for t in texts])
        assert [client.get(i).args for i in ids] == [[t] for t in texts]
        assert [client.get(i).idempotency_key for i in ids] == texts


def test_more_tasks_than_one_read_back_holds(client: Client, dsn: str) -> None:
    n = bulk_store.READ_BACK_ITEMS + 2 * bulk_store.ROWS_PER_STATEMENT + 17
    keyed = client.submit(FN, plugin="demo", args=[n - 1], idempotency_key="last")
    items = [_item(i) for i in range(n)]
    items[-1] = _item(n - 1, idempotency_key="last")
    ids = client.submit_many(items)
    assert ids[-1] == keyed
    new = ids[:-1]
    assert new == sorted(new) and len(set(new)) == n - 1
    with raw(dsn) as cur:
        cur.execute("SELECT id, args FROM tasks WHERE id >= %s", (new[0],))
        args = {int(r["id"]): r["args"] for r in cur.fetchall()}
    assert len(args) == n - 1
    assert all(args[task_id] == f"[{i}]" for i, task_id in enumerate(new))
