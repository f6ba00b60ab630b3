"""The lab's processes by name: start, find (by PID, verified), signal and stop them.

Every process is started by PID and recorded in ``<base_dir>/state.json``, so
commands run from another shell can kill, pause or partition what an earlier ``up``
started. Before signalling a recorded PID the lab checks that its command line names
the lab's directory: a PID the kernel has since reused for something else is never
touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pymysql

from taskman.lab.multidc.topology import (
    APP_PASSWORD,
    APP_USER,
    DATABASE,
    MYSQL_PORT,
    TOPOLOGIES,
    ZK_CLIENT_PORT,
    DatacenterSpec,
    LabState,
    ProcessRecord,
    Role,
)
from taskman.lab.netns import LabNetwork
from taskman.lab.servers.process import LabError, _tail


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _unix_connect(path: Path, timeout: float = 2.0) -> pymysql.connections.Connection:
    # The socket is opened here: pymysql leaks it when connect() to a path fails.
    conn = pymysql.connect(
        unix_socket=str(path),
        user="root",
        password="",
        autocommit=True,
        connect_timeout=timeout,
        read_timeout=timeout,
        ssl_disabled=True,
        defer_connect=True,
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise pymysql.err.OperationalError(2002, f"{path}: {exc}") from exc
    conn.host_info = "Localhost via UNIX socket"
    conn.connect(sock)
    return conn


class LabBase:
    """State, addresses and process handling that every part of the lab builds on."""

    def __init__(self, base_dir: Path, state: LabState) -> None:
        self.base_dir = base_dir
        self.state = state
        self.specs = TOPOLOGIES[state.topology]
        self.datacenters = tuple(s.name for s in self.specs)
        self.net = LabNetwork(state.lab_id, state.subnet, self.datacenters)
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self.up_seconds = 0.0

    def save(self) -> None:
        data = asdict(self.state)
        tmp = self.base_dir / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.base_dir / "state.json")

    # -- addresses -----------------------------------------------------------

    def spec(self, dc: str) -> DatacenterSpec:
        for spec in self.specs:
            if spec.name == dc:
                return spec
        raise LabError(f"no datacenter {dc!r}: {', '.join(self.datacenters)}")

    @property
    def galera_dcs(self) -> list[str]:
        return [s.name for s in self.specs if s.database == "galera"]

    @property
    def zookeeper_hosts(self) -> str:
        return ",".join(f"{self.net.ip(dc)}:{ZK_CLIENT_PORT}" for dc in self.datacenters)

    def dsn(self, dc: str) -> str:
        return f"mysql://{APP_USER}:{APP_PASSWORD}@{self.net.ip(dc)}:{MYSQL_PORT}/{DATABASE}"

    def node_ids(self, dc: str | None = None) -> list[str]:
        return [
            f"{s.name}-node{k + 1}"
            for s in self.specs
            if dc in (None, s.name)
            for k in range(s.nodes)
        ]

    def node_dc(self, node_id: str) -> str:
        return node_id.rsplit("-node", 1)[0]

    def dc_dir(self, dc: str) -> Path:
        return self.base_dir / dc

    def socket_path(self, dc: str) -> Path:
        return self.dc_dir(dc) / "galera" / "mysqld.sock"

    def node_log(self, node_id: str) -> Path:
        return self.dc_dir(self.node_dc(node_id)) / "nodes" / f"{node_id}.log"

    # -- process handling ----------------------------------------------------

    def _spawn(self, name: str, dc: str, role: Role, argv: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*self.net.exec_prefix(dc), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                env=env,
                start_new_session=True,  # a Ctrl-C in the driver's terminal must not reach it
            )
        self._popen[name] = proc
        self.state.processes[name] = ProcessRecord(name, dc, role, proc.pid)
        self.save()

    def pid(self, name: str) -> int | None:
        """The live PID of ``name``, or None; verified to be one of this lab's processes."""
        record = self.state.processes.get(name)
        if record is None or not record.pid:
            return None
        proc = self._popen.get(name)
        if proc is not None:
            # Our own child: poll() is exact (a /proc cmdline read was seen to fail
            # transiently while mariadbd ran an SST).
            return record.pid if proc.poll() is None else None
        if not _pid_alive(record.pid) or str(self.base_dir) not in _cmdline(record.pid):
            return None
        return record.pid

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def signal(self, name: str, sig: int) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return True

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and wait until it is gone."""
        self.signal(name, signal.SIGKILL)
        self._wait_gone([name], 10.0)

    def _wait_gone(self, names: list[str], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        left = names
        while left and time.monotonic() < deadline:
            left = [n for n in left if self.alive(n)]
            if left:
                time.sleep(0.05)
        return left

    def _stop(self, names: list[str], timeout: float = 15.0) -> None:
        for name in names:
            self.signal(name, signal.SIGCONT)  # a paused process would never act on SIGTERM
            self.signal(name, signal.SIGTERM)
        for name in self._wait_gone(names, timeout):
            self.signal(name, signal.SIGKILL)
        self._wait_gone(names, 10.0)

    def processes(self, dc: str | None = None, role: Role | None = None) -> list[str]:
        return [
            name
            for name, rec in self.state.processes.items()
            if dc in (None, rec.dc) and role in (None, rec.role)
        ]

    # -- helpers -------------------------------------------------------------

    def _until(
        self,
        predicate: Any,
        deadline: float,
        what: str,
        *,
        log: Path | None = None,
        proc: str | None = None,
    ) -> None:
        while not predicate():
            if proc is not None and proc in self.state.processes and not self.alive(proc):
                tail = f"; tail of {log}:\n{_tail(log)}" if log else ""
                raise LabError(f"{proc} exited while waiting for {what}{tail}")
            if time.monotonic() > deadline:
                tail = f"; tail of {log}:\n{_tail(log)}" if log else ""
                raise LabError(f"timed out waiting for {what} (lab {self.base_dir}){tail}")
            time.sleep(0.1)
