"""Real MariaDB and ZooKeeper servers for tests, benchmarks and a local dev cluster.

Every server is a child process of the caller, bound to loopback ports chosen here,
with its data and logs under a caller-supplied base directory. Nothing here talks to
a system-wide server (a MariaDB on 3306 may exist: it is never used).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

# The lab stands outside the layers: it provisions servers as their root user and
# waits for them to serve, so it talks to both drivers directly (an allowed
# exception in tests/unit/test_import_rules.py).
import pymysql
from kazoo.client import KazooClient

from taskman.errors import TaskmanError

__all__ = [
    "LabError",
    "MariaDBServer",
    "ZooKeeperEnsemble",
    "free_port",
]

INSTALL_HINT = "run scripts/install-deps --servers"

# /usr/sbin is often not on a non-root PATH, but that is where Debian puts mariadbd.
_EXTRA_BIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")

ZOOKEEPER_JARS: tuple[Path, ...] = (
    Path("/usr/share/java/zookeeper.jar"),
    Path("/usr/share/java/slf4j-simple.jar"),
)

# Measured on the target machine: small heap, serial GC and C1 only start fastest;
# the fastleader/cnxTimeout settings make re-elections after a kill take ~1 s.
_ZK_JVM_ARGS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx128m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xss512k",
    "-Dzookeeper.fastleader.maxNotificationInterval=2000",
    "-Dzookeeper.cnxTimeout=1000",
    # Timestamps in the servers' logs, to line their elections up with the nodes' logs.
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
)
_ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

_DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes; keep a margin
_POLL = 0.05
_KILL_WAIT = 10.0  # after SIGKILL a process may still be in an uninterruptible wait


class LabError(TaskmanError):
    """A lab server could not be set up, started or reached."""


# ---------------------------------------------------------------------------
# helpers


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now.

    Ports are drawn below the kernel's ephemeral range: a server that is killed and
    restarted must get its port back, and a port in the ephemeral range may meanwhile
    have become the local end of some client's outgoing connection.
    """
    low, _ = _ephemeral_range()
    top = min(low, 65536) - 1
    if top > 20000:
        for _ in range(200):
            port = random.randint(15000, top)
            if _port_is_free(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        assert isinstance(port, int)
        return port


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_ports(count: int, host: str) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _require_binary(name: str) -> str:
    path = _find_binary(name)
    if path is None:
        raise LabError(
            f"{name} not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}: {INSTALL_HINT}"
        )
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _spawn(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the log fd; closing ours avoids leaking it.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            # Own session: a Ctrl-C in the test terminal must not reach the servers
            # before our own cleanup does.
            start_new_session=True,
        )


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    # Popen.send_signal refuses once the child was reaped, so a recycled PID is safe.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    _signal(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(_KILL_WAIT)


def _terminate_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process, then SIGKILL whatever is still alive at the deadline."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        _signal(proc, signal.SIGCONT)  # a SIGSTOPped process would never act on SIGTERM
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in live:
        _kill(proc)


def _traversable_by(path: Path, user: pwd.struct_passwd) -> bool:
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


# Servers still running at interpreter exit are stopped, so an aborted test run does
# not leave orphans holding ports and disk.
_LIVE: set[MariaDBServer | ZooKeeperEnsemble] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)


# ---------------------------------------------------------------------------
# MariaDB


