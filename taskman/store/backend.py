"""Which database a DSN names, and the interface both backends give the stores.

``mysql://`` (or ``mariadb://``) is the cluster's replicated MySQL (``Database``);
``sqlite:///path`` is embedded mode's file (``SQLiteDatabase``). Each carries its
dialect's statements as ``db.q`` (``queries`` or ``queries_sqlite``: the same names
and parameters), so ``TaskStore``, ``ScheduleStore`` and ``DashboardStore`` run
on either without knowing which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Protocol, TypeVar

from taskman.store.connection import Database
from taskman.store.sqlite import SQLiteDatabase

T = TypeVar("T")


class Cursor(Protocol):
    """What store functions may do with the cursor ``run`` hands them (PyMySQL's DictCursor)."""

    @property
    def lastrowid(self) -> int: ...

    def execute(self, query: str, args: Any = None) -> int: ...

    def execute_each(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Statements sent together where the server allows; the rows each changed (or found).

        Only the last may be a query: ``fetchall`` then returns its rows.
        """
        ...

    def execute_each_and_commit(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """``execute_each``, then the transaction's COMMIT, sent with the last statements
        where the server allows. ``fetchall`` returns the last statement's rows. Lost
        on the way, the COMMIT is ambiguous (``AmbiguousCommitError``): re-read first.
        """
        ...

    def render_rows(
        self, statement: str, row: str, columns: Sequence[Sequence[Any]]
    ) -> tuple[str, Sequence[Any] | None]:
        """``statement``, then ``row`` filled with each row of ``columns``, joined by ", ",
        as ``execute``'s arguments; safe to call in another thread."""
        ...

    def fetchone(self) -> dict[str, Any] | None: ...

    def fetchall(self) -> Sequence[dict[str, Any]]: ...


class StoreDatabase(Protocol):
    """``Database`` and ``SQLiteDatabase``, as the stores use them."""

    @property
    def q(self) -> ModuleType: ...

    @property
    def dialect(self) -> str: ...

    @property
    def dsn(self) -> Any: ...  # MySQLDSN or SQLiteDSN: both have redacted()

    def run(
        self,
        fn: Callable[[Cursor], T],
        *,
        deadline: float | None = None,
        on_ambiguous: Callable[[Cursor], T | None] | None = None,
    ) -> T: ...

    def run_once(self, fn: Callable[[Cursor], T]) -> T: ...

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]: ...

    def execute(self, sql: str, args: Any = None) -> int: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def is_sqlite(dsn: str) -> bool:
    return dsn.startswith("sqlite:")


def make_database(
    dsn: str,
    *,
    retry_deadline: float = 30.0,
    connect_timeout: float = 5.0,
    read_timeout: float | None = 30.0,
) -> StoreDatabase:
    """The database a DSN names. The timeouts are MySQL's; SQLite has only busy waits."""
    if is_sqlite(dsn):
        return SQLiteDatabase(dsn, retry_deadline=retry_deadline)
    return Database(
        dsn,
        retry_deadline=retry_deadline,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
