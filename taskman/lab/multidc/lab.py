"""The lab as a whole: create or reattach, bring up, tear down, report its status."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from taskman.lab.multidc.faults import LabFaults
from taskman.lab.multidc.processes import _unix_connect
from taskman.lab.multidc.topology import (
    APP_PASSWORD,
    APP_USER,
    BASE_PARENT,
    DATABASE,
    FAST_NODE,
    TOPOLOGIES,
    LabState,
    ProcessRecord,
    Role,
)
from taskman.lab.netns import require_netns, used_subnets
from taskman.lab.servers.process import LabError

_LIVE: set[MultiDCLab] = set()


@atexit.register
def _stop_leftovers() -> None:
    for lab in list(_LIVE):
        with contextlib.suppress(Exception):
            lab.down()


class MultiDCLab(LabFaults):
    """The lab. ``MultiDCLab.create(...).up()`` starts it; ``MultiDCLab.load(dir)`` reattaches."""

    # -- construction --------------------------------------------------------

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

    # -- whole lab -----------------------------------------------------------

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
