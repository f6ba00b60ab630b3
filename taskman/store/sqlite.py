"""One SQLite connection with the same interface as ``Database`` (embedded mode).

``run(fn)`` calls ``fn(cursor)`` inside one transaction and retries the whole
function on transient errors (SQLITE_BUSY/LOCKED: another connection holds the
write lock past ``busy_timeout``), with the same tenacity policy as MySQL.

* Read-write transactions start with BEGIN IMMEDIATE: they take SQLite's one
  write lock before their first read, so a read-then-write (a claim, a schedule
  tick) never fails half way on a lock upgrade, and FOR UPDATE is not needed.
  ``query`` of a SELECT uses a plain BEGIN: in WAL mode readers never wait.
* The file is in WAL mode with synchronous=FULL: a commit is on disk when
  ``run`` returns (a submitted task survives a power cut, as on MySQL).
* Several ``SQLiteDatabase`` objects (threads, processes) may share one file;
  one object serialises its threads on a lock around its one connection.
* Rows are dicts with MySQL's column names; time columns come back as naive UTC
  datetimes, and datetimes passed in are stored as UTC text with microseconds.
* SQLite commits are local, so a commit's outcome is never ambiguous:
  ``on_ambiguous`` is accepted for the interface and never needed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from taskman.errors import (
    ConfigError,
    DuplicateKeyError,
    SchemaError,
    StoreError,
    TransientStoreError,
)
from taskman.store import queries_sqlite
from taskman.store.connection import run_retrying

log = structlog.get_logger("taskman.store")
T = TypeVar("T")

TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


@dataclass(frozen=True)
class SQLiteDSN:
    path: Path  # absolute

    def redacted(self) -> str:
        return f"sqlite:///{self.path}"

    def __str__(self) -> str:
        return self.redacted()


def parse_sqlite_dsn(dsn: str) -> SQLiteDSN:
    """``sqlite:///absolute/path`` or ``sqlite:///./relative`` (resolved against the cwd now)."""
    parts = urlsplit(dsn)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(
            f"not a SQLite DSN: {dsn!r}; expected sqlite:///absolute/path or sqlite:///./relative"
        )
    if parts.query or parts.fragment:
        raise ConfigError("a SQLite DSN takes no options")
    path = parts.path
    # sqlite:///./x and sqlite:///../x are relative; sqlite:////x and sqlite:///x absolute.
    if path.startswith(("/./", "/../")):
        path = path[1:]
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        raise ConfigError(f"the SQLite DSN names a directory, not a file: {resolved}")
    return SQLiteDSN(resolved)


def to_text(value: datetime) -> str:
    """A datetime as stored: UTC, microseconds, fixed width. Naive means UTC (as on MySQL)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime(TIME_FORMAT)


def from_text(value: str) -> datetime:
    return datetime.fromisoformat(value)  # naive, like PyMySQL's DATETIME


def _add_us(stamp: str | None, micros: float | None) -> str | None:
    if stamp is None or micros is None:
        return None
    return to_text(from_text(stamp) + timedelta(microseconds=round(micros)))


def _diff_us(start: str | None, end: str | None) -> int | None:
    if start is None or end is None:
        return None
    delta = from_text(end) - from_text(start)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def classify(exc: sqlite3.Error) -> StoreError:
    """Map a sqlite3 error onto taskman's errors, as ``connection.classify`` maps PyMySQL's."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _BUSY_CODES:
        return TransientStoreError(f"database busy: {exc}")
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE constraint failed" in str(exc):
        # The stores catch it to find the row that holds the key.
        return DuplicateKeyError(f"duplicate key: {exc}")
    if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such table"):
        return SchemaError(f"SQLite error: {exc}")  # older than the code: `taskman db migrate`
    return StoreError(f"SQLite error: {exc}")


def _param(value: Any) -> Any:
    return to_text(value) if isinstance(value, datetime) else value


