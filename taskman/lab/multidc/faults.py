"""Faults a datacenter can suffer in the lab, and the checks that it has recovered."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pymysql

from taskman.lab.multidc.galera import GaleraSites
from taskman.lab.multidc.nodes import TaskmanNodes
from taskman.lab.multidc.processes import _unix_connect
from taskman.lab.multidc.topology import DATABASE
from taskman.lab.multidc.zookeeper import ZooKeeperSites


class LabFaults(ZooKeeperSites, GaleraSites, TaskmanNodes):
    """Whole-datacenter faults (power cut, partition), health checks and recovery."""

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

    def partition_dc(self, dc: str) -> None:
        self.net.partition(dc)

    def heal(self, dc: str | None = None) -> None:
        for name in [dc] if dc else self.datacenters:
            self.net.heal(name)

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

    def restore(self, timeout: float = 120.0) -> None:
        """Heal, resume and restart whatever a fault left broken; wait until healthy."""
        self.heal()
        for name in self.processes(role="node"):
            self.signal(name, signal.SIGCONT)
        for dc in self.datacenters:
            self.start_dc(dc, timeout)
        self._until(self.healthy, time.monotonic() + timeout, "the lab to be healthy again")
