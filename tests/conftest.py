"""Shared fixtures: one real MariaDB and one real ZooKeeper per test session.

The servers are started by taskman.lab, never taken from the machine. If their
binaries are missing the fixtures raise LabError, so the tests error out rather
than skip: CI must not pass without having talked to real servers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman.lab import MariaDBServer, ZooKeeperEnsemble

_TESTS_DIR = Path(__file__).resolve().parent
_MARKED_DIRS = {
    _TESTS_DIR / "integration": "integration",
    _TESTS_DIR / "chaos": "chaos",
    _TESTS_DIR / "faults": "faults",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselection, so -m integration sees the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path).resolve()
        for directory, marker in _MARKED_DIRS.items():
            if path.is_relative_to(directory):
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    with MariaDBServer(tmp_path_factory.mktemp("mariadb")) as server:
        yield server


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    with ZooKeeperEnsemble(tmp_path_factory.mktemp("zookeeper"), size=1) as ensemble:
        yield ensemble


@pytest.fixture
def dsn(mariadb_dsn: str) -> str:
    """A fresh, migrated MariaDB database for this test alone (contract tests override it)."""
    return mariadb_dsn


@pytest.fixture
def mariadb_dsn(mariadb: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database for this test alone; dropped afterwards."""
    # Imported here so lab-only test runs do not depend on the store package.
    from taskman.store.migrations import migrate

    slug = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    name = f"t_{slug}_{uuid.uuid4().hex[:12]}"
    url = mariadb.create_database(name)
    try:
        migrate(url)
        yield url
    finally:
        mariadb.drop_database(name)


@pytest.fixture
def zk_hosts(zookeeper: ZooKeeperEnsemble) -> str:
    return zookeeper.hosts
