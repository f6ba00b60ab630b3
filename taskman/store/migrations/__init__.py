"""Versioned schema migrations.

An empty database gets ``schema.sql`` (the current schema) in one go; an older
one gets each missing numbered migration in order. Both record the versions
they cover in ``taskman_schema``, so ``migrate`` is idempotent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pymysql.cursors

from taskman.errors import SchemaError
from taskman.store import queries as q
from taskman.store.connection import Database

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files(__name__).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def latest_version() -> int:
    return available()[-1].version


def statements(sql: str) -> list[str]:
    """Split a migration into statements: one per ';' that ends a line; comments dropped."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in re.split(r";\s*$", "\n".join(lines), flags=re.M) if s.strip()]


def applied_versions(db: Database) -> list[int]:
    def fn(cur: pymysql.cursors.DictCursor) -> list[int]:
        cur.execute(q.SCHEMA_TABLE_EXISTS)
        row = cur.fetchone()
        if not row or not next(iter(row.values())):
            return []
        cur.execute(q.SCHEMA_VERSIONS)
        return [int(r["version"]) for r in cur.fetchall()]

    return db.run(fn)


def migrate(dsn: str, *, target: int | None = None) -> list[int]:
    """Bring the schema up to ``target`` (default: latest). Returns the versions applied now."""
    migrations = available()
    target = migrations[-1].version if target is None else target
    db = Database(dsn)
    try:
        if not db.query(q.MIGRATION_LOCK)[0]["locked"]:
            raise SchemaError("another migration of this database has held its lock for 60 s")
        try:
            return _migrate_locked(db, migrations, target)
        finally:
            db.query(q.MIGRATION_UNLOCK)
    finally:
        db.close()


def _migrate_locked(db: Database, migrations: list[Migration], target: int) -> list[int]:
    done = set(applied_versions(db))
    if done and max(done) > migrations[-1].version:
        raise SchemaError(
            f"the database has schema version {max(done)}, newer than this taskman "
            f"understands ({migrations[-1].version}); upgrade taskman"
        )
    if not done and target == migrations[-1].version:
        schema = resources.files(__name__).joinpath("schema.sql").read_text("utf-8")
        _apply(db, statements(schema), [(m.version, m.name) for m in migrations])
        return [m.version for m in migrations]
    applied = []
    for migration in migrations:
        if migration.version in done or migration.version > target:
            continue
        _apply(db, statements(migration.sql), [(migration.version, migration.name)])
        applied.append(migration.version)
    return applied


def _apply(db: Database, sql: list[str], versions: list[tuple[int, str]]) -> None:
    # DDL commits implicitly in MySQL, so a migration is not atomic: each one is
    # small, and a failed run is repaired by running migrate again after the fix.
    def fn(cur: pymysql.cursors.DictCursor) -> None:
        for statement in sql:
            cur.execute(statement)
        for version, name in versions:
            cur.execute(q.RECORD_VERSION, (version, name))

    db.run_once(fn)


def schema_fingerprint(dsn: str) -> dict[str, Any]:
    """Every table's CREATE statement (auto-increment counters removed), for comparing schemas."""
    db = Database(dsn)
    try:
        tables = [
            r["table_name"] if "table_name" in r else r["TABLE_NAME"]
            for r in db.query(q.LIST_TABLES)
        ]
        out: dict[str, Any] = {}
        for table in tables:
            row = db.query(q.SHOW_CREATE_TABLE.format(table=table))[0]
            out[table] = re.sub(r" AUTO_INCREMENT=\d+", "", row["Create Table"])
        return out
    finally:
        db.close()
