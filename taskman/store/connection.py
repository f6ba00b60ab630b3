"""One MySQL connection, reconnected on demand, and the policy that retries transient errors."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import Any, TypeVar

import pymysql
import pymysql.cursors
import structlog
from pymysql.connections import Connection
from pymysql.constants import CLIENT, SERVER_STATUS
from pymysql.converters import escape_string
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from taskman.dsn import MySQLDSN, parse_dsn
from taskman.errors import (
    AccessDeniedError,
    AmbiguousCommitError,
    DuplicateKeyError,
    SchemaError,
    StoreError,
    TaskmanError,
    TransientStoreError,
)
from taskman.store import queries as q

log = structlog.get_logger("taskman.store")
T = TypeVar("T")

# MySQL/MariaDB error codes that a retry can fix.
TRANSIENT_CODES = frozenset(
    {
        1040,  # too many connections
        1047,  # WSREP has not yet prepared node for application use (Galera non-primary)
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        1213,  # deadlock, or Galera certification failure
        1317,  # query execution was interrupted (KILL QUERY)
        1927,  # connection was killed
        1969,  # max_statement_time exceeded (MariaDB)
        2003,  # can't connect
        2006,  # server has gone away
        2013,  # lost connection during query
        3024,  # max_execution_time exceeded (MySQL)
        4031,  # disconnected by the server because of inactivity
    }
)
# Retry waits: jittered, up to FIRST_WAIT s before the second try, doubling to MAX_WAIT.
FIRST_WAIT = 0.05
MAX_WAIT = 2.0
# A transaction left idle this long (seconds) is ended by the server, its locks with it.
# A process stopped between a write and its COMMIT (SIGSTOP, a VM pause) otherwise holds
# its row locks until it wakes: a paused leader's shared lock on the leadership row kept
# its successor out for innodb_lock_wait_timeout (50 s). Under database_fence_after at
# the shortest heartbeat_timeout (2.55 s), so a stalled client cannot make a node fence
# itself; every transaction of taskman's sends its statements milliseconds apart.
IDLE_TRANSACTION_LIMIT = 2
UNKNOWN_VARIABLE = 1193  # MySQL has no idle_transaction_timeout
# Statements sent together by execute_each: well under max_allowed_packet (16 MiB by default).
EACH_BATCH_BYTES = 1 << 20
AMBIGUOUS_CODES = frozenset({1180})  # error during COMMIT: outcome unknown
NO_SUCH_TABLE = 1146  # the schema is older than the code: `taskman db migrate`
DUPLICATE_KEY = 1062
DENIED_CODES = frozenset(
    {
        1044,  # access denied to the database
        1045,  # access denied (user, password, or REQUIRE SSL)
        1142,  # command denied on a table: the account lacks a privilege
        1143,  # column privilege denied
    }
)


def classify(exc: BaseException) -> BaseException:
    """Map a PyMySQL error onto taskman's errors; anything else stays as it is.

    No PyMySQL error leaves the store: callers see ``StoreError`` and its kinds only.
    """
    if isinstance(exc, TaskmanError):
        return exc
    if isinstance(exc, pymysql.err.InterfaceError):
        return TransientStoreError(f"database connection closed: {exc}")
    if not isinstance(exc, pymysql.err.MySQLError):
        return exc
    if not exc.args:
        return StoreError(f"database error: {exc!r}")
    code = exc.args[0]
    kind: type[StoreError] = StoreError
    if code in AMBIGUOUS_CODES:
        kind, text = AmbiguousCommitError, f"commit outcome unknown ({code})"
    elif code in TRANSIENT_CODES:
        kind, text = TransientStoreError, f"transient database error {code}"
    elif code in DENIED_CODES:
        kind, text = AccessDeniedError, f"the database refused ({code})"
    elif code == NO_SUCH_TABLE:
        kind, text = SchemaError, f"database error {code}"
    elif code == DUPLICATE_KEY:
        kind, text = DuplicateKeyError, f"duplicate key ({code})"
    else:
        # A code nobody listed (1290 read-only, a TLS error at reconnect, ...) is still
        # the database refusing: callers handle StoreError, so no loop dies of it.
        text = f"database error {code}"
    return kind(f"{text}: {exc.args[-1]}")


class MySQLCursor:
    """PyMySQL's cursor as the stores see it: a duplicate key is taskman's DuplicateKeyError.

    Translated per statement, not at COMMIT: a store catches the duplicate inside
    its transaction to find the row that holds the key (the SQLite cursor does the same).
    """

    def __init__(self, cur: pymysql.cursors.DictCursor) -> None:
        self._cur = cur
        self.committed = False  # query_and_commit ended the transaction already
        self._kept: list[dict[str, Any]] | None = None  # a query's rows, read before its COMMIT

    def query_and_commit(self, query: str, args: Any = None) -> list[dict[str, Any]]:
        """A read that is the whole transaction: the SELECT and its COMMIT in one round trip."""
        cur = self._cur
        self._kept = None
        cur.execute(cur.mogrify(query, args) + ";\nCOMMIT")
        rows = list(cur.fetchall())
        cur.nextset()  # the COMMIT's answer
        self.committed = True
        return rows

    @property
    def lastrowid(self) -> int:
        return int(self._cur.lastrowid)

    def execute(self, query: str, args: Any = None) -> int:
        self._kept = None
        try:
            return int(self._cur.execute(query, args))
        except pymysql.err.IntegrityError as exc:
            if exc.args and exc.args[0] == DUPLICATE_KEY:
                raise classify(exc) from exc
            raise

    def render_rows(
        self, statement: str, row: str, columns: Sequence[Sequence[Any]]
    ) -> tuple[str, Sequence[Any] | None]:
        """``statement``, then ``row`` once per row of ``columns``, joined by ", ": as
        ``execute``'s arguments, rendered here (safe in another thread).

        Row ``i`` fills ``row``'s placeholders with the ``i``-th value of each column,
        escaped as ``execute`` escapes them (``Connection.escape``). A chunk of
        submit_many holds thousands of values: the common types (None, str, int) are
        rendered here without escape's per-value dispatch, and a value repeated down
        a column (plugin, function, priority) is rendered once.
        """
        conn = self._cur.connection
        escape = conn.escape
        # Under sql_mode NO_BACKSLASH_ESCAPES (or unknown) strings are quoted otherwise.
        no_backslash = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
        if getattr(conn, "server_status", no_backslash) & no_backslash:
            rendered = [[escape(value) for value in column] for column in columns]
        else:
            rendered = [_rendered(column, escape) for column in columns]
        rows = [row % values for values in zip(*rendered, strict=True)]
        return statement + ", ".join(rows), None

    def execute_each(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run statements; the rows each one changed (or, for a query, found).

        Sent together (multi-statements, ``EACH_BATCH_BYTES`` at most per packet):
        a batch of fenced per-row writes costs one round trip, not one per row.
        Only the last statement may be a query: ``fetchall`` then returns its rows.
        Every value is escaped as ``execute`` escapes it. The server stops at the
        first statement that fails, and its error is raised here.
        """
        return self._each(statements, commit=False)

    def execute_each_and_commit(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """``execute_each``, with the COMMIT in the last packet: one round trip less.

        ``fetchall`` then returns the last statement's rows. The server stops at the
        first statement that fails, COMMIT included. A transient error on the packet
        that carries the COMMIT may have come after it applied: that is
        ``AmbiguousCommitError``, as a connection lost during ``commit()`` is.
        """
        return self._each(statements, commit=True)

    def _each(self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool) -> list[int]:
        cur = self._cur
        self._kept = None
        rendered = [cur.mogrify(sql, args) for sql, args in statements]
        chunks = list(_byte_chunks(rendered, EACH_BATCH_BYTES))
        if commit:
            chunks = chunks or [[]]
            chunks[-1].append("COMMIT")
        counts: list[int] = []
        for n, chunk in enumerate(chunks, 1):
            try:
                counts += self._send(";\n".join(chunk))
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                mapped = classify(exc)
                if commit and n == len(chunks) and isinstance(mapped, TransientStoreError):
                    raise AmbiguousCommitError(f"lost with its COMMIT: {mapped}") from exc
                raise
        if commit:
            counts.pop()  # the COMMIT's
            self.committed = True
        if len(counts) != len(statements):
            raise StoreError(f"{len(statements)} statements sent, {len(counts)} answered")
        return counts

    def _send(self, packet: str) -> list[int]:
        """One multi-statement packet: each statement's row count; a query's rows are kept."""
        cur = self._cur
        try:
            cur.execute(packet)
            counts = []
            while True:
                counts.append(int(cur.rowcount))
                if cur.description is not None:
                    self._kept = list(cur.fetchall())
                if not cur.nextset():
                    return counts
        except pymysql.err.IntegrityError as exc:
            if exc.args and exc.args[0] == DUPLICATE_KEY:
                raise classify(exc) from exc
            raise

    def fetchone(self) -> dict[str, Any] | None:
        if self._kept is not None:
            return self._kept.pop(0) if self._kept else None
        return self._cur.fetchone()

    def fetchall(self) -> list[dict[str, Any]]:
        if self._kept is not None:
            kept, self._kept = self._kept, None
            return kept
        return list(self._cur.fetchall())


def _byte_chunks(statements: list[str], limit: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for statement in statements:
        if chunk and size + len(statement) > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(statement)
        size += len(statement) + 2
    if chunk:
        yield chunk


def _rendered(column: Sequence[Any], escape: Callable[[Any], str]) -> list[str]:
    """A column's values as SQL literals (backslash escapes), each as ``escape`` renders it."""
    distinct = set(column)
    if 2 * len(distinct) > len(column) or len(set(map(type, column)) - {type(None)}) > 1:
        # Mostly distinct values; or several types, which a memo could mix up (1, 1.0
        # and True are one key but three literals).
        text = escape_string
        return [
            "NULL"
            if v is None
            else f"'{text(v)}'"
            if type(v) is str
            else str(v)
            if type(v) is int
            else escape(v)
            for v in column
        ]
    known = {v: escape(v) for v in distinct}
    return list(map(known.__getitem__, column))


def tls_options(dsn: MySQLDSN) -> dict[str, Any]:
    if not dsn.tls:
        # PyMySQL builds an SSL context on every connect unless told not to (~15 ms).
        return {"ssl_disabled": True}
    return {
        "ssl_ca": dsn.ssl_ca,
        "ssl_cert": dsn.ssl_cert,
        "ssl_key": dsn.ssl_key,
        "ssl_verify_cert": True,
        "ssl_verify_identity": dsn.ssl_verify_identity,
    }


def retry_policy(deadline: float, *, tried: int = 0) -> Retrying:
    """The one retry policy of both backends: transient errors only, jittered, until a deadline.

    ``tried``: attempts already made before the policy took over (``run_retrying``);
    the waits and the logged attempt numbers go on from there.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("db.retry", attempt=state.attempt_number + tried, error=str(exc))

    return Retrying(
        retry=retry_if_exception(_is_retryable),
        wait=wait_random_exponential(multiplier=FIRST_WAIT * 2**tried, max=MAX_WAIT),
        stop=stop_after_delay(deadline),
        before_sleep=before_sleep,
        reraise=True,
    )


def run_retrying(attempt: Callable[[], T], deadline: float) -> T:
    """``attempt()``, retried as ``retry_policy`` says until ``deadline`` seconds have passed.

    The first try runs outside the policy: setting up and entering a tenacity
    policy costs more Python than a node's short transaction does, on every call,
    and the first try almost always succeeds. A failed one waits and is logged as
    the policy would, which then takes over with what is left of the deadline.
    """
    started = time.monotonic()
    try:
        return attempt()
    except Exception as exc:
        if not _is_retryable(exc) or time.monotonic() - started >= deadline:
            raise
        log.info("db.retry", attempt=1, error=str(exc))
    time.sleep(random.uniform(0, FIRST_WAIT))
    return retry_policy(deadline - (time.monotonic() - started), tried=1)(attempt)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, TaskmanError) and exc.retryable


class Database:
    """A thread-safe wrapper around one PyMySQL connection.

    ``run(fn)`` calls ``fn(cursor)`` inside one transaction and retries the whole
    function on transient errors, reconnecting first. Functions given to ``run``
    must therefore be safe to repeat: taskman's are conditional (fenced) writes.
    """

    q: ModuleType = q  # the statements the stores run through this database (backend.py)
    dialect = "mysql"

    def __init__(
        self,
        dsn: str | MySQLDSN,
        *,
        retry_deadline: float = 30.0,
        connect_timeout: float = 5.0,
        read_timeout: float | None = 30.0,
    ) -> None:
        self.dsn = dsn if isinstance(dsn, MySQLDSN) else parse_dsn(dsn)
        self.retry_deadline = retry_deadline
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._conn: Connection[pymysql.cursors.DictCursor] | None = None
        self._lock = threading.RLock()
        self._galera: bool | None = None
        self._idle_limit_supported = True

    # -- connection ------------------------------------------------------
    def _connect(self) -> Connection[pymysql.cursors.DictCursor]:
        try:
            dsn = self.dsn
            conn: Connection[pymysql.cursors.DictCursor] = pymysql.connect(
                host=dsn.host,
                port=dsn.port,
                user=dsn.user,
                password=dsn.password,
                database=dsn.database,
                unix_socket=dsn.unix_socket,
                **tls_options(dsn),
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                write_timeout=self._read_timeout,
                autocommit=False,
                # execute_each sends a batch of writes in one packet; every value in
                # them is escaped, so no input can add a statement of its own.
                client_flag=CLIENT.MULTI_STATEMENTS,
                charset="utf8mb4",
                cursorclass=pymysql.cursors.DictCursor,
            )
        except pymysql.err.MySQLError as exc:
            raise classify(exc) from None
        try:
            with conn.cursor() as cur:
                cur.execute(q.SESSION_SETUP)
                self._limit_idle_transactions(cur)
                if self._galera is None:
                    cur.execute(q.HAS_WSREP)
                    row = cur.fetchone()
                    self._galera = bool(row and str(row.get("Value", "")).upper() == "ON")
                if self._galera:
                    cur.execute(q.SESSION_GALERA_SYNC)
            conn.commit()
        except pymysql.err.MySQLError as exc:
            with suppress(pymysql.err.Error):
                conn.close()
            raise classify(exc) from None
        return conn

    def _limit_idle_transactions(self, cur: pymysql.cursors.DictCursor) -> None:
        if not self._idle_limit_supported:
            return
        try:
            cur.execute(q.SESSION_IDLE_TRANSACTION_LIMIT, (IDLE_TRANSACTION_LIMIT,))
        except pymysql.err.OperationalError as exc:
            if not exc.args or exc.args[0] != UNKNOWN_VARIABLE:
                raise
            self._idle_limit_supported = False
            log.warning(
                "db.idle_transaction_limit_unsupported",
                detail="this server cannot end idle transactions: a stalled process "
                "holds its row locks until it wakes (docs/architecture.md, A stalled node)",
            )

    def _connection(self) -> Connection[pymysql.cursors.DictCursor]:
        if self._conn is None or not self._conn.open:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with suppress(pymysql.err.Error):
                    self._conn.close()
                self._conn = None

    def _discard(self) -> None:
        if self._conn is not None:
            with suppress(pymysql.err.Error):
                self._conn.close()
        self._conn = None

    # -- transactions ----------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[MySQLCursor]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                mysql_cursor = MySQLCursor(cur)
                yield mysql_cursor
            if not mysql_cursor.committed:
                self._commit(conn)
        except BaseException as exc:
            mapped = classify(exc)
            if isinstance(mapped, TransientStoreError):
                # The connection may be half-broken or the transaction aborted by
                # Galera; a fresh connection is the only safe state.
                self._discard()
            elif isinstance(mapped, StoreError):
                with suppress(pymysql.err.Error):
                    conn.rollback()
            else:
                try:
                    conn.rollback()
                except pymysql.err.Error:
                    self._discard()
            if mapped is exc:
                raise
            raise mapped from exc

    def _commit(self, conn: Connection[pymysql.cursors.DictCursor]) -> None:
        try:
            conn.commit()
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
            # The COMMIT may have reached the server before the connection broke:
            # whether it applied is unknown, so the caller must re-read, not repeat.
            if isinstance(classify(exc), TransientStoreError):
                self._discard()
                raise AmbiguousCommitError(f"connection lost during COMMIT: {exc}") from exc
            raise

    def run_once(self, fn: Callable[[MySQLCursor], T]) -> T:
        with self._lock, self._transaction() as cur:
            return fn(cur)

    def run(
        self,
        fn: Callable[[MySQLCursor], T],
        *,
        deadline: float | None = None,
        on_ambiguous: Callable[[MySQLCursor], T | None] | None = None,
    ) -> T:
        """Run ``fn`` in a transaction, retrying transient errors with jitter until a deadline.

        After an ambiguous commit (1180 or a connection lost at COMMIT) ``on_ambiguous``,
        when given, re-reads the truth first: its value is the result if the write
        applied; ``None`` means it did not, and ``fn`` runs again.
        """
        ambiguous = False

        def attempt() -> T:
            nonlocal ambiguous
            if ambiguous and on_ambiguous is not None:
                ambiguous = False
                found = self.run_once(on_ambiguous)
                if found is not None:
                    return found
            try:
                return self.run_once(fn)
            except AmbiguousCommitError:
                ambiguous = True
                raise

        return run_retrying(attempt, self.retry_deadline if deadline is None else deadline)

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        """One read in a transaction of its own (one round trip with its COMMIT)."""
        return self.run(lambda cur: cur.query_and_commit(sql, args))

    def execute(self, sql: str, args: Any = None) -> int:
        def fn(cur: MySQLCursor) -> int:
            return cur.execute(sql, args)

        return self.run(fn)

    def ping(self) -> bool:
        try:
            self.run_once(lambda cur: cur.execute("SELECT 1"))
        except (StoreError, pymysql.err.MySQLError):
            return False
        return True
