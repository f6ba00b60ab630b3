"""``execute_each``: a batch of per-row writes in one round trip, on both backends.

The node's claims and endings are fenced row by row; on MariaDB the batch goes
as one packet of statements, so what each statement changed, a failure in the
middle and hostile strings must behave exactly as one ``execute`` each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskman.errors import DuplicateKeyError
from taskman.store import connection, make_database
from taskman.store.backend import Cursor, StoreDatabase


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


@pytest.fixture
def db(dsn: str) -> Iterator[StoreDatabase]:
    database = make_database(dsn)
    database.run(lambda cur: cur.execute("CREATE TABLE probe (id INT PRIMARY KEY, v VARCHAR(200))"))
    database.run(
        lambda cur: cur.execute("INSERT INTO probe (id, v) VALUES (1, 'a'), (2, 'a'), (3, 'b')")
    )
    yield database
    database.close()


def _rows(db: StoreDatabase) -> dict[int, str]:
    def read(cur: Cursor) -> dict[int, str]:
        cur.execute("SELECT id, v FROM probe ORDER BY id")
        return {int(row["id"]): str(row["v"]) for row in cur.fetchall()}

    return db.run(read)


def _each(db: StoreDatabase, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    return db.run(lambda cur: cur.execute_each(statements))


def test_each_statement_reports_the_rows_it_changed(db: StoreDatabase) -> None:
    counts = _each(
        db,
        [
            ("UPDATE probe SET v = %s WHERE id = %s", ("x", 1)),
            ("UPDATE probe SET v = %s WHERE id = %s", ("x", 99)),  # no such row
            ("UPDATE probe SET v = %s WHERE v = %s", ("y", "a")),  # row 2 only now
            ("UPDATE probe SET v = %s WHERE id IN (%s, %s)", ("z", 1, 3)),
        ],
    )
    assert counts == [1, 0, 1, 2]
    assert _rows(db) == {1: "z", 2: "y", 3: "z"}


def test_a_failing_statement_fails_the_whole_transaction(db: StoreDatabase) -> None:
    with pytest.raises(DuplicateKeyError):
        _each(
            db,
            [
                ("UPDATE probe SET v = %s WHERE id = %s", ("changed", 1)),
                ("INSERT INTO probe (id, v) VALUES (%s, %s)", (2, "duplicate")),
                ("UPDATE probe SET v = %s WHERE id = %s", ("changed", 3)),
            ],
        )
    assert _rows(db) == {1: "a", 2: "a", 3: "b"}  # rolled back, the later one never ran


@pytest.mark.parametrize(
    "value",
    [
        "x'; DROP TABLE probe; --",
        'x"; DELETE FROM probe; --',
        "back\\slash'; UPDATE probe SET v = 'owned",
        "semi;colon\n;newline",
    ],
)
def test_values_never_become_statements(db: StoreDatabase, value: str) -> None:
    counts = _each(
        db,
        [
            ("UPDATE probe SET v = %s WHERE id = %s", (value, 1)),
            ("UPDATE probe SET v = %s WHERE id = %s", (value, 2)),
        ],
    )
    assert counts == [1, 1]
    assert _rows(db) == {1: value, 2: value, 3: "b"}


def test_a_batch_larger_than_one_packet_is_split(
    db: StoreDatabase, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if dsn.startswith("sqlite:"):
        pytest.skip("SQLite runs each statement on its own: nothing to split")
    monkeypatch.setattr(connection, "EACH_BATCH_BYTES", 120)  # about two statements a packet
    statements = [("UPDATE probe SET v = %s WHERE id = %s", (f"v{i}", 1 + i % 4)) for i in range(9)]
    assert _each(db, statements) == [0 if i % 4 == 3 else 1 for i in range(9)]
    assert _rows(db) == {1: "v8", 2: "v5", 3: "v6"}


def test_an_empty_batch_changes_nothing(db: StoreDatabase) -> None:
    assert _each(db, []) == []


def test_the_last_statement_may_be_a_query_whose_rows_fetchall_returns(
    db: StoreDatabase,
) -> None:
    def batch(cur: Cursor) -> tuple[list[int], list[dict[str, Any]]]:
        counts = cur.execute_each(
            [
                ("UPDATE probe SET v = %s WHERE id = %s", ("q", 1)),
                ("SELECT id, v FROM probe WHERE v = %s ORDER BY id", ("q",)),
            ]
        )
        return counts, list(cur.fetchall())

    counts, rows = db.run(batch)
    assert counts == [1, 1]  # the query's count is the rows it found, as execute's
    assert [(int(r["id"]), r["v"]) for r in rows] == [(1, "q")]  # it sees the write before it


def test_a_read_ends_its_transaction_so_the_next_read_sees_newer_writes(
    db: StoreDatabase, dsn: str
) -> None:
    """``query`` sends its COMMIT with the SELECT: no snapshot outlives the read."""
    other = make_database(dsn)
    try:
        assert db.query("SELECT v FROM probe WHERE id = 1") == [{"v": "a"}]
        other.execute("UPDATE probe SET v = 'newer' WHERE id = 1")
        assert db.query("SELECT v FROM probe WHERE id = 1") == [{"v": "newer"}]
        db.execute("UPDATE probe SET v = 'mine' WHERE id = 2")  # the next transaction works
        assert other.query("SELECT v FROM probe WHERE id = 2") == [{"v": "mine"}]
    finally:
        other.close()
