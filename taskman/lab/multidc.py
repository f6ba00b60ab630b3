"""A multi-datacenter lab on one machine: ZooKeeper, Galera and taskman nodes per datacenter.

Each datacenter is a network namespace (see ``taskman.lab.netns``) that runs one
ZooKeeper server of a 3-server ensemble, one MariaDB Galera node (or, at an
arbitrator site, ``garbd`` only) and one or more ``taskman node`` processes whose
config points at their own datacenter's Galera node and at the whole ensemble.
The test driver (root namespace) reaches every server over the bridge.

Every process is started by PID and recorded in ``<base_dir>/state.json``, so
``taskman lab multi-dc`` commands run from another shell can kill, pause or
partition what an earlier ``up`` started. Before signalling a recorded PID the
lab checks that its command line names the lab's directory: a PID the kernel
has since reused for something else is never touched.

Facts this follows (lab.md): mysqld must run as ``mysql`` (rsync SST as root
fails), so the lab lives under ``/var/tmp/taskman-lab-<id>`` with mode 0755;
ZooKeeper runs with ``maxNotificationInterval=2000`` so a healed peer rejoins in
seconds; Galera's ``evs.suspect_timeout`` is 3 s.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# Root sessions on the lab's Galera nodes (users, grants, cluster status): the lab
# may use the driver directly (an allowed exception in tests/unit/test_import_rules.py).
import pymysql

from taskman.lab.netns import LabNetwork, require_netns, used_subnets
from taskman.lab.nodes import write_config
from taskman.lab.servers import (
    _ZK_JVM_ARGS,
    _ZK_MAIN,
    ZOOKEEPER_JARS,
    LabError,
    _four_letter_word,
    _probe_write,
    _require_binary,
    _tail,
)

__all__ = ["TOPOLOGIES", "DatacenterSpec", "MultiDCLab"]

ZK_CLIENT_PORT = 2181
ZK_PEER_PORT = 2888
ZK_ELECTION_PORT = 3888
MYSQL_PORT = 3306
GALERA_PORT = 4567
APP_USER = "taskman"
APP_PASSWORD = "taskman"  # noqa: S105 - throwaway lab servers on a private bridge
DATABASE = "taskman"
ZK_AUTH = "taskman:lab-zk-secret"  # digest identity of the lab's nodes
GALERA_GROUP = "taskman_lab"
# Not a temporary file: a world-traversable parent the mysql user can reach (lab.md).
BASE_PARENT = Path("/var/tmp")  # noqa: S108
DEFAULT_DIR = BASE_PARENT / "taskman-lab-multi-dc"

# Galera failure detection as measured in lab.md: a dead or cut peer is evicted
# ~3.6-4.4 s after the fault; a minority goes non-Primary and refuses statements.
EVS_OPTIONS = (
    "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;"
    "evs.install_timeout=PT4S;evs.keepalive_period=PT0.5S;pc.wait_prim_timeout=PT10S"
)
GALERA_PROVIDER_OPTIONS = "gcache.size=32M;" + EVS_OPTIONS  # garbd has no gcache

# The shipped default session (6 s): the lab proves what users run. Cutting off the
# ZooKeeper leader's datacenter leaves the majority silent for ~2-2.5 s; with 4 s a
# loaded machine pushed that past the runners' 0.75 x session and re-ran their work.
# The other timeouts are short to keep the chaos suite quick.
FAST_NODE: dict[str, Any] = {
    "session_timeout": 6.0,
    "heartbeat_interval": 0.5,
    "poll_interval": 0.2,
    "heartbeat_timeout": 6.0,
    "kill_grace": 2.0,
    "slots": 4,
}

Role = Literal["zk", "galera", "garbd", "node"]


@dataclass(frozen=True)
class DatacenterSpec:
    name: str
    database: Literal["galera", "garbd"] = "galera"
    nodes: int = 1


TOPOLOGIES: dict[str, tuple[DatacenterSpec, ...]] = {
    # The recommended deployment: three full datacenters.
    "3dc": (DatacenterSpec("dc1"), DatacenterSpec("dc2"), DatacenterSpec("dc3")),
    # Two datacenters plus a small third site: one ZooKeeper server and garbd, no data.
    "2dc-arbitrator": (
        DatacenterSpec("dc1"),
        DatacenterSpec("dc2"),
        DatacenterSpec("arb", database="garbd", nodes=0),
    ),
}


@dataclass
class ProcessRecord:
    name: str
    dc: str
    role: Role
    pid: int = 0


@dataclass
class LabState:
    lab_id: str
    topology: str
    subnet: int
    node_options: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)


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


_LIVE: set[MultiDCLab] = set()


@atexit.register
def _stop_leftovers() -> None:
    for lab in list(_LIVE):
        with contextlib.suppress(Exception):
            lab.down()


class MultiDCLab:
    """The lab. ``MultiDCLab.create(...).up()`` starts it; ``MultiDCLab.load(dir)`` reattaches."""

    def __init__(self, base_dir: Path, state: LabState) -> None:
        self.base_dir = base_dir
        self.state = state
        self.specs = TOPOLOGIES[state.topology]
        self.datacenters = tuple(s.name for s in self.specs)
        self.net = LabNetwork(state.lab_id, state.subnet, self.datacenters)
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self.up_seconds = 0.0

    # -- construction ----------------------------------------------------------

    @classmethod
    def create(
        cls,
        topology: str = "3dc",
        *,
        base_dir: Path | None = None,
        node_options: dict[str, Any] | None = None,
    ) -> MultiDCLab:
        if topology not in TOPOLOGIES:
            raise LabError(f"unknown topology {topology!r}: one of {', '.join(TOPOLOGIES)}")
        require_netns()
        lab_id = secrets.token_hex(3)
        base = base_dir or BASE_PARENT / f"taskman-lab-{lab_id}"
        free = sorted(set(range(1, 250)) - used_subnets())
        if not free:
            raise LabError("no free 10.77.x.0/24 subnet for the lab bridge")
        options = {**FAST_NODE, **(node_options or {})}
        state = LabState(lab_id, topology, free[0], options)
        return cls(base.resolve(), state)

    @classmethod
    def load(cls, base_dir: Path) -> MultiDCLab:
        path = base_dir / "state.json"
        try:
            raw = json.loads(path.read_text())
        except OSError as exc:
            raise LabError(f"no lab state at {path}: is the lab up? ({exc})") from exc
        procs = {k: ProcessRecord(**v) for k, v in raw.pop("processes").items()}
        return cls(base_dir.resolve(), LabState(**raw, processes=procs))

    def save(self) -> None:
        data = asdict(self.state)
        tmp = self.base_dir / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.base_dir / "state.json")

    # -- addresses ---------------------------------------------------------------

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

    # -- process handling --------------------------------------------------------

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

    # -- ZooKeeper ---------------------------------------------------------------

    def _zk_dir(self, dc: str) -> Path:
        return self.dc_dir(dc) / "zk"

    def _write_zk_config(self, dc: str) -> Path:
        data = self._zk_dir(dc) / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "myid").write_text(f"{self.datacenters.index(dc) + 1}\n")
        lines = [
            "tickTime=500",
            "initLimit=10",
            # A follower gives its leader up after syncLimit x tickTime (1 s): the
            # shorter, the sooner the majority elects when the leader's datacenter
            # is cut off (docs/architecture.md, "Surviving the loss of the ZooKeeper leader").
            "syncLimit=2",
            "minSessionTimeout=1000",
            "maxSessionTimeout=30000",
            f"dataDir={data}",
            f"clientPort={ZK_CLIENT_PORT}",
            f"clientPortAddress={self.net.ip(dc)}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,stat,ruok,mntr,conf,cons",
        ] + [
            f"server.{i + 1}={self.net.ip(other)}:{ZK_PEER_PORT}:{ZK_ELECTION_PORT}"
            for i, other in enumerate(self.datacenters)
        ]
        path = self._zk_dir(dc) / "zoo.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_zookeeper(self, dc: str) -> None:
        if self.alive(f"{dc}-zk"):
            return
        java = _require_binary("java")
        config = self._write_zk_config(dc)
        classpath = ":".join(str(j) for j in ZOOKEEPER_JARS)
        argv = [java, *_ZK_JVM_ARGS, "-cp", classpath, _ZK_MAIN, str(config)]
        self._spawn(f"{dc}-zk", dc, "zk", argv, self._zk_dir(dc) / "zookeeper.log")

    def zk_mode(self, dc: str, timeout: float = 1.0) -> str | None:
        """'leader' or 'follower' when ``dc``'s server serves clients, else None."""
        if not self.alive(f"{dc}-zk"):
            return None
        try:
            reply = _four_letter_word(self.net.ip(dc), ZK_CLIENT_PORT, "srvr", timeout)
        except OSError:
            return None
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def zk_leader(self) -> str | None:
        for dc in self.datacenters:
            if self.zk_mode(dc) == "leader":
                return dc
        return None

    def wait_zookeeper(self, timeout: float = 60.0, dcs: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for dc in dcs or list(self.datacenters):
            self._until(lambda dc=dc: self.zk_mode(dc) is not None, deadline, f"ZooKeeper in {dc}")
        while True:
            try:
                _probe_write(self.zookeeper_hosts, 5.0)
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise LabError(f"ZooKeeper ensemble accepts no write: {exc}") from exc
                time.sleep(0.2)
            else:
                return

    # -- Galera --------------------------------------------------------------------

    def _galera_dir(self, dc: str) -> Path:
        return self.dc_dir(dc) / "galera"

    def _cluster_address(self) -> str:
        return "gcomm://" + ",".join(self.net.ip(dc) for dc in self.datacenters)

    def _write_galera_config(self, dc: str) -> Path:
        d = self._galera_dir(dc)
        ip = self.net.ip(dc)
        lines = [
            "[mysqld]",
            "user=mysql",
            f"datadir={d / 'data'}",
            f"socket={self.socket_path(dc)}",
            f"pid-file={d / 'mysqld.pid'}",
            f"log-error={d / 'error.log'}",
            f"tmpdir={d / 'tmp'}",
            f"bind-address={ip}",
            f"port={MYSQL_PORT}",
            "skip-name-resolve",
            "performance_schema=OFF",
            "innodb_buffer_pool_size=32M",
            "innodb_log_file_size=16M",
            "innodb_flush_log_at_trx_commit=1",
            "max_connections=200",
            "binlog_format=ROW",
            "default_storage_engine=InnoDB",
            "innodb_autoinc_lock_mode=2",
            "character-set-server=utf8mb4",
            "collation-server=utf8mb4_unicode_ci",
            "wsrep_on=ON",
            "wsrep_provider=/usr/lib/galera/libgalera_smm.so",
            f"wsrep_cluster_name={GALERA_GROUP}",
            f"wsrep_cluster_address={self._cluster_address()}",
            f"wsrep_node_address={ip}",
            f"wsrep_node_name={dc}",
            "wsrep_sst_method=rsync",
            f"wsrep_sst_receive_address={ip}:4444",
            f'wsrep_provider_options="gmcast.listen_addr=tcp://{ip}:{GALERA_PORT};'
            f'ist.recv_addr={ip}:4568;{GALERA_PROVIDER_OPTIONS}"',
        ]
        path = d / "my.cnf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _install_galera(self, dc: str) -> None:
        d = self._galera_dir(dc)
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "tmp").mkdir(exist_ok=True)
        config = self._write_galera_config(dc)
        mysql = pwd.getpwnam("mysql")
        for root, dirs, files in os.walk(d):
            for name in (".", *dirs, *files):
                os.chown(Path(root) / name, mysql.pw_uid, mysql.pw_gid, follow_symlinks=False)
        if any((d / "data").iterdir()):
            return
        log = d / "install.log"
        with log.open("ab") as out:
            result = subprocess.run(
                [
                    _require_binary("mariadb-install-db"),
                    f"--defaults-file={config}",
                    "--user=mysql",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise LabError(f"mariadb-install-db for {dc} failed; tail of {log}:\n{_tail(log)}")

    def start_galera(self, dc: str, *, bootstrap: bool = False) -> None:
        if self.alive(f"{dc}-galera"):
            return
        config = self._write_galera_config(dc)
        self.socket_path(dc).unlink(missing_ok=True)  # stale after a SIGKILL
        argv = [_require_binary("mariadbd"), f"--defaults-file={config}"]
        if bootstrap:
            argv.append("--wsrep-new-cluster")
        self._spawn(f"{dc}-galera", dc, "galera", argv, self._galera_dir(dc) / "mariadbd.out")

    def galera_status(self, dc: str) -> dict[str, str]:
        """wsrep status of ``dc``'s node over its unix socket; {} when it does not answer."""
        if not self.alive(f"{dc}-galera"):
            return {}
        try:
            conn = _unix_connect(self.socket_path(dc), timeout=1.0)
        except (pymysql.MySQLError, OSError):
            return {}
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW STATUS LIKE 'wsrep_%'")
                return {str(k): str(v) for k, v in cur.fetchall()}
        except (pymysql.MySQLError, OSError):
            return {}
        finally:
            conn.close()

    def galera_synced(self, dc: str) -> bool:
        status = self.galera_status(dc)
        return (
            status.get("wsrep_local_state_comment") == "Synced"
            and status.get("wsrep_cluster_status") == "Primary"
            and status.get("wsrep_ready") == "ON"
        )

    def wait_galera(self, dcs: list[str], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        for dc in dcs:
            self._until(
                lambda dc=dc: self.galera_synced(dc),
                deadline,
                f"Galera node {dc} to be Synced/Primary",
                log=self._galera_dir(dc) / "error.log",
                proc=f"{dc}-galera",
            )

    def start_garbd(self, dc: str) -> None:
        if self.alive(f"{dc}-garbd"):
            return
        d = self.dc_dir(dc) / "garbd"
        d.mkdir(parents=True, exist_ok=True)
        ip = self.net.ip(dc)
        peers = ",".join(f"{self.net.ip(o)}:{GALERA_PORT}" for o in self.galera_dcs)
        argv = [
            _require_binary("garbd"),
            "--address",
            f"gcomm://{peers}",
            "--group",
            GALERA_GROUP,
            "--name",
            f"{dc}-garbd",
            "--options",
            f"gmcast.listen_addr=tcp://{ip}:{GALERA_PORT};{EVS_OPTIONS}",
            "--log",
            str(d / "garbd.log"),
        ]
        self._spawn(f"{dc}-garbd", dc, "garbd", argv, d / "garbd.out")

    def galera_cluster_size(self, dc: str) -> int:
        return int(self.galera_status(dc).get("wsrep_cluster_size", "0"))

    # -- taskman nodes -------------------------------------------------------------

    def start_node(self, node_id: str, *, wait: float | None = 30.0) -> None:
        if self.alive(node_id):
            return
        from taskman.plugins import EXAMPLES_DIR

        dc = self.node_dc(node_id)
        log = self.node_log(node_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        config = write_config(
            log.parent / f"{node_id}.toml",
            {
                "node_id": node_id,
                "datacenter": dc,
                "dsn": self.dsn(dc),
                "zookeeper": self.zookeeper_hosts,
                "plugin_dirs": [str(EXAMPLES_DIR)],
                "cluster": "lab",
                # The nodes' znodes are ACL'd to this identity, as in production.
                "zookeeper_auth": ZK_AUTH,
                "log_format": "json",
                **self.state.node_options,
            },
        )
        offset = log.stat().st_size if log.exists() else 0
        argv = [sys.executable, "-m", "taskman", "node", "--config", str(config)]
        self._spawn(node_id, dc, "node", argv, log)
        if wait:
            self.wait_node_event(node_id, "node.started", timeout=wait, offset=offset)

    def node_events(self, node_id: str, offset: int = 0) -> list[dict[str, Any]]:
        log = self.node_log(node_id)
        if not log.exists():
            return []
        with log.open("rb") as fh:
            fh.seek(offset)
            lines = fh.read().splitlines()
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    events.append(value)
        return events

    def wait_node_event(
        self, node_id: str, name: str, *, timeout: float = 30.0, offset: int = 0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.node_events(node_id, offset):
                if event.get("event") == name:
                    return event
            if not self.alive(node_id):
                raise LabError(
                    f"node {node_id} exited before {name}; tail of its log:\n"
                    f"{_tail(self.node_log(node_id))}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"node {node_id}: no {name} event within {timeout} s")
            time.sleep(0.05)

    def leader_node(self) -> str | None:
        """The node holding the reaper's leadership, as recorded in the database."""
        for dc in self.galera_dcs:
            if not self.galera_synced(dc):
                continue
            try:
                conn = _unix_connect(self.socket_path(dc))
                try:
                    with conn.cursor() as cur:
                        cur.execute(f"SELECT node FROM `{DATABASE}`.leadership WHERE name='reaper'")
                        row = cur.fetchone()
                finally:
                    conn.close()
            except (pymysql.MySQLError, OSError):
                continue
            return None if row is None else str(row[0])
        return None

    # -- whole lab -----------------------------------------------------------------

    def up(self, timeout: float = 180.0) -> MultiDCLab:
        """Build the network, start every server and node, wait until all serve."""
        started = time.monotonic()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)  # mysqld (user mysql) must traverse it
        _LIVE.add(self)
        try:
            self.net.create()
            self.save()
            for dc in self.datacenters:
                self.start_zookeeper(dc)
            with concurrent.futures.ThreadPoolExecutor() as pool:
                list(pool.map(self._install_galera, self.galera_dcs))
            first, *joiners = self.galera_dcs
            self.start_galera(first, bootstrap=True)
            self.wait_galera([first], timeout)
            self._create_schema(first)
            self.wait_zookeeper(timeout)
            # One joiner at a time: two joiners racing into a fresh cluster have been seen
            # to leave one in a non-Primary view, where it exits.
            for dc in joiners:
                self.start_galera(dc)
                self.wait_galera([dc], timeout)
            for spec in self.specs:
                if spec.database == "garbd":
                    self.start_garbd(spec.name)
            self._until(
                lambda: self.galera_cluster_size(first) == len(self.datacenters),
                time.monotonic() + 30,
                "every Galera member (and garbd) in the cluster view",
            )
            for node_id in self.node_ids():
                self.start_node(node_id, wait=None)
            for node_id in self.node_ids():
                self.wait_node_event(node_id, "node.started")
        except BaseException:
            self.down()
            raise
        self.up_seconds = time.monotonic() - started
        return self

    def detach(self) -> None:
        """Leave the lab running when this process exits (``taskman lab multi-dc up``)."""
        _LIVE.discard(self)

    def _create_schema(self, dc: str) -> None:
        from taskman.store.migrations import migrate

        conn = _unix_connect(self.socket_path(dc), timeout=10.0)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'"
                )
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{APP_USER}'@'%'")
                cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        finally:
            conn.close()
        migrate(self.dsn(dc))

    def down(self, *, remove: bool = False) -> None:
        """Stop every process (nodes first), then remove namespaces and bridge. Safe to repeat."""
        order: list[Role] = ["node", "garbd", "galera", "zk"]
        for role in order:
            with contextlib.suppress(Exception):
                self._stop(self.processes(role=role), timeout=15.0)
        for name in self.processes():
            with contextlib.suppress(Exception):
                self.kill(name)
        with contextlib.suppress(Exception):
            self.net.destroy()
        _LIVE.discard(self)
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- faults ----------------------------------------------------------------------

    def kill_dc(self, dc: str) -> list[int]:
        """SIGKILL every process of ``dc`` at once, as a power cut would. Returns the PIDs."""
        pids = [pid for name in self.processes(dc) if (pid := self.pid(name)) is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_gone(self.processes(dc), 10.0)
        return pids

    def start_dc(self, dc: str, timeout: float = 120.0) -> None:
        """Start every process of ``dc`` that is not running; Galera rejoins (SST or IST)."""
        spec = self.spec(dc)
        self.start_zookeeper(dc)
        if spec.database == "galera":
            self.start_galera(dc)
        else:
            self.start_garbd(dc)
        self.wait_zookeeper(timeout, [dc])
        if spec.database == "galera":
            self.wait_galera([dc], timeout)
        for node_id in self.node_ids(dc):
            self.start_node(node_id)

    def restart_galera(self, dc: str, timeout: float = 120.0) -> None:
        """SIGKILL ``dc``'s Galera node, start it again and wait until it is Synced."""
        self.kill(f"{dc}-galera")
        # Rejoin only after the survivors evicted the dead incarnation (evs.suspect_timeout):
        # a joiner racing its own ghost has been seen to end in a non-Primary view and exit.
        survivors = [o for o in self.galera_dcs if o != dc and self.galera_synced(o)]
        if survivors:
            self._until(
                lambda: self.galera_cluster_size(survivors[0]) < len(self.datacenters),
                time.monotonic() + 30,
                f"the survivors to evict {dc}'s dead Galera node",
            )
        self.start_galera(dc)
        self.wait_galera([dc], timeout)

    def partition_dc(self, dc: str) -> None:
        self.net.partition(dc)

    def heal(self, dc: str | None = None) -> None:
        for name in [dc] if dc else self.datacenters:
            self.net.heal(name)

    def pause_node(self, node_id: str) -> None:
        if not self.signal(node_id, signal.SIGSTOP):
            raise LabError(f"node {node_id} is not running")

    def resume_node(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGCONT)

    def freeze_node_tree(self, node_id: str) -> list[int]:
        """SIGSTOP a node with every process below it (its runners), as a VM stall does.

        The runners first, so none of them sees its node stop. Returns what was
        stopped, for ``thaw``.
        """
        from taskman.runner.proctree import descendants

        pid = self.pid(node_id)
        if pid is None:
            raise LabError(f"node {node_id} is not running")
        below = descendants(pid)
        for child in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
        os.kill(pid, signal.SIGSTOP)
        return [pid, *below]

    def thaw(self, pids: list[int]) -> None:
        """SIGCONT what ``freeze_node_tree`` stopped, all at once."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def root_connection(self, dc: str, timeout: float = 5.0) -> pymysql.connections.Connection:
        """A root connection to ``dc``'s Galera node over its unix socket (fault injection)."""
        return _unix_connect(self.socket_path(dc), timeout=timeout)

    def healthy(self) -> bool:
        """Every process up, no partition, ensemble and Galera cluster complete."""
        if any(not self.alive(n) for n in self.processes()):
            return False
        if any(self.net.partitioned(dc) for dc in self.datacenters):
            return False
        if any(self.zk_mode(dc) is None for dc in self.datacenters):
            return False
        return all(self.galera_synced(dc) for dc in self.galera_dcs) and (
            self.galera_cluster_size(self.galera_dcs[0]) == len(self.datacenters)
        )

    def leader_ok(self) -> bool:
        """The recorded reaper leader is running and its last leadership event is 'elected'."""
        leader = self.leader_node()
        if leader is None or not self.alive(leader):
            return False
        events = [
            e for e in self.node_events(leader) if str(e.get("event", "")).startswith("leader.")
        ]
        return bool(events) and events[-1].get("event") == "leader.elected"

    def restart_nodes(self) -> None:
        """Stop and start every taskman node: new ZooKeeper sessions, a clean election."""
        self._stop(self.processes(role="node"))
        for node_id in self.node_ids():
            self.start_node(node_id)

    def restore(self, timeout: float = 120.0) -> None:
        """Heal, resume and restart whatever a fault left broken; wait until healthy."""
        self.heal()
        for name in self.processes(role="node"):
            self.signal(name, signal.SIGCONT)
        for dc in self.datacenters:
            self.start_dc(dc, timeout)
        self._until(self.healthy, time.monotonic() + timeout, "the lab to be healthy again")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dir": str(self.base_dir),
            "topology": self.state.topology,
            "bridge": self.net.bridge,
            "driver_ip": self.net.driver_ip,
            "zookeeper": self.zookeeper_hosts,
            "leader_node": self.leader_node(),
            "datacenters": {},
        }
        for dc in self.datacenters:
            galera = self.galera_status(dc) if self.spec(dc).database == "galera" else {}
            out["datacenters"][dc] = {
                "namespace": self.net.namespace(dc),
                "ip": self.net.ip(dc),
                "partitioned": self.net.partitioned(dc),
                "zookeeper": self.zk_mode(dc) or "down",
                "database": self.spec(dc).database,
                "galera": (
                    f"{galera.get('wsrep_local_state_comment', 'down')}/"
                    f"{galera.get('wsrep_cluster_status', '-')}/"
                    f"size {galera.get('wsrep_cluster_size', '-')}"
                )
                if galera or self.spec(dc).database == "galera"
                else ("up" if self.alive(f"{dc}-garbd") else "down"),
                "dsn": self.dsn(dc) if self.spec(dc).database == "galera" else None,
                "processes": {n: self.pid(n) for n in self.processes(dc)},
            }
        return out

    # -- helpers -------------------------------------------------------------------

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
