"""A RabbitMQ node of the bench's own on loopback: the broker of the Celery figures.

Started like the lab's MariaDB and ZooKeeper (taskman.lab.servers): a child process
on free loopback ports, its data, logs and configuration under the run's directory,
stopped by its PID. It has its own node name, its own epmd (a child too, on its own
port) and its own Erlang cookie, so a system RabbitMQ (5672, epmd on 4369) is neither
used nor disturbed. Debian's package: ``scripts/install-deps --bench``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from taskman.lab.servers.process import (
    _LIVE,
    LabError,
    _spawn,
    _tail,
    _terminate_all,
    free_ports,
)

# Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user through su, which
# drops the environment this module configures the node with; the script it runs does not.
SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
INSTALL_HINT = "run scripts/install-deps --bench (Debian's rabbitmq-server)"
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def unavailable() -> str | None:
    """Why this machine cannot start a RabbitMQ node, or None."""
    if not SERVER_SCRIPT.is_file():
        return f"{SERVER_SCRIPT} not found: {INSTALL_HINT}"
    if shutil.which("epmd") is None:
        return f"epmd (Erlang) not on PATH: {INSTALL_HINT}"
    return None


class RabbitMQServer:
    """One RabbitMQ node (beam.smp) and its epmd, both children of this process."""

    def __init__(self, base_dir: Path, host: str = "127.0.0.1") -> None:
        self._base_dir = Path(base_dir).resolve()
        self._host = host
        self.amqp_port, self.dist_port, self.epmd_port = free_ports(3, host)
        self.node_name = f"taskman-bench-{uuid.uuid4().hex[:8]}@localhost"
        self._epmd: subprocess.Popen[bytes] | None = None
        self._node: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The AMQP URL (the default guest user, which RabbitMQ admits from loopback only)."""
        return f"amqp://guest:guest@{self._host}:{self.amqp_port}//"

    @property
    def pid(self) -> int | None:
        if self._node is None or self._node.poll() is not None:
            return None
        return self._node.pid

    @property
    def log(self) -> Path:
        return self._base_dir / "rabbitmq.out"

    def start(self, timeout: float = 90.0) -> None:
        """Start epmd and the node; return once the node answers an AMQP handshake."""
        reason = unavailable()
        if reason is not None:
            raise LabError(reason)
        self._base_dir.mkdir(parents=True, exist_ok=True)
        env = self._environment()
        epmd = shutil.which("epmd") or "epmd"
        # Not -daemon: a foreground epmd stays our child, so it is stopped by its PID.
        self._epmd = _spawn(
            [epmd, "-port", str(self.epmd_port), "-address", self._host],
            self._base_dir / "epmd.out",
            self._base_dir,
        )
        _LIVE.add(self)
        try:
            self._wait_epmd(time.monotonic() + 10)
            # RABBITMQ_ALLOW_INPUT makes the script exec the VM, so the child's PID is the
            # node's (not a shell's); -noinput keeps the Erlang shell off all the same.
            with self.log.open("ab") as log:  # the child keeps its own copy of the fd
                self._node = subprocess.Popen(
                    [str(SERVER_SCRIPT), "-noinput"],
                    env=env,
                    cwd=self._base_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C reaches it through our cleanup only
                )
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop(timeout=10)
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the node (a clean shutdown), then its epmd; SIGKILL at the deadline."""
        for proc in (self._node, self._epmd):
            if proc is not None:
                _terminate_all([proc], timeout)
        self._node = self._epmd = None
        _LIVE.discard(self)

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

    def _environment(self) -> dict[str, str]:
        base = self._base_dir
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self._host}:{self.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        (base / "enabled_plugins").write_text("[].\n")  # no management listener
        (base / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq's
        return {
            **os.environ,
            "HOME": str(base),  # the node's Erlang cookie lands here
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_ALLOW_INPUT": "true",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _wait_epmd(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self._epmd is not None and self._epmd.poll() is not None:
                raise LabError(f"epmd exited: {_tail(self._base_dir / 'epmd.out')}")
            with contextlib.suppress(OSError):
                socket.create_connection((self._host, self.epmd_port), timeout=1).close()
                return
            time.sleep(0.05)
        raise LabError(f"epmd not listening on {self._host}:{self.epmd_port}")

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self._node is not None and self._node.poll() is not None:
                raise LabError(f"rabbitmq-server exited: {_tail(self.log)}")
            if self._answers_amqp():
                return
            time.sleep(0.2)
        raise LabError(f"RabbitMQ not ready on {self._host}:{self.amqp_port}: {_tail(self.log)}")

    def _answers_amqp(self) -> bool:
        """A protocol header gets a method frame (Connection.Start) back: the broker serves."""
        try:
            with socket.create_connection((self._host, self.amqp_port), timeout=2) as sock:
                sock.sendall(_AMQP_HEADER)
                return sock.recv(1) == b"\x01"
        except OSError:
            return False


@contextlib.contextmanager
def rabbitmq(base_dir: Path) -> Iterator[RabbitMQServer]:
    """A started node under ``base_dir``, stopped on leaving (also on SIGTERM's unwinding)."""
    server = RabbitMQServer(base_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
