"""Database faults under running nodes: a stalled database, errors nobody listed, a read-only server.

The invariants at stake: every loop survives every error (10); a node that
cannot perform a duty gives it up (10); a node whose database stalls stops its
runners before the leader can reclaim their attempts (7, 11).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pymysql
import pytest

from taskman import Client, Outcome, TaskState
from taskman.lab import MariaDBServer
from tests.chaos.support import OVERLAP_WINDOW, overlap, read_beats
from tests.faults.support import DeathWatch, FreezableProxy
from tests.integration.cluster_support import FAST_NODE, read_log, wait_state, wait_until
from tests.integration.conftest import StartNode

HEARTBEAT_TIMEOUT = FAST_NODE["heartbeat_timeout"]


@pytest.fixture
def proxy(mariadb: MariaDBServer) -> Iterator[FreezableProxy]:
    p = FreezableProxy(mariadb.host, mariadb.port)
    yield p
    p.close()


def test_a_node_whose_database_stalls_stops_its_runners_before_another_node_reruns_them(
    start_node: StartNode, client: Client, dsn: str, proxy: FreezableProxy, tmp_path: Path
) -> None:
    """The local database hangs (ZooKeeper is fine): the node must give up its attempts
    before ``heartbeat_timeout``, and the leader's duties must move to a node that can
    still reach the database."""
    log = tmp_path / "exec.log"
    # a reaches the database through the proxy and starts first: it leads.
    a = start_node("a", "dc1", dsn=proxy.dsn_for(dsn))
    a.wait_for_event("leader.elected", timeout=15)
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(12, str(log)))
    wait_until(lambda: read_log(log), 15, "the first attempt to start on a")
    first_pid = read_log(log)[0][3]
    start_node("b", "dc2")
    watch = DeathWatch()
    watch.watch(first_pid)
    proxy.freeze()
    frozen_at = time.time()
    try:
        second = wait_until(
            lambda: [r for r in read_log(log) if r[1] == 2 and r[4] == "start"],
            # the leader resigns after heartbeat_timeout, then its successor
            # waits out heartbeat_timeout on its own clock
            2 * HEARTBEAT_TIMEOUT + 4,
            "a second attempt to start on b",
        )
        second_started = time.time()
        assert first_pid in watch.died_at, "attempt 1 still runs beside attempt 2"
        print(
            f"\ndatabase stall: attempt 1 killed {watch.died_at[first_pid] - frozen_at:.2f} s "
            f"after the stall, attempt 2 started {second_started - frozen_at:.2f} s after it"
        )
        assert watch.died_at[first_pid] - frozen_at < HEARTBEAT_TIMEOUT
        assert second[0][3] != first_pid
    finally:
        proxy.thaw()
        watch.stop()
    task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=30)
    assert task.attempts[-1].node == "b"
    assert [r[4] for r in read_log(log)].count("done") == 1
    # a survived the stall, and with its database back it serves again.
    assert a.alive()
    assert any(e["event"] == "leader.resigned" for e in a.events())


@pytest.fixture
def limited_user(mariadb: MariaDBServer, dsn: str) -> Iterator[str]:
    """A DSN for an account without SUPER, so read_only and revokes apply to it."""
    database = urlsplit(dsn).path.lstrip("/")
    user = f"u{uuid.uuid4().hex[:10]}"
    conn = mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
            cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
        parts = urlsplit(dsn)
        host = parts.netloc.rpartition("@")[2]
        yield parts._replace(netloc=f"{user}:pw@{host}").geturl()
    finally:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 0")
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        conn.close()


def test_nodes_survive_a_read_only_database_and_carry_on(
    start_node: StartNode, client: Client, mariadb: MariaDBServer, limited_user: str
) -> None:
    """1290 (read-only, as during a failover) is no error taskman lists: no loop may die of it."""
    a = start_node("a", "dc1", dsn=limited_user)
    a.wait_for_event("leader.elected", timeout=15)
    running = client.submit("demo.tasks:sleep", plugin="demo", args=(2,))
    wait_state(client, running, TaskState.RUNNING, timeout=15)
    conn = mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 1")
        time.sleep(3)  # heartbeats, claims, reaps and the outcome all hit 1290
        assert a.alive(), "the node died of a read-only database"
    finally:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 0")
        conn.close()
    wait_state(client, running, TaskState.SUCCEEDED, timeout=20)
    # The main loop claims again, and the leader still leads: it expires a task.
    later = client.submit("demo.tasks:add", plugin="demo", args=(1, 2))
    assert wait_state(client, later, TaskState.SUCCEEDED, timeout=20).result == 3
    _assert_the_leader_still_expires(client)
    assert any(e["event"] == "loop.error" for e in a.events())


def test_nodes_survive_statements_killed_under_their_feet(
    start_node: StartNode, client: Client, mariadb: MariaDBServer, dsn: str
) -> None:
    """KILL QUERY (1317) and KILL CONNECTION, in a loop, on every statement of the test's
    database: work goes on, each task succeeds exactly once."""
    database = urlsplit(dsn).path.lstrip("/")
    a = start_node("a", "dc1")
    b = start_node("b", "dc2")
    ids = [client.submit("demo.tasks:add", plugin="demo", args=(i, 1)) for i in range(40)]
    stop = threading.Event()
    killed = [0]

    def killer() -> None:
        conn = mariadb.root_connection()
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = %s AND command = 'Query'",
                        (database,),
                    )
                    for row in cur.fetchall():
                        thread_id = row["id"] if isinstance(row, dict) else row[0]
                        kind = "QUERY" if killed[0] % 4 else "CONNECTION"
                        try:
                            cur.execute(f"KILL {kind} {int(thread_id)}")
                            killed[0] += 1
                        except pymysql.err.OperationalError:
                            pass  # it finished first
        finally:
            conn.close()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        time.sleep(6)
        assert a.alive() and b.alive(), "a node died of a killed statement"
    finally:
        stop.set()
        thread.join(5)
    print(f"\nstatements killed: {killed[0]}")
    assert killed[0] > 0
    for i, task_id in enumerate(ids):
        task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=60)
        assert task.result == i + 1
        assert [x.outcome for x in task.attempts].count(Outcome.SUCCEEDED) == 1
    _assert_the_leader_still_expires(client)


def _hog_connections(dsn: str) -> list[pymysql.connections.Connection]:
    """Open connections as ``dsn``'s account until the server refuses one (1040)."""
    parts = urlsplit(dsn)
    hogs = []
    for _ in range(200):
        try:
            hogs.append(
                pymysql.connect(
                    host=parts.hostname,
                    port=parts.port or 3306,
                    user=parts.username,
                    password=parts.password or "",
                    ssl_disabled=True,
                    connect_timeout=5,
                )
            )
        except pymysql.err.OperationalError as exc:
            if exc.args[0] == 1040:
                return hogs
            raise
    raise AssertionError("the server never ran out of connections")


