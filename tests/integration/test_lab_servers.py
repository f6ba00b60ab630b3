"""The lab harness against real servers: what later tests rely on actually holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pymysql
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError
from kazoo.handlers.threading import KazooTimeoutError

from taskman.lab import LabError, MariaDBServer, ZooKeeperEnsemble, free_port
from taskman.lab.servers import process as lab_process
from taskman.lab.servers import zookeeper as lab_zookeeper

OP_TIMEOUT = 5.0


def _connect(url: str) -> pymysql.connections.Connection:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port,
        user=parts.username,
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        connect_timeout=5,
        read_timeout=10,
        ssl_disabled=True,
    )


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


@contextmanager
def _zk_client(hosts: str) -> Iterator[KazooClient]:
    # Short, capped reconnect backoff: the tests kill servers on purpose.
    client = KazooClient(
        hosts=hosts,
        timeout=10.0,
        connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 1.5, "max_delay": 1.0},
    )
    try:
        client.start(timeout=15)
        yield client
    finally:
        client.stop()
        client.close()


def _write(client: KazooClient, path: str, data: bytes, within: float = 30.0) -> None:
    """Create ``path``, retrying through connection loss and elections until ``within``."""
    deadline = time.monotonic() + within
    while True:
        try:
            client.create_async(path, data).get(timeout=OP_TIMEOUT)
            return
        except NodeExistsError:
            return  # an earlier try committed but its reply was lost
        except (KazooException, KazooTimeoutError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _read(hosts: str, path: str, within: float = 30.0) -> bytes:
    """Read ``path`` through ``hosts`` after a sync, retrying while the server rejoins."""
    deadline = time.monotonic() + within
    while True:
        try:
            with _zk_client(hosts) as client:
                client.sync_async(path).get(timeout=OP_TIMEOUT)  # catch up a lagging follower
                data, _ = client.get_async(path).get(timeout=OP_TIMEOUT)
                assert isinstance(data, bytes)
                return data
        except (KazooException, KazooTimeoutError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


# -- MariaDB ----------------------------------------------------------------


def test_mariadb_answers_select_1_through_its_dsn(mariadb: MariaDBServer) -> None:
    name = f"lab_{uuid.uuid4().hex[:12]}"
    url = mariadb.create_database(name)
    try:
        assert url == f"mysql://taskman:lab-pw-5e1f@127.0.0.1:{mariadb.port}/{name}"
        rows = _query(url, "SELECT 1, CURRENT_USER(), DATABASE(), @@port")
        assert rows == [(1, "taskman@%", name, mariadb.port)]
    finally:
        mariadb.drop_database(name)


def test_dsn_fixture_gives_a_migrated_database_of_its_own(dsn: str) -> None:
    assert _query(dsn, "SELECT 1") == [(1,)]
    tables = {row[0] for row in _query(dsn, "SHOW TABLES")}
    assert tables, "migrate() created no tables"


def test_create_and_drop_database(mariadb: MariaDBServer) -> None:
    name = f"lab_{uuid.uuid4().hex[:12]}"

    def exists() -> bool:
        conn = mariadb.root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW DATABASES LIKE %s", (name,))
                return cur.fetchone() is not None
        finally:
            conn.close()

    assert not exists()
    url = mariadb.create_database(name)
    assert exists()
    assert mariadb.create_database(name) == url  # IF NOT EXISTS: idempotent
    _query(url, "CREATE TABLE t (id INT PRIMARY KEY)")
    assert _query(url, "SHOW TABLES") == [("t",)]
    mariadb.drop_database(name)
    assert not exists()
    mariadb.drop_database(name)  # IF EXISTS: idempotent


def test_mariadb_survives_kill_and_restart_with_its_data(tmp_path: Path) -> None:
    port = free_port()
    server = MariaDBServer(tmp_path / "db", port=port)
    with server:
        url = server.create_database("durable")
        _query(url, "CREATE TABLE t (v INT)")
        conn = _connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (42)")
            conn.commit()
        finally:
            conn.close()
        first_pid = server.pid
        assert first_pid is not None

        server.kill()
        assert not server.running
        with pytest.raises(pymysql.err.OperationalError):
            _query(url, "SELECT 1")

        server.start()
        second_pid = server.pid
        assert second_pid is not None
        assert second_pid != first_pid
        assert server.port == port
        assert _query(url, "SELECT v FROM t") == [(42,)]  # committed data survived SIGKILL

        server.restart()
        assert _query(url, "SELECT v FROM t") == [(42,)]
    assert server.pid is None
    server.stop()  # a second stop is a no-op


def test_missing_binaries_raise_an_actionable_lab_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(lab_process, "_EXTRA_BIN_DIRS", ())
    with pytest.raises(LabError, match=r"mariadbd not found.*run scripts/install-deps"):
        MariaDBServer(tmp_path / "db").start()
    with pytest.raises(LabError, match=r"java not found.*run scripts/install-deps"):
        ZooKeeperEnsemble(tmp_path / "zk").start()

    monkeypatch.undo()
    monkeypatch.setattr(lab_zookeeper, "ZOOKEEPER_JARS", (tmp_path / "no-zookeeper.jar",))
    with pytest.raises(LabError, match=r"jars missing.*run scripts/install-deps"):
        ZooKeeperEnsemble(tmp_path / "zk").start()


# -- ZooKeeper --------------------------------------------------------------


def test_zookeeper_accepts_create_and_delete(zookeeper: ZooKeeperEnsemble, zk_hosts: str) -> None:
    assert zk_hosts == f"127.0.0.1:{zookeeper.client_ports[0]}"
    assert zookeeper.server_mode(0) == "standalone"
    path = f"/lab-{uuid.uuid4().hex}"
    with _zk_client(zk_hosts) as client:
        client.create_async(path, b"hello").get(timeout=OP_TIMEOUT)
        data, stat = client.get_async(path).get(timeout=OP_TIMEOUT)
        assert data == b"hello"
        assert stat.version == 0
        client.delete_async(path).get(timeout=OP_TIMEOUT)
        assert client.exists_async(path).get(timeout=OP_TIMEOUT) is None


def test_three_servers_keep_accepting_writes_through_kills(tmp_path: Path) -> None:
    with ZooKeeperEnsemble(tmp_path / "zk", size=3) as zk:
        assert len(set(zk.client_ports)) == 3
        assert all(pid is not None for pid in zk.pids)
        modes = sorted(str(zk.server_mode(i)) for i in range(3))
        assert modes == ["follower", "follower", "leader"]

        with _zk_client(zk.hosts) as client:
            _write(client, "/before", b"0")

            # A follower dies: the other two still form a quorum.
            leader = zk.leader()
            assert leader is not None
            follower = (leader + 1) % 3
            zk.kill_server(follower)
            assert zk.pids[follower] is None
            assert zk.server_mode(follower) is None
            _write(client, "/while-follower-down", b"1")

            zk.start_server(follower)
            assert zk.pids[follower] is not None
            assert zk.server_mode(follower) in ("follower", "leader")
            # The restarted server caught up on what was written while it was down.
            assert _read(zk.server_hosts(follower), "/while-follower-down") == b"1"

            # The leader dies: the rest elect a new one and writes resume.
            zk.kill_server(leader)
            _write(client, "/while-leader-down", b"2")
            new_leader = zk.leader()
            assert new_leader is not None
            assert new_leader != leader

            zk.start_server(leader)
            assert _read(zk.server_hosts(leader), "/while-leader-down") == b"2"
            _write(client, "/after", b"3")
    assert zk.pids == [None, None, None]
    zk.stop()  # a second stop is a no-op


def test_paused_server_stops_answering_and_resumes(tmp_path: Path) -> None:
    with ZooKeeperEnsemble(tmp_path / "zk", size=3) as zk:
        leader = zk.leader()
        assert leader is not None
        follower = (leader + 1) % 3
        zk.pause_server(follower)
        assert zk.server_mode(follower) is None  # alive but silent
        assert zk.pids[follower] is not None
        with _zk_client(zk.hosts) as client:
            _write(client, "/while-paused", b"p")
        zk.resume_server(follower)
        # A resumed follower may answer briefly from its stale view, then notice the
        # leader dropped it and rejoin; so wait for the data, not for a mode.
        assert _read(zk.server_hosts(follower), "/while-paused") == b"p"
        assert zk.server_mode(follower) in ("follower", "leader")
