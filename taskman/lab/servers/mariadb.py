"""One MariaDB server (mariadbd) on loopback, for tests, benchmarks and a dev cluster.

Nothing here talks to a system-wide server (a MariaDB on 3306 may exist: it is never used).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pymysql

from taskman.lab.servers.process import (
    _LIVE,
    _POLL,
    LabError,
    _kill,
    _require_binary,
    _spawn,
    _tail,
    _terminate_all,
    free_port,
)

_DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes; keep a margin


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
