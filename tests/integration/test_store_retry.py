"""Transient database errors are retried (after a reconnect); other errors are not.

Connections are killed with KILL CONNECTION from a root session, and the whole
server is stopped and started again. The server-stopping test is the last one in
this file and always leaves the shared session server running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pymysql
import pymysql.cursors
import pytest
import structlog

from taskman import Client, TaskState, TransientStoreError
from taskman.dsn import parse_dsn
from taskman.errors import StoreError
from taskman.lab import MariaDBServer
from taskman.store import Database

FN = "demo.tasks:add"


@contextmanager
def _root(mariadb: MariaDBServer) -> Iterator[pymysql.cursors.Cursor]:
    conn = mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def _connections_of(mariadb: MariaDBServer, database: str) -> set[int]:
    with _root(mariadb) as cur:
        cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (database,))
        return {int(r[0]) for r in cur.fetchall()}


def _connection_id(db: Database) -> int:
    (row,) = db.query("SELECT CONNECTION_ID() AS id")
    return int(row["id"])


def _kill(mariadb: MariaDBServer, database: str, conn_id: int) -> None:
    """KILL the connection found in the processlist by database name; wait until it is gone."""
    assert conn_id in _connections_of(mariadb, database)
    with _root(mariadb) as cur:
        cur.execute(f"KILL CONNECTION {int(conn_id)}")
    deadline = time.monotonic() + 10
    while conn_id in _connections_of(mariadb, database):
        assert time.monotonic() < deadline, f"connection {conn_id} survived KILL"
        time.sleep(0.01)


def _count(mariadb: MariaDBServer, database: str) -> int:
    with _root(mariadb) as cur:
        cur.execute(f"SELECT COUNT(*) FROM `{database}`.tasks")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _serving(server: MariaDBServer) -> bool:
    return server.running


def _retries(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e.get("event") == "db.retry"]


def test_get_after_the_connection_is_killed_reconnects(mariadb: MariaDBServer, dsn: str) -> None:
    database = parse_dsn(dsn).database
    with Client(dsn) as client:
        task_id = client.submit(FN, plugin="demo", args=[1])
        assert client.get(task_id).state is TaskState.QUEUED
        old = _connection_id(client._store.db)

        _kill(mariadb, database, old)
        with structlog.testing.capture_logs() as logs:
            task = client.get(task_id)
        assert task.id == task_id
        assert task.args == [1]
        assert _retries(logs), "the killed connection was not noticed (no retry happened)"

        new = _connection_id(client._store.db)
        assert new != old
        assert _connections_of(mariadb, database) >= {new}
        assert old not in _connections_of(mariadb, database)


def test_submit_after_the_connection_is_killed_inserts_exactly_once(
    mariadb: MariaDBServer, dsn: str
) -> None:
    database = parse_dsn(dsn).database
    with Client(dsn) as client:
        first = client.submit(FN, plugin="demo", args=["first"])
        assert _count(mariadb, database) == 1
        old = _connection_id(client._store.db)

        _kill(mariadb, database, old)
        with structlog.testing.capture_logs() as logs:
            second = client.submit(FN, plugin="demo", args=["second"])
        assert _retries(logs)
        assert second != first
        assert _count(mariadb, database) == 2
        assert client.get(second).args == ["second"]
        assert [t.id for t in client.list()] == [second, first]

        # The same with an idempotency key, killed again.
        _kill(mariadb, database, _connection_id(client._store.db))
        third = client.submit(FN, plugin="demo", args=["third"], idempotency_key="once")
        assert _count(mariadb, database) == 3
        assert client.submit(FN, plugin="demo", args=["third"], idempotency_key="once") == third
        assert _count(mariadb, database) == 3


def test_abort_after_the_connection_is_killed_applies(mariadb: MariaDBServer, dsn: str) -> None:
    database = parse_dsn(dsn).database
    with Client(dsn) as client:
        task_id = client.submit(FN, plugin="demo")
        _kill(mariadb, database, _connection_id(client._store.db))
        assert client.abort(task_id) is TaskState.ABORTED
        assert client.get(task_id).state is TaskState.ABORTED


def test_a_non_transient_error_is_raised_at_once(dsn: str) -> None:
    """A code nobody listed is the database refusing: a StoreError (which every loop
    handles), raised at once, never retried, carrying the server's code."""
    db = Database(dsn)  # default retry deadline: 30 s
    try:
        assert db.query("SELECT 1 AS one") == [{"one": 1}]
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            with pytest.raises(StoreError) as info:
                db.query("SELEC 1")
            elapsed = time.monotonic() - started
        assert "database error 1064" in str(info.value)  # ER_PARSE_ERROR
        assert not isinstance(info.value, TransientStoreError)
        assert isinstance(info.value.__cause__, pymysql.err.ProgrammingError)
        assert elapsed < 1.0
        assert _retries(logs) == []
        # The connection is still usable afterwards.
        assert db.query("SELECT 2 AS two") == [{"two": 2}]

        with structlog.testing.capture_logs() as logs, pytest.raises(StoreError) as info:
            db.query("SELECT * FROM no_such_table")
        assert "database error 1146" in str(info.value)  # ER_NO_SUCH_TABLE
        assert _retries(logs) == []
    finally:
        db.close()


# Keep this test last: it stops the session's MariaDB and starts it again.
def test_server_down_raises_transient_after_the_deadline_then_recovers(
    mariadb: MariaDBServer, dsn: str
) -> None:
    db = Database(dsn, retry_deadline=2)
    try:
        assert db.query("SELECT 1 AS one") == [{"one": 1}]
        try:
            mariadb.stop()
            assert not _serving(mariadb)
            with structlog.testing.capture_logs() as logs:
                started = time.monotonic()
                with pytest.raises(TransientStoreError):
                    db.query("SELECT 1 AS one")
                elapsed = time.monotonic() - started
            # stop_after_delay(2) ends on the first failure at or after 2 s; the last
            # jittered wait is at most 2 s, so it cannot take much longer than 4 s.
            assert 2.0 <= elapsed < 6.0, elapsed
            assert len(_retries(logs)) >= 2
        finally:
            mariadb.start()
        assert _serving(mariadb)  # started again
        assert db.query("SELECT 1 AS one") == [{"one": 1}]
        # The data survived the restart, and the store works through the same DSN.
        with Client(dsn) as client:
            task_id = client.submit(FN, plugin="demo", args=["after restart"])
            assert client.get(task_id).args == ["after restart"]
    finally:
        db.close()