class MariaDBServer:
    """One mariadbd on loopback with its own datadir under ``base_dir``.

    ``start()`` also creates the application user ``taskman``/``taskman`` with all
    privileges; ``dsn()`` and ``create_database()`` hand out URLs for that user.
    """

    APP_USER = "taskman"
    APP_PASSWORD = "lab-pw-5e1f"  # noqa: S105 - a throwaway loopback test server

    def __init__(
        self,
        base_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        """``extra_config``: more ``[mysqld]`` lines, e.g. TLS (``ssl_cert=...``)."""
        self._base_dir = Path(base_dir).resolve()
        self._host = host
        self._extra_config = extra_config
        self._port = port if port is not None else free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._short_socket_dir: Path | None = None

    # -- paths ---------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def datadir(self) -> Path:
        return self._base_dir / "data"

    @property
    def config_file(self) -> Path:
        return self._base_dir / "my.cnf"

    @property
    def error_log(self) -> Path:
        return self._base_dir / "error.log"

    @property
    def stdout_log(self) -> Path:
        return self._base_dir / "mariadbd.out"

    @property
    def install_log(self) -> Path:
        return self._base_dir / "install.log"

    @property
    def socket_path(self) -> Path:
        path = self._base_dir / "mysqld.sock"
        if len(str(path)) <= _UNIX_SOCKET_MAX:
            return path
        # A deep base_dir would overflow sun_path; use a short private dir instead.
        if self._short_socket_dir is None:
            self._short_socket_dir = Path(tempfile.mkdtemp(prefix="taskman-mariadb-"))
        return self._short_socket_dir / "mysqld.sock"

    # -- public state --------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def dsn(self, database: str) -> str:
        _check_db_name(database)
        return f"mysql://{self.APP_USER}:{self.APP_PASSWORD}@{self._host}:{self._port}/{database}"

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Install the datadir if empty, start mariadbd and wait until it serves."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        mariadbd = _require_binary("mariadbd")
        install_db = _require_binary("mariadb-install-db")
        run_as = self._run_as()
        self._base_dir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(exist_ok=True)
        (self._base_dir / "tmp").mkdir(exist_ok=True)
        self._write_config(run_as)
        if run_as == "mysql":
            self._chown_to_mysql()
        if not any(self.datadir.iterdir()):
            self._install(install_db, run_as, deadline)
        self.socket_path.unlink(missing_ok=True)  # a stale socket from a kill
        self._proc = _spawn(
            [mariadbd, f"--defaults-file={self.config_file}"], self.stdout_log, self._base_dir
        )
        _LIVE.add(self)
        try:
            self._wait_ready(deadline, timeout)
            self._create_app_user()
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down cleanly (SIGTERM), SIGKILL at the deadline. Safe to repeat."""
        if self._proc is not None:
            _terminate_all([self._proc], timeout)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for chaos tests)."""
        _kill(self._proc)
        self._forget()

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- SQL helpers ---------------------------------------------------------

    def root_connection(self, connect_timeout: float = 10.0) -> pymysql.connections.Connection:
        """A root connection over the unix socket (autocommit on); the caller closes it."""
        conn = pymysql.connect(
            unix_socket=str(self.socket_path),
            user="root",
            password="",
            autocommit=True,
            connect_timeout=connect_timeout,
            ssl_disabled=True,  # measured: TLS negotiation costs ~18 ms per connect
            defer_connect=True,
        )
        # pymysql leaks its unix socket when connect() to the path fails (seen while
        # polling a starting server), so the socket is opened and closed here.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise pymysql.err.OperationalError(
                2002, f"Can't connect to MariaDB via socket {self.socket_path} ({exc})"
            ) from exc
        conn.host_info = "Localhost via UNIX socket"
        conn.connect(sock)  # closes sock itself if the handshake fails
        return conn

    def create_database(self, name: str) -> str:
        """CREATE DATABASE IF NOT EXISTS ``name``; return its dsn."""
        _check_db_name(name)
        self._execute(
            f"CREATE DATABASE IF NOT EXISTS `{name}` "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        _check_db_name(name)
        self._execute(f"DROP DATABASE IF EXISTS `{name}`")

    # -- internals -----------------------------------------------------------

    def _forget(self) -> None:
        self._proc = None
        _LIVE.discard(self)
        if self._short_socket_dir is not None:
            shutil.rmtree(self._short_socket_dir, ignore_errors=True)
            self._short_socket_dir = None  # the next start() makes and configures a new one

    def _run_as(self) -> str | None:
        """The OS user for mariadbd: none when not root, else mysql if it can reach base_dir.

        mariadbd refuses to run as root unless told to. pytest's tmp dirs are 0700 and
        unreachable for mysql, so there root is named explicitly instead.
        """
        if os.geteuid() != 0:
            return None
        try:
            mysql = pwd.getpwnam("mysql")
        except KeyError:
            return "root"
        anchor = self._base_dir
        while not anchor.exists():
            anchor = anchor.parent
        return "mysql" if _traversable_by(anchor, mysql) else "root"

    def _write_config(self, run_as: str | None) -> None:
        lines = [
            "[mysqld]",
            f"datadir={self.datadir}",
            f"socket={self.socket_path}",
            f"pid-file={self._base_dir / 'mysqld.pid'}",
            f"log-error={self.error_log}",
            # Its own tmpdir: concurrent mariadb-install-db runs sharing /tmp have been
            # seen deleting each other's temporary tables.
            f"tmpdir={self._base_dir / 'tmp'}",
            f"bind-address={self._host}",
            f"port={self._port}",
            "skip-name-resolve",
            "performance_schema=OFF",
            "innodb_buffer_pool_size=32M",
            "innodb_log_file_size=16M",
            "max_connections=200",
            "skip-log-bin",
            "character-set-server=utf8mb4",
            "collation-server=utf8mb4_unicode_ci",
            *self._extra_config,
        ]
        if run_as is not None:
            lines.insert(1, f"user={run_as}")
        self.config_file.write_text("\n".join(lines) + "\n")

    def _chown_to_mysql(self) -> None:
        mysql = pwd.getpwnam("mysql")
        dirs = [self._base_dir]
        if self._short_socket_dir is not None:
            dirs.append(self._short_socket_dir)
        for top in dirs:
            os.chown(top, mysql.pw_uid, mysql.pw_gid)
            for root, dirnames, filenames in os.walk(top):
                for name in (*dirnames, *filenames):
                    os.chown(Path(root) / name, mysql.pw_uid, mysql.pw_gid, follow_symlinks=False)

    def _install(self, install_db: str, run_as: str | None, deadline: float) -> None:
        argv = [
            install_db,
            f"--defaults-file={self.config_file}",  # must come first
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if run_as is not None:
            argv.append(f"--user={run_as}")
        with self.install_log.open("ab") as log:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._base_dir,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
                failure = None if result.returncode == 0 else f"exit code {result.returncode}"
            except subprocess.TimeoutExpired:
                failure = "timed out"
        if failure is not None:
            # A half-written datadir would be taken as installed by the next start.
            for entry in self.datadir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            raise LabError(
                f"mariadb-install-db failed ({failure}); tail of {self.install_log}:\n"
                f"{_tail(self.install_log)}"
            )

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise LabError(
                    f"mariadbd exited with code {code} while starting; "
                    f"tail of {self.error_log}:\n{_tail(self.error_log)}\n"
                    f"tail of {self.stdout_log}:\n{_tail(self.stdout_log, 10)}"
                )
            try:
                self.root_connection(connect_timeout=2.0).close()
            except (pymysql.MySQLError, OSError) as exc:
                last_error = exc
            else:
                return
            if time.monotonic() >= deadline:
                raise LabError(
                    f"mariadbd on port {self._port} not ready after {timeout:.0f}s "
                    f"(last error: {last_error}); tail of {self.error_log}:\n"
                    f"{_tail(self.error_log)}"
                )
            time.sleep(_POLL)

    def _create_app_user(self) -> None:
        user, password = self.APP_USER, self.APP_PASSWORD
        # '%' serves TCP clients; 'localhost' serves the unix socket.
        for host in ("%", "localhost"):
            self._execute(f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{password}'")
            self._execute(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}'")

    def _execute(self, sql: str) -> None:
        if not self.running:
            raise LabError(f"MariaDB under {self._base_dir} is not running; call start() first")
        conn = self.root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()


def _check_db_name(name: str) -> None:
    if not _DB_NAME_RE.match(name):
        raise LabError(f"invalid database name {name!r}: use 1-64 of [A-Za-z0-9_$]")


# ---------------------------------------------------------------------------
# ZooKeeper


class _ZkServer:
    def __init__(self, index: int, base_dir: Path, ports: list[int]) -> None:
        self.index = index
        self.myid = index + 1
        self.dir = base_dir / f"zk{self.myid}"
        self.client_port, self.peer_port, self.election_port = ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.dir / "zoo.cfg"

    @property
    def log_file(self) -> Path:
        return self.dir / "zookeeper.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ZooKeeperEnsemble:
    """``size`` ZooKeeper servers on loopback; size 1 runs standalone.

    Servers are addressed by 0-based index ``i`` (their ZooKeeper myid is ``i + 1``).
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 1,
        host: str = "127.0.0.1",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``tls``: (a PEM with the server's key and certificate, the CA's PEM) to open a
        secure client port beside the plain one (``secure_hosts``)."""
        if size < 1:
            raise LabError(f"ensemble size must be >= 1, got {size}")
        self._base_dir = Path(base_dir).resolve()
        self._host = host
        self._tls = tls
        self._secure_ports = _free_ports(size, host) if tls else []
        ports = _free_ports(3 * size, host)
        self._servers = [
            _ZkServer(i, self._base_dir, ports[3 * i : 3 * i + 3]) for i in range(size)
        ]

    # -- public state --------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def size(self) -> int:
        return len(self._servers)

    @property
    def host(self) -> str:
        return self._host

    @property
    def hosts(self) -> str:
        """Connection string for all servers: ``"127.0.0.1:p1,127.0.0.1:p2,..."``."""
        return ",".join(self.server_hosts(i) for i in range(self.size))

    @property
    def secure_hosts(self) -> str:
        """Connection string for the TLS client ports (only with ``tls``)."""
        if not self._tls:
            raise LabError("this ensemble was started without tls")
        return ",".join(f"{self._host}:{port}" for port in self._secure_ports)

    def server_hosts(self, i: int) -> str:
        """Connection string for server ``i`` alone."""
        return f"{self._host}:{self._server(i).client_port}"

    @property
    def client_ports(self) -> list[int]:
        return [s.client_port for s in self._servers]

    @property
    def pids(self) -> list[int | None]:
        """PID per server; None where the server is not running."""
        return [s.proc.pid if s.proc is not None and s.alive else None for s in self._servers]

    def log_file(self, i: int) -> Path:
        return self._server(i).log_file

    def server_mode(self, i: int, timeout: float = 1.0) -> str | None:
        """'leader', 'follower' or 'standalone' when server ``i`` serves clients, else None."""
        server = self._server(i)
        if not server.alive:
            return None
        try:
            reply = _four_letter_word(self._host, server.client_port, "srvr", timeout)
        except OSError:
            return None  # down, paused or still starting
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None  # "This ZooKeeper instance is not currently serving requests"

    def leader(self) -> int | None:
        """Index of the current leader (or the standalone server), if any."""
        for i in range(self.size):
            if self.server_mode(i) in ("leader", "standalone"):
                return i
        return None

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every server not running; wait until all serve and a write succeeds."""
        deadline = time.monotonic() + timeout
        java = self._check_installed()
        for server in self._servers:
            if not server.alive:
                self._launch(java, server)
        try:
            for server in self._servers:
                self._wait_serving(server, deadline, timeout)
            self._wait_writable(deadline, timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def stop(self, timeout: float = 20.0) -> None:
        """Stop all servers (SIGTERM, SIGKILL at the deadline). Safe to repeat."""
        _terminate_all([s.proc for s in self._servers if s.proc is not None], timeout)
        for server in self._servers:
            server.proc = None
        _LIVE.discard(self)

    def kill_server(self, i: int) -> None:
        """SIGKILL server ``i``, as a crash would."""
        server = self._server(i)
        _kill(server.proc)
        server.proc = None

    def start_server(self, i: int, timeout: float = 60.0) -> None:
        """(Re)start server ``i`` and wait until it serves clients again."""
        server = self._server(i)
        deadline = time.monotonic() + timeout
        if not server.alive:
            self._launch(self._check_installed(), server)
        self._wait_serving(server, deadline, timeout)

    def pause_server(self, i: int) -> None:
        """SIGSTOP server ``i``: it keeps its sockets but stops answering."""
        server = self._server(i)
        if server.proc is not None and server.alive:
            _signal(server.proc, signal.SIGSTOP)

    def resume_server(self, i: int) -> None:
        """SIGCONT server ``i`` after pause_server. Does not wait: a follower paused past
        syncLimit may answer briefly from its stale view before it notices the leader
        dropped it and rejoins, so callers should wait for data, not for a mode."""
        server = self._server(i)
        if server.proc is not None and server.alive:
            _signal(server.proc, signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------

    def _server(self, i: int) -> _ZkServer:
        if not 0 <= i < len(self._servers):
            raise LabError(f"no ZooKeeper server {i}: indexes are 0..{len(self._servers) - 1}")
        return self._servers[i]

    @staticmethod
    def _check_installed() -> str:
        java = _require_binary("java")
        missing = [str(jar) for jar in ZOOKEEPER_JARS if not jar.is_file()]
        if missing:
            raise LabError(f"ZooKeeper jars missing: {', '.join(missing)}: {INSTALL_HINT}")
        return java

    def _write_config(self, server: _ZkServer) -> None:
        data_dir = server.dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "tickTime=500",
            "initLimit=10",
            # A follower gives its leader up after syncLimit x tickTime (1 s): the
            # shorter, the sooner the majority elects when the leader's datacenter
            # is cut off (docs/architecture.md, "Surviving the loss of the ZooKeeper leader").
            "syncLimit=2",
            "minSessionTimeout=1000",
            "maxSessionTimeout=30000",
            f"dataDir={data_dir}",
            f"clientPort={server.client_port}",
            f"clientPortAddress={self._host}",
            "admin.enableServer=false",
            # wchc/wchs: fault tests count a session's watches to prove none leak.
            "4lw.commands.whitelist=srvr,stat,ruok,mntr,conf,cons,wchc,wchs",
        ]
        if self._tls:
            keystore, truststore = self._tls
            lines += [
                f"secureClientPort={self._secure_ports[server.index]}",
                f"secureClientPortAddress={self._host}",
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
                f"ssl.keyStore.location={keystore}",
                "ssl.keyStore.type=PEM",
                f"ssl.trustStore.location={truststore}",
                "ssl.trustStore.type=PEM",
                "ssl.clientAuth=none",
            ]
        if self.size > 1:
            (data_dir / "myid").write_text(f"{server.myid}\n")
            lines += [
                f"server.{s.myid}={self._host}:{s.peer_port}:{s.election_port}"
                for s in self._servers
            ]
        server.config_file.write_text("\n".join(lines) + "\n")

    def _launch(self, java: str, server: _ZkServer) -> None:
        self._write_config(server)
        # Debian's zookeeper.jar manifest misses netty-codec, which TLS needs.
        extra = [j for j in (Path("/usr/share/java/netty-codec.jar"),) if j.is_file()]
        classpath = ":".join(str(jar) for jar in (*ZOOKEEPER_JARS, *extra))
        argv = [java, *_ZK_JVM_ARGS, "-cp", classpath, _ZK_MAIN, str(server.config_file)]
        server.proc = _spawn(argv, server.log_file, server.dir)
        _LIVE.add(self)

    def _wait_serving(self, server: _ZkServer, deadline: float, timeout: float) -> None:
        while True:
            if server.proc is None or server.proc.poll() is not None:
                code = None if server.proc is None else server.proc.returncode
                raise LabError(
                    f"ZooKeeper server {server.index} exited (code {code}) while starting; "
                    f"tail of {server.log_file}:\n{_tail(server.log_file)}"
                )
            if self.server_mode(server.index) is not None:
                return
            if time.monotonic() >= deadline:
                raise LabError(
                    f"ZooKeeper server {server.index} (client port {server.client_port}) "
                    f"not serving after {timeout:.0f}s; tail of {server.log_file}:\n"
                    f"{_tail(server.log_file)}"
                )
            time.sleep(_POLL)

    def _wait_writable(self, deadline: float, timeout: float) -> None:
        last_error: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(
                    f"ZooKeeper at {self.hosts} accepted no write within {timeout:.0f}s "
                    f"(last error: {last_error}); logs under {self._base_dir}"
                )
            try:
                _probe_write(self.hosts, min(remaining, 10.0))
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last_error = exc
                time.sleep(_POLL)
            else:
                return


def _four_letter_word(host: str, port: int, word: str, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        chunks: list[bytes] = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _probe_write(hosts: str, timeout: float) -> None:
    """Create and delete an ephemeral znode; every call is bounded by ``timeout``."""
    client = KazooClient(hosts=hosts, timeout=max(timeout, 2.0))
    try:
        client.start(timeout=timeout)
        path = client.create_async("/taskman-lab-probe-", b"", ephemeral=True, sequence=True).get(
            timeout=timeout
        )
        client.delete_async(path).get(timeout=timeout)
    finally:
        with contextlib.suppress(Exception):
            client.stop()
        client.close()
