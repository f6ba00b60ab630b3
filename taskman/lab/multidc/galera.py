"""The lab's database: a MariaDB Galera node per full datacenter, garbd at an arbitrator site."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import pymysql

from taskman.lab.multidc.processes import LabBase, _unix_connect
from taskman.lab.multidc.topology import (
    EVS_OPTIONS,
    GALERA_GROUP,
    GALERA_PORT,
    GALERA_PROVIDER_OPTIONS,
    MYSQL_PORT,
)
from taskman.lab.servers.process import LabError, _require_binary, _tail


class GaleraSites(LabBase):
    """Install, start, query and restart each datacenter's Galera node (or garbd)."""

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

    def galera_cluster_size(self, dc: str) -> int:
        return int(self.galera_status(dc).get("wsrep_cluster_size", "0"))

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

    def root_connection(self, dc: str, timeout: float = 5.0) -> pymysql.connections.Connection:
        """A root connection to ``dc``'s Galera node over its unix socket (fault injection)."""
        return _unix_connect(self.socket_path(dc), timeout=timeout)
