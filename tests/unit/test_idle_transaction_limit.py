"""Connections ask the server to end idle transactions; a server without the setting is tolerated.

Pure: a stand-in cursor records statements. The bound itself is tested against
MariaDB in tests/faults/test_stalled_transaction.py.
"""

from __future__ import annotations

from typing import Any

import pymysql
import pytest
from structlog.testing import capture_logs

from taskman.store import queries as q
from taskman.store.connection import IDLE_TRANSACTION_LIMIT, Database


class Cursor:
    def __init__(self, error: int | None = None) -> None:
        self.error = error
        self.executed: list[tuple[str, Any]] = []

    def execute(self, sql: str, args: Any = None) -> int:
        self.executed.append((sql, args))
        if self.error is not None:
            raise pymysql.err.OperationalError(self.error, "refused")
        return 0


def _db() -> Database:
    return Database("mysql://u:p@127.0.0.1:1/db")


def test_every_connection_sets_the_limit() -> None:
    db, cur = _db(), Cursor()
    db._limit_idle_transactions(cur)  # type: ignore[arg-type]
    db._limit_idle_transactions(cur)  # type: ignore[arg-type]
    assert cur.executed == [(q.SESSION_IDLE_TRANSACTION_LIMIT, (IDLE_TRANSACTION_LIMIT,))] * 2


def test_a_server_without_the_setting_is_warned_about_once_and_not_asked_again() -> None:
    db, cur = _db(), Cursor(error=1193)  # MySQL: unknown system variable
    with capture_logs() as logs:
        db._limit_idle_transactions(cur)  # type: ignore[arg-type]
        db._limit_idle_transactions(cur)  # type: ignore[arg-type]
    assert len(cur.executed) == 1
    assert [e["event"] for e in logs] == ["db.idle_transaction_limit_unsupported"]


def test_any_other_refusal_fails_the_connect() -> None:
    with pytest.raises(pymysql.err.OperationalError):
        _db()._limit_idle_transactions(Cursor(error=1227))  # type: ignore[arg-type]
