"""Writes whose COMMIT reply is lost: the commit applied, but the client never heard back.

A small TCP proxy sits between the store and the real MariaDB. Once armed, it
forwards the next COMMIT to the server, waits for the server's reply, throws the
reply away and closes the client's side: the write is durable, and the client
sees "Lost connection to MySQL server during query" (2013) at COMMIT.

taskman documents that case as ambiguous (AmbiguousCommitError: "lost connection
during COMMIT: re-read first"; Database.run: "after an ambiguous commit (1180 or a
connection lost at COMMIT) on_ambiguous re-reads the truth instead of repeating the
write"). The tests check what the caller is told against what the database holds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pymysql
import pymysql.cursors
import pytest

from taskman import Client, Outcome, TaskRequest, TaskState
from taskman.dsn import parse_dsn
from taskman.store import ClaimRequest, Ending, Finish, TaskStore

FN = "demo.tasks:add"
PLUGINS = {"demo": ["1.0"]}
COMMIT_PACKET = b"\x03COMMIT"  # COM_QUERY "COMMIT", as PyMySQL's Connection.commit sends it
COMMIT_TAIL = b";\nCOMMIT"  # a COMMIT sent as the last statement of a multi-statement packet

# These tests once failed: a connection lost at COMMIT was treated as a plain
# transient error (the write was repeated instead of re-read), and errors during
# the connection's session set-up escaped unclassified.


class CommitReplyDropper:
    """A loopback TCP proxy to ``host:port`` that can lose one COMMIT reply on demand."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self.dropped = threading.Event()
        # The last bytes the client sent before the COMMIT whose reply was lost: which
        # transaction it ended (the statement's tail, when it took several reads).
        self.before_commit = b""
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        self.dropped.clear()
        self._armed.set()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _shut(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                _shut(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            state = {"drop_reply": False}
            threading.Thread(
                target=self._upstream, args=(client, server, state), daemon=True
            ).start()
            threading.Thread(
                target=self._downstream, args=(client, server, state), daemon=True
            ).start()

    def _upstream(
        self, client: socket.socket, server: socket.socket, state: dict[str, Any]
    ) -> None:
        last = b""
        try:
            while data := client.recv(65536):
                if self._armed.is_set() and (COMMIT_PACKET in data or data.endswith(COMMIT_TAIL)):
                    self._armed.clear()
                    self.before_commit = last
                    state["drop_reply"] = True
                last = data
                server.sendall(data)
        except OSError:
            pass
        _shut(client)
        _shut(server)

    def _downstream(
        self, client: socket.socket, server: socket.socket, state: dict[str, Any]
    ) -> None:
        try:
            while data := server.recv(65536):
                if state["drop_reply"]:
                    # The server has committed and answered; the client never hears it.
                    self.dropped.set()
                    break
                client.sendall(data)
        except OSError:
            pass
        _shut(client)
        _shut(server)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@pytest.fixture
def proxy(dsn: str) -> Iterator[CommitReplyDropper]:
    d = parse_dsn(dsn)
    p = CommitReplyDropper(d.host, d.port)
    try:
        yield p
    finally:
        p.close()


def _via(dsn: str, proxy: CommitReplyDropper) -> str:
    d = parse_dsn(dsn)
    return f"mysql://{d.user}:{d.password}@127.0.0.1:{proxy.port}/{d.database}"


def _row(dsn: str, task_id: int) -> dict[str, Any]:
    d = parse_dsn(dsn)
    conn = pymysql.connect(
        host=d.host,
        port=d.port,
        user=d.user,
        password=d.password,
        database=d.database,
        autocommit=True,
        cursorclass=pymysql.cursors.DictCursor,
        ssl_disabled=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
            row = cur.fetchone()
            assert row is not None
            cur.execute(
                "SELECT attempt, fence, outcome FROM attempts WHERE task_id = %s ORDER BY attempt",
                (task_id,),
            )
            row["_attempts"] = [tuple(a.values()) for a in cur.fetchall()]
            return dict(row)
    finally:
        conn.close()


def _count(dsn: str) -> int:
    d = parse_dsn(dsn)
    conn = pymysql.connect(
        host=d.host,
        port=d.port,
        user=d.user,
        password=d.password,
        database=d.database,
        autocommit=True,
        ssl_disabled=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM tasks")
            (n,) = cur.fetchone() or (None,)
            return int(n)
    finally:
        conn.close()


def test_the_proxy_passes_traffic_and_loses_exactly_one_commit_reply(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(_via(dsn, proxy)) as client:
        first = client.submit(FN, plugin="demo", args=[1])
        assert client.get(first).args == [1]
        assert not proxy.dropped.is_set()
        proxy.arm()
        second = client.submit(FN, plugin="demo", args=[2])
        assert proxy.dropped.is_set()
        assert client.get(second).args == [2]


def test_submit_whose_commit_reply_is_lost_inserts_exactly_once(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(_via(dsn, proxy)) as client:
        # Connect first, and leave out the check of served plugins (its read is a
        # transaction of its own): the next COMMIT is the INSERT's.
        assert client.counts() == {}
        proxy.arm()
        task_id = client.submit(FN, plugin="demo", args=["once"], allow_unserved=True)
        assert proxy.dropped.is_set()
        assert b"INSERT INTO tasks" in proxy.before_commit
        assert _count(dsn) == 1
        assert _row(dsn, task_id)["args"] == '["once"]'

        proxy.arm()
        keyed = client.submit(
            FN, plugin="demo", args=["keyed"], idempotency_key="k", allow_unserved=True
        )
        assert proxy.dropped.is_set()
        assert b"INSERT INTO tasks" in proxy.before_commit
        assert _count(dsn) == 2
        assert _row(dsn, keyed)["idempotency_key"] == "k"


def test_submit_many_whose_commit_reply_is_lost_inserts_each_task_once(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(dsn) as client:
        existing = client.submit(FN, plugin="demo", args=["keyed"], idempotency_key="k")
    items: list[TaskRequest] = [
        {"function": FN, "plugin": "demo", "args": [i]} for i in range(1200)
    ]
    items[600:600] = [{"function": FN, "plugin": "demo", "args": ["keyed"], "idempotency_key": "k"}]
    items.append({"function": FN, "plugin": "demo", "args": ["new"], "idempotency_key": "n"})
    items.append({"function": FN, "plugin": "demo", "args": ["new"], "idempotency_key": "n"})
    with Client(_via(dsn, proxy)) as client:
        assert client.counts() == {"queued": 1}  # connect first; unchecked: one transaction
        proxy.arm()
        ids = client.submit_many(items, allow_unserved=True)
        assert proxy.dropped.is_set()
        assert b"request_id BETWEEN" in proxy.before_commit  # the batch's last statement
    assert _count(dsn) == 1 + 1200 + 1  # once each: not inserted again after the lost reply
    assert ids[600] == existing and ids[-1] == ids[-2] != existing
    assert [json.loads(_row(dsn, ids[i])["args"]) for i in (0, 599, 601, 1200)] == [
        [0],
        [599],
        [600],
        [1199],
    ]
    assert len(set(ids)) == 1200 + 2


def test_finish_whose_commit_reply_is_lost_reports_that_it_applied(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(dsn) as client:
        task_id = client.submit(FN, plugin="demo")
    node = TaskStore(_via(dsn, proxy))
    try:
        claim = node.claim(task_id, 0, 100, "n-a", "dc1", "1.0")
        assert claim is not None
        proxy.arm()
        applied = node.finish(
            Finish(
                task_id,
                1,
                100,
                Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json='{"x": 1}'),
            )
        )
        assert proxy.dropped.is_set()
    finally:
        node.close()
    row = _row(dsn, task_id)
    assert row["state"] == "succeeded"  # the write is durable...
    assert row["_attempts"] == [(1, 100, "succeeded")]
    assert applied is True  # ...so "False: you were fenced" would be a lie


def test_claim_whose_commit_reply_is_lost_returns_the_claim(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(dsn) as client:
        task_id = client.submit(FN, plugin="demo")
    node = TaskStore(_via(dsn, proxy))
    try:
        (cand,) = node.candidates("dc1", PLUGINS, 10)
        proxy.arm()
        claim = node.claim(task_id, cand.attempt, 100, "n-a", "dc1", "1.0")
        assert proxy.dropped.is_set()
    finally:
        node.close()
    row = _row(dsn, task_id)
    assert (row["state"], row["fence"], row["owner"]) == ("running", 100, "n-a")
    # The task runs under this node's token: the node must be told it owns it.
    assert claim is not None
    assert claim.fence == 100


def test_abort_whose_commit_reply_is_lost_reports_aborted(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(_via(dsn, proxy)) as client:
        task_id = client.submit(FN, plugin="demo")
        proxy.arm()
        state = client.abort(task_id)  # today: TaskStateError "already aborted"
        assert proxy.dropped.is_set()
    assert _row(dsn, task_id)["state"] == "aborted"
    assert state is TaskState.ABORTED


def test_a_connection_lost_during_session_setup_is_retried(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(_via(dsn, proxy)) as client:
        # No connection yet: the first COMMIT on the wire is the one that ends
        # Database._connect's session set-up.
        proxy.arm()
        task_id = client.submit(FN, plugin="demo", args=["first"])
        assert proxy.dropped.is_set()
    assert _count(dsn) == 1
    assert _row(dsn, task_id)["args"] == '["first"]'


def test_batches_whose_commit_reply_is_lost_report_each_task_as_stored(
    dsn: str, proxy: CommitReplyDropper
) -> None:
    with Client(dsn) as client:
        ours, theirs = (client.submit(FN, plugin="demo", args=[i]) for i in range(2))
    other = TaskStore(dsn)
    node = TaskStore(_via(dsn, proxy))
    try:
        assert other.claim(theirs, 0, 900, "n-b", "dc1", "1.0") is not None
        batch = [ClaimRequest(ours, 0, 100, "1.0"), ClaimRequest(theirs, 0, 100, "1.0")]
        proxy.arm()
        claims = node.claim_many(batch, "n-a", "dc1")
        assert proxy.dropped.is_set()
        assert claims[0] is not None and claims[0].fence == 100
        assert claims[1] is None  # a larger token holds it: not ours, whatever the reread saw

        records = [
            Finish(ours, 1, 100, Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json="1")),
            Finish(theirs, 1, 100, Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json="2")),
        ]
        proxy.arm()
        applied = node.finish_many(records)
        assert proxy.dropped.is_set()
    finally:
        node.close()
        other.close()
    assert _row(dsn, ours)["_attempts"] == [(1, 100, "succeeded")]
    assert _row(dsn, theirs)["state"] == "running"
    assert applied == [True, False]