def _assert_the_leader_still_expires(client: Client) -> None:
    """A leader's duty: a task no node can start expires at its not_after."""
    doomed = client.submit(
        "demo.tasks:add",
        plugin="demo",
        args=(1, 2),
        datacenter="nowhere",
        not_after=datetime.now(UTC) + timedelta(seconds=1.0),
        allow_unserved=True,  # the client would refuse the pin at submit
    )
    wait_state(client, doomed, TaskState.EXPIRED, timeout=15)


@pytest.mark.parametrize("frozen_for", [3.0, 9.0], ids=["under-heartbeat-timeout", "over-it"])
def test_a_frozen_database_server_loses_nothing_and_runs_nothing_twice_at_once(
    start_node: StartNode,
    client: Client,
    mariadb: MariaDBServer,
    tmp_path: Path,
    frozen_for: float,
) -> None:
    """mariadbd itself stops (SIGSTOP) under two nodes with work running: every task
    succeeds exactly once, and no two attempts of a task ever run at the same time."""
    log = tmp_path / "exec.log"
    nodes = [start_node("a", "dc1"), start_node("b", "dc2")]
    ids = [
        client.submit("demo.tasks:sleep", plugin="demo", args=(2.5, str(log)), max_attempts=1)
        for _ in range(6)
    ]
    wait_until(lambda: len(read_log(log)) >= 4, 20, "attempts to start")
    assert mariadb.pid is not None
    os.kill(mariadb.pid, signal.SIGSTOP)
    try:
        time.sleep(frozen_for)
    finally:
        os.kill(mariadb.pid, signal.SIGCONT)
    assert all(n.alive() for n in nodes)
    for task_id in ids:
        task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=60)
        done = [r for r in read_log(log) if r[0] == task_id and r[4] == "done"]
        assert [(r[1], r[2]) for r in done].count((task.attempt, task.fence)) == 1
        # Earlier attempts ended for the node's trouble, never as the task's failure.
        assert all(a.outcome is not Outcome.CRASHED for a in task.attempts[:-1])
    beats = read_beats(log)
    worst = max(overlap(beats, task_id) for task_id in ids)
    print(f"\ndatabase frozen {frozen_for} s: worst overlap {worst:.2f} s")
    assert worst <= OVERLAP_WINDOW


