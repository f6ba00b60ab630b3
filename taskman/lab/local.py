"""A local cluster on loopback: one MariaDB, a ZooKeeper ensemble and some nodes.

The quickest way to have something real to submit to, and what the README's
first command starts. Everything it starts, it stops.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any, Self

from taskman.lab.nodes import NodeProcess
from taskman.lab.servers import MariaDBServer, ZooKeeperEnsemble
from taskman.plugins import EXAMPLES_DIR
from taskman.store.migrations import migrate


class LocalCluster:
    def __init__(
        self,
        base_dir: Path,
        *,
        nodes: int = 2,
        zookeeper_size: int = 1,
        datacenters: tuple[str, ...] = ("dc1", "dc2"),
        plugin_dirs: tuple[Path, ...] = (EXAMPLES_DIR,),
        node_options: dict[str, Any] | None = None,
    ) -> None:
        self.base_dir = base_dir.resolve()
        self.mariadb = MariaDBServer(self.base_dir / "mariadb")
        self.zookeeper = ZooKeeperEnsemble(self.base_dir / "zookeeper", size=zookeeper_size)
        self.node_count = nodes
        self.datacenters = datacenters
        self.plugin_dirs = plugin_dirs
        self.node_options = node_options or {}
        self.nodes: list[NodeProcess] = []
        # The lab's ZooKeeper identity; the cluster's znodes carry an ACL for it alone.
        self.zookeeper_auth = "taskman:lab-zk-" + secrets.token_hex(4)
        self.dsn = ""

    def start(self) -> Self:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.mariadb.start()
        self.zookeeper.start()
        self.dsn = self.mariadb.create_database("taskman")
        migrate(self.dsn)
        for index in range(self.node_count):
            datacenter = self.datacenters[index % len(self.datacenters)]
            node = NodeProcess(
                self.base_dir / "nodes",
                f"{datacenter}-node{index + 1}",
                datacenter=datacenter,
                dsn=self.dsn,
                zookeeper=self.zookeeper.hosts,
                plugin_dirs=[str(p) for p in self.plugin_dirs],
                zookeeper_auth=self.zookeeper_auth,
                **self.node_options,
            )
            self.nodes.append(node.start())
        return self

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=15)
        self.zookeeper.stop()
        self.mariadb.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
