"""Versioned schema migrations.

An empty database gets ``schema.sql`` (the current schema) in one go; an older
one gets each missing numbered migration in order. Both record the versions
they cover in ``taskman_schema``, so ``migrate`` is idempotent.

SQLite (embedded mode) has its own files: ``schema_sqlite.sql`` is MySQL version
``SQLITE_BASELINE``, and a later version N needs ``NNNN_name.sqlite.sql`` beside
``NNNN_name.sql``. Its whole migration is one transaction (DDL is transactional
there), and BEGIN IMMEDIATE is the lock against a concurrent migrate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from taskman.errors import SchemaError
from taskman.store.backend import Cursor, StoreDatabase, make_database

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
SQLITE_BASELINE = 5  # the MySQL version schema_sqlite.sql equals


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


def applied_versions(db: StoreDatabase) -> list[int]:
    return db.run(lambda cur: _versions(db, cur))


def _versions(db: StoreDatabase, cur: Cursor) -> list[int]:
    cur.execute(db.q.SCHEMA_TABLE_EXISTS)
    row = cur.fetchone()
    if not row or not next(iter(row.values())):
        return []
    cur.execute(db.q.SCHEMA_VERSIONS)
    return [int(r["version"]) for r in cur.fetchall()]


def migrate(dsn: str, *, target: int | None = None) -> list[int]:
    """Bring the schema up to ``target`` (default: latest). Returns the versions applied now."""
    migrations = available()
    target = migrations[-1].version if target is None else target
    db = make_database(dsn)
    try:
        if db.dialect == "sqlite":
            return _migrate_sqlite(db, migrations, target)
        if not db.query(db.q.MIGRATION_LOCK)[0]["locked"]:
            raise SchemaError("another migration of this database has held its lock for 60 s")
        try:
            return _migrate_locked(db, migrations, target)
        finally:
            db.query(db.q.MIGRATION_UNLOCK)
    finally:
        db.close()


def _migrate_locked(db: StoreDatabase, migrations: list[Migration], target: int) -> list[int]:
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


def _apply(db: StoreDatabase, sql: list[str], versions: list[tuple[int, str]]) -> None:
    # DDL commits implicitly in MySQL, so a migration is not atomic: each one is
    # small, and a failed run is repaired by running migrate again after the fix.
    def fn(cur: Cursor) -> None:
        for statement in sql:
            cur.execute(statement)
        for version, name in versions:
            cur.execute(db.q.RECORD_VERSION, (version, name))

    db.run_once(fn)


def _migrate_sqlite(db: StoreDatabase, migrations: list[Migration], target: int) -> list[int]:
    def fn(cur: Cursor) -> list[int]:
        done = set(_versions(db, cur))
        if done and max(done) > migrations[-1].version:
            raise SchemaError(
                f"the database has schema version {max(done)}, newer than this taskman "
                f"understands ({migrations[-1].version}); upgrade taskman"
            )
        applied: list[int] = []
        if not done:
            if target < SQLITE_BASELINE:
                raise SchemaError(f"a SQLite database starts at schema version {SQLITE_BASELINE}")
            schema = resources.files(__name__).joinpath("schema_sqlite.sql").read_text("utf-8")
            for statement in statements(schema):
                cur.execute(statement)
            for m in migrations:
                if m.version <= SQLITE_BASELINE:
                    cur.execute(db.q.RECORD_VERSION, (m.version, m.name))
                    applied.append(m.version)
        for m in migrations:
            if m.version <= SQLITE_BASELINE or m.version in done or m.version > target:
                continue
            twin = resources.files(__name__).joinpath(f"{m.version:04d}_{m.name}.sqlite.sql")
            if not twin.is_file():
                raise SchemaError(f"migration {m.version} ({m.name}) has no SQLite version")
            for statement in statements(twin.read_text("utf-8")):
                cur.execute(statement)
            cur.execute(db.q.RECORD_VERSION, (m.version, m.name))
            applied.append(m.version)
        return applied

    # The whole migration is one transaction, so a retry after SQLITE_BUSY is safe.
    return db.run(fn)


def schema_fingerprint(dsn: str) -> dict[str, Any]:
    """Every table's CREATE statement (auto-increment counters removed), for comparing schemas."""
    db = make_database(dsn)
    try:
        tables = [
            r["table_name"] if "table_name" in r else r["TABLE_NAME"]
            for r in db.query(db.q.LIST_TABLES)
        ]
        out: dict[str, Any] = {}
        for table in tables:
            row = db.query(db.q.SHOW_CREATE_TABLE.format(table=table))[0]
            out[table] = re.sub(r" AUTO_INCREMENT=\d+", "", row["Create Table"])
        return out
    finally:
        db.close()
