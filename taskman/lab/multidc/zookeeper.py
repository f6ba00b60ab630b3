"""The lab's ZooKeeper ensemble: one server per datacenter, in its namespace."""

from __future__ import annotations

import time
from pathlib import Path

from taskman.lab.multidc.processes import LabBase
from taskman.lab.multidc.topology import ZK_CLIENT_PORT, ZK_ELECTION_PORT, ZK_PEER_PORT
from taskman.lab.servers.process import LabError, _require_binary
from taskman.lab.servers.zookeeper import (
    _ZK_JVM_ARGS,
    _ZK_MAIN,
    ZOOKEEPER_JARS,
    _four_letter_word,
    _probe_write,
)


class ZooKeeperSites(LabBase):
    """Start, query and wait for each datacenter's ZooKeeper server."""

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
