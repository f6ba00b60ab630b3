"""A ZooKeeper ensemble (or one standalone server) on loopback, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from kazoo.client import KazooClient

from taskman.lab.servers.process import (
    _LIVE,
    _POLL,
    INSTALL_HINT,
    LabError,
    _free_ports,
    _kill,
    _require_binary,
    _signal,
    _spawn,
    _tail,
    _terminate_all,
    _wait_stopped,
)

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
            _wait_stopped(server.proc.pid)

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
