"""Schema migrations against a real MariaDB: idempotent, stepwise == fresh, future versions refused."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from taskman import SchemaError
from taskman.lab import MariaDBServer
from taskman.store import Database
from taskman.store.migrations import (
    applied_versions,
    available,
    latest_version,
    migrate,
    schema_fingerprint,
)

EXPECTED_TABLES = {
    "attempts",
    "leadership",
    "schedules",
    "served_plugins",
    "taskman_schema",
    "tasks",
}

ALL = [(m.version, m.name) for m in available()]
VERSIONS = [version for version, _ in ALL]


@pytest.fixture
def empty_database(mariadb: MariaDBServer) -> Iterator[Callable[[], str]]:
    """A factory of empty (unmigrated) databases, all dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        name = f"m_{uuid.uuid4().hex[:16]}"
        names.append(name)
        return mariadb.create_database(name)

    try:
        yield make
    finally:
        for name in names:
            mariadb.drop_database(name)


def _schema_rows(url: str) -> list[tuple[int, str]]:
    db = Database(url)
    try:
        return [
            (int(r["version"]), r["name"])
            for r in db.query("SELECT version, name FROM taskman_schema ORDER BY version")
        ]
    finally:
        db.close()


def _tables(url: str) -> set[str]:
    db = Database(url)
    try:
        return {
            next(iter(r.values()))
            for r in db.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
            )
        }
    finally:
        db.close()


def test_the_known_migrations() -> None:
    # Pinned: adding a migration must change this list.
    assert [(m.version, m.name) for m in available()] == [
        (1, "tasks_and_attempts"),
        (2, "leadership_epoch"),
        (3, "limits_and_concurrency"),
        (4, "schedules"),
        (5, "retention_index"),
        (6, "served_plugins"),
    ]
    assert latest_version() == 6


def test_migrate_twice_applies_nothing_the_second_time(dsn: str) -> None:
    # The dsn fixture has already migrated this database once.
    before = schema_fingerprint(dsn)
    assert migrate(dsn) == []
    assert migrate(dsn) == []
    assert schema_fingerprint(dsn) == before
    assert _schema_rows(dsn) == ALL


def test_fresh_migrate_records_every_version(empty_database: Callable[[], str]) -> None:
    url = empty_database()
    assert _tables(url) == set()
    db = Database(url)
    try:
        assert applied_versions(db) == []
    finally:
        db.close()

    assert migrate(url) == VERSIONS
    assert _tables(url) == EXPECTED_TABLES
    assert _schema_rows(url) == ALL
    db = Database(url)
    try:
        assert applied_versions(db) == VERSIONS
    finally:
        db.close()
    assert migrate(url) == []


def test_stepwise_migration_gives_the_same_schema_as_a_fresh_one(
    empty_database: Callable[[], str],
) -> None:
    stepwise, fresh = empty_database(), empty_database()

    assert migrate(stepwise, target=1) == [1]
    assert _tables(stepwise) == {"attempts", "taskman_schema", "tasks"}
    assert _schema_rows(stepwise) == [(1, "tasks_and_attempts")]
    assert migrate(stepwise, target=1) == []
    assert migrate(stepwise) == VERSIONS[1:]
    assert _schema_rows(stepwise) == ALL

    assert migrate(fresh) == VERSIONS

    one, other = schema_fingerprint(stepwise), schema_fingerprint(fresh)
    assert set(one) == EXPECTED_TABLES
    assert one == other
    # The fingerprint is a real comparison: it sees the columns and keys.
    assert "`fence` bigint(20) unsigned NOT NULL" in one["tasks"]
    assert "tasks_idempotency_key" in one["tasks"]


def test_fingerprint_ignores_auto_increment_but_sees_schema_changes(dsn: str) -> None:
    from taskman import Client

    before = schema_fingerprint(dsn)
    with Client(dsn) as client:
        client.submit("demo.tasks:add", plugin="demo")
    assert schema_fingerprint(dsn) == before  # AUTO_INCREMENT=2 is stripped
    db = Database(dsn)
    try:
        db.execute("ALTER TABLE leadership ADD COLUMN extra INT NULL")
    finally:
        db.close()
    assert schema_fingerprint(dsn) != before


def test_a_future_schema_version_is_refused(dsn: str) -> None:
    db = Database(dsn)
    try:
        db.execute(
            "INSERT INTO taskman_schema (version, name) VALUES (%s, %s)", (999, "from_the_future")
        )
    finally:
        db.close()
    before = schema_fingerprint(dsn)
    with pytest.raises(SchemaError, match="999"):
        migrate(dsn)
    with pytest.raises(SchemaError):
        migrate(dsn, target=1)
    assert schema_fingerprint(dsn) == before
    assert _schema_rows(dsn) == [
        *ALL,
        (999, "from_the_future"),
    ]


def test_a_refused_migration_releases_the_migration_lock(
    dsn: str, empty_database: Callable[[], str]
) -> None:
    db = Database(dsn)
    try:
        db.execute("INSERT INTO taskman_schema (version, name) VALUES (999, 'future')")
        with pytest.raises(SchemaError):
            migrate(dsn)
        (row,) = db.query("SELECT IS_FREE_LOCK('taskman_migrate') AS free")
        assert row["free"] == 1
    finally:
        db.close()
    # And another database can still be migrated right away.
    assert migrate(empty_database()) == VERSIONS


def test_concurrent_migrations_apply_each_version_once(
    empty_database: Callable[[], str],
) -> None:
    url = empty_database()
    workers = 4
    barrier = threading.Barrier(workers, timeout=30)

    def run() -> list[int]:
        barrier.wait()
        return migrate(url)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run) for _ in range(workers)]
        results = [f.result(timeout=120) for f in futures]  # re-raises any error
    assert sorted(results) == [[], [], [], VERSIONS]
    assert _schema_rows(url) == ALL