def test_nodes_survive_a_server_out_of_connections(
    start_node: StartNode, client: Client, mariadb: MariaDBServer, dsn: str, limited_user: str
) -> None:
    """max_connections exhausted (1040) while every connection of the nodes is killed:
    they cannot reconnect for a while, then can; work goes on, each task once. (The
    nodes' account lacks CONNECTION ADMIN, which may always take one more.)"""
    database = urlsplit(dsn).path.lstrip("/")
    a = start_node("a", "dc1", dsn=limited_user)
    b = start_node("b", "dc2", dsn=limited_user)
    ids = [client.submit("demo.tasks:sleep", plugin="demo", args=(1.0,)) for _ in range(8)]
    wait_until(lambda: sum(client.get(i).state is TaskState.RUNNING for i in ids) >= 4, 20, "work")
    conn = mariadb.root_connection()
    hogs: list[pymysql.connections.Connection] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.max_connections AS n")
            row = cur.fetchone()
            limit = int(row["n"] if isinstance(row, dict) else row[0])
            # Another client hogs every connection the server allows (MariaDB's
            # floor for the limit is 10); then the nodes lose theirs.
            cur.execute("SET GLOBAL max_connections = 10")
            # For 4 s: every slot a node's reconnect wins is taken back, and the
            # freed slot hogged again, so the nodes' reconnects meet 1040.
            until = time.monotonic() + 4
            while time.monotonic() < until:
                hogs += _hog_connections(limited_user)
                hog_ids = {h.thread_id() for h in hogs}
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE db = %s", (database,)
                )
                for found in cur.fetchall():
                    thread_id = int(found["id"] if isinstance(found, dict) else found[0])
                    if thread_id not in hog_ids:
                        with contextlib.suppress(pymysql.err.OperationalError):  # gone already
                            cur.execute(f"KILL CONNECTION {thread_id}")
                time.sleep(0.02)
        assert a.alive() and b.alive(), "a node died of a server out of connections"
    finally:
        for hog in hogs:
            hog.close()
        with conn.cursor() as cur:
            cur.execute(f"SET GLOBAL max_connections = {limit}")
        conn.close()
    refused = [e for n in (a, b) for e in n.events() if "1040" in str(e.get("error", ""))]
    assert refused, "no node met the connection limit: the fault was not injected"
    for task_id in ids:
        task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=60)
        assert [x.outcome for x in task.attempts].count(Outcome.SUCCEEDED) == 1
    _assert_the_leader_still_expires(client)