class SQLiteCursor:
    """The subset of PyMySQL's DictCursor the stores use: execute, fetchone, fetchall, lastrowid."""

    def __init__(self, db: SQLiteDatabase, conn: sqlite3.Connection) -> None:
        self._db = db
        self._conn = conn
        self._rows: list[dict[str, Any]] = []
        self._next = 0
        self.lastrowid = 0
        self.rowcount = -1

    def execute(self, query: str, args: Any = None) -> int:
        """Run one statement; returns affected rows, or for a SELECT the rows found (as PyMySQL)."""
        params: Sequence[Any] = ()
        if args is not None:  # like PyMySQL: placeholders only when there are arguments
            query = query.replace("%s", "?")
            params = [_param(a) for a in args]
        self._db.stamp()
        try:
            cur = self._conn.execute(query, params)
            fetched = cur.fetchall() if cur.description is not None else None
        except sqlite3.Error as exc:
            raise classify(exc) from exc
        if fetched is None:
            self._rows = []
            self.rowcount = cur.rowcount
        else:
            names = [d[0] for d in cur.description]
            self._rows = [_row(names, values) for values in fetched]
            self.rowcount = len(self._rows)
        self._next = 0
        self.lastrowid = cur.lastrowid or 0
        return self.rowcount

    def execute_each(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run statements; the rows each one changed, or the last one's query rows (as MySQL's)."""
        return [self.execute(sql, args) for sql, args in statements]

    def execute_each_and_commit(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """``execute_each``: the transaction's COMMIT follows when the store function returns."""
        return self.execute_each(statements)

    def render_rows(
        self, statement: str, row: str, columns: Sequence[Sequence[Any]]
    ) -> tuple[str, Sequence[Any] | None]:
        """``statement``, then ``row`` once per row of ``columns``: ``execute``'s arguments."""
        rows = list(zip(*columns, strict=True))
        return statement + ", ".join([row] * len(rows)), [value for item in rows for value in item]

    def fetchone(self) -> dict[str, Any] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[dict[str, Any]]:
        rest = self._rows[self._next :]
        self._next = len(self._rows)
        return rest


def _row(names: list[str], values: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(names, values, strict=True))
    for name in names:
        value = row[name]
        if isinstance(value, str) and name in queries_sqlite.DATETIME_COLUMNS:
            row[name] = from_text(value)
    return row


class SQLiteDatabase:
    """The SQLite twin of ``Database``: same methods, rows and errors; see the module doc."""

    q: ModuleType = queries_sqlite
    dialect = "sqlite"

    def __init__(
        self,
        dsn: str | SQLiteDSN,
        *,
        retry_deadline: float = 30.0,
        busy_timeout: float = 2.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.dsn = dsn if isinstance(dsn, SQLiteDSN) else parse_sqlite_dsn(dsn)
        self.retry_deadline = retry_deadline
        self.busy_timeout = busy_timeout
        # The database's clock; tests set it, as MariaDB tests use SET timestamp.
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._now = to_text(self.clock())

    # -- the clock: tm_now() is one value per statement, like NOW(6) -------------------
    def stamp(self) -> None:
        self._now = to_text(self.clock())

    # -- connection ------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.dsn.path,
                timeout=self.busy_timeout,  # busy_timeout: wait this long for the write lock
                isolation_level=None,  # transactions are ours: BEGIN IMMEDIATE / COMMIT
                check_same_thread=False,  # one lock guards it across threads
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.dsn.path}: {exc}") from None
        try:
            conn.create_function("tm_now", 0, lambda: self._now)
            conn.create_function("tm_add_us", 2, _add_us, deterministic=True)
            conn.create_function("tm_diff_us", 2, _diff_us, deterministic=True)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{self.dsn.path}: could not switch to WAL mode ({mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")  # attempts follow their task on prune
            conn.execute("PRAGMA case_sensitive_like = ON")  # as utf8mb4_bin on MySQL
        except sqlite3.Error as exc:
            conn.close()
            raise classify(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    # -- transactions ----------------------------------------------------
    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[SQLiteCursor]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise classify(exc) from exc
        try:
            yield SQLiteCursor(self, conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise classify(exc) from exc
            raise

    def run_once(self, fn: Callable[[SQLiteCursor], T], *, write: bool = True) -> T:
        with self._lock, self._transaction(write=write) as cur:
            return fn(cur)

    def run(
        self,
        fn: Callable[[SQLiteCursor], T],
        *,
        deadline: float | None = None,
        on_ambiguous: Callable[[SQLiteCursor], T | None] | None = None,
        write: bool = True,
    ) -> T:
        """Run ``fn`` in a transaction, retrying SQLITE_BUSY with jitter until a deadline."""
        del on_ambiguous  # a local commit either happened or raised: never ambiguous

        return run_retrying(
            lambda: self.run_once(fn, write=write),
            self.retry_deadline if deadline is None else deadline,
        )

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        def fn(cur: SQLiteCursor) -> list[dict[str, Any]]:
            cur.execute(sql, args)
            return cur.fetchall()

        # A SELECT needs no write lock: in WAL mode it reads a snapshot without waiting.
        return self.run(fn, write=not sql.lstrip().upper().startswith("SELECT"))

    def execute(self, sql: str, args: Any = None) -> int:
        return self.run(lambda cur: cur.execute(sql, args))

    def ping(self) -> bool:
        try:
            self.run_once(lambda cur: cur.execute("SELECT 1"), write=False)
        except (StoreError, sqlite3.Error):
            return False
        return True
