"""Fixtures that start real taskman nodes (``taskman node`` processes)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskman import Client
from taskman.lab import ZooKeeperEnsemble
from taskman.lab.nodes import NodeProcess
from taskman.plugins import EXAMPLES_DIR
from tests.integration.backends import BACKENDS, sqlite_database
from tests.integration.cluster_support import FAST_NODE

StartNode = Callable[..., NodeProcess]


@pytest.fixture
def cluster_name() -> str:
    # Each test gets its own ZooKeeper namespace on the shared ensemble.
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_node(
    dsn: str, zookeeper: ZooKeeperEnsemble, tmp_path: Path, cluster_name: str
) -> Iterator[StartNode]:
    nodes: list[NodeProcess] = []

    def start(
        node_id: str, datacenter: str = "dc1", wait: bool = True, **options: Any
    ) -> NodeProcess:
        values: dict[str, Any] = {
            "datacenter": datacenter,
            "dsn": dsn,
            "zookeeper": zookeeper.hosts,
            "plugin_dirs": [str(EXAMPLES_DIR)],
            "cluster": cluster_name,
            **FAST_NODE,
            **options,
        }
        node = NodeProcess(tmp_path / "nodes", node_id, **values)
        nodes.append(node)
        return node.start(wait=30.0 if wait else None)

    yield start
    for node in nodes:
        node.stop(timeout=15)


@pytest.fixture(params=BACKENDS)
def store_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database of each backend in turn: MariaDB, then a SQLite file.

    A contract test module runs on both by overriding ``dsn`` with this fixture.
    """
    if request.param == "mysql":
        return str(request.getfixturevalue("mariadb_dsn"))
    return sqlite_database(tmp_path)


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client(dsn) as c:
        yield c
