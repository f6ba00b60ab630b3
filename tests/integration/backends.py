"""Both store backends for contract tests, and an independent raw view of either database.

The raw view never goes through the store under test: PyMySQL for MariaDB, the
sqlite3 module for SQLite. Its rows are dicts; SQLite's time text comes back as
naive UTC datetimes, as PyMySQL returns DATETIME. Statements that differ between
the dialects are the helpers below (``db_now``, ``shift``, ``payload_bytes``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from taskman.dsn import parse_dsn

BACKENDS = ["mysql", "sqlite"]
_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def sqlite_database(tmp_path: Path) -> str:
    """A fresh, migrated SQLite file under ``tmp_path``."""
    from taskman.store.migrations import migrate

    url = f"sqlite:///{tmp_path / 'taskman.sqlite3'}"
    migrate(url)
    return url


def is_sqlite(dsn: str) -> bool:
    return dsn.startswith("sqlite:")


class _SQLiteRaw:
    """A DictCursor look-alike over a plain sqlite3 connection (autocommit)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._rows: list[dict[str, Any]] = []

    def execute(self, sql: str, args: Any = None) -> int:
        params = [] if args is None else [_param(a) for a in args]
        cur = self._conn.execute(sql.replace("%s", "?"), params)
        if cur.description is None:
            self._rows = []
            return cur.rowcount
        names = [d[0] for d in cur.description]
        self._rows = [
            {n: _value(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()
        ]
        return len(self._rows)

    def fetchone(self) -> dict[str, Any] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows


def _param(value: Any) -> Any:
    if isinstance(value, datetime):
        value = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _value(value: Any) -> Any:
    if isinstance(value, str) and _TIME.match(value):
        return datetime.fromisoformat(value)
    return value


@contextmanager
def raw(dsn: str) -> Iterator[Any]:
    """An autocommit cursor on its own connection; rows as dicts, times as naive UTC."""
    if is_sqlite(dsn):
        path = dsn.removeprefix("sqlite://")
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            yield _SQLiteRaw(conn)
        finally:
            conn.close()
        return
    d = parse_dsn(dsn)
    mysql = pymysql.connect(
        host=d.host,
        port=d.port,
        user=d.user,
        password=d.password,
        database=d.database,
        autocommit=True,
        cursorclass=pymysql.cursors.DictCursor,
        ssl_disabled=True,
        connect_timeout=5,
        read_timeout=30,
    )
    try:
        with mysql.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            yield cur
    finally:
        mysql.close()


def db_now(dsn: str) -> datetime:
    """The database's clock, aware UTC (SQLite's clock is this machine's)."""
    if is_sqlite(dsn):
        return datetime.now(UTC)
    with raw(dsn) as cur:
        cur.execute("SELECT NOW(6) AS now")
        row = cur.fetchone()
        assert row is not None
        now: datetime = row["now"]
        return now.replace(tzinfo=UTC)


def shift(dsn: str, task_id: int, column: str, seconds: float) -> None:
    """Set a task's time ``column`` to the database's now + ``seconds``."""
    assert re.fullmatch(r"[a-z_]+", column)
    when = db_now(dsn) + timedelta(seconds=seconds)
    with raw(dsn) as cur:
        cur.execute(f"UPDATE tasks SET {column} = %s WHERE id = %s", (when, task_id))


def seconds_from_now(dsn: str, task_id: int, column: str) -> float:
    """How far a task's time ``column`` lies after the database's now."""
    assert re.fullmatch(r"[a-z_]+", column)
    with raw(dsn) as cur:
        cur.execute(f"SELECT {column} AS t FROM tasks WHERE id = %s", (task_id,))
        row = cur.fetchone()
    assert row is not None
    value: datetime = row["t"]
    return (value.replace(tzinfo=UTC) - db_now(dsn)).total_seconds()


def payload_bytes(dsn: str, task_id: int) -> int:
    """Bytes of stored args + kwargs (SQLite's LENGTH counts characters of text)."""
    size = (
        "LENGTH(CAST(args AS BLOB)) + LENGTH(CAST(kwargs AS BLOB))"
        if is_sqlite(dsn)
        else "LENGTH(args) + LENGTH(kwargs)"
    )
    with raw(dsn) as cur:
        cur.execute(f"SELECT {size} AS size FROM tasks WHERE id = %s", (task_id,))
        row = cur.fetchone()
    assert row is not None
    return int(row["size"])
