"""The SQLite dialect mirrors the MySQL one: same statement names, same parameters."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import pytest

from taskman.errors import ConfigError
from taskman.store import Database, SQLiteDatabase, make_database
from taskman.store import queries as mysql
from taskman.store import queries_sqlite as sqlite
from taskman.store.sqlite import from_text, parse_sqlite_dsn, to_text

NAMES = sorted(n for n in dir(mysql) if n.isupper())


def _statements(module: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in NAMES:
        value = getattr(module, name)
        if isinstance(value, dict):
            out.update({f"{name}[{k}]": v for k, v in value.items()})
        else:
            out[name] = value
    return out


def _fields(sql: str) -> list[str | None]:
    return [f for _, f, _, _ in string.Formatter().parse(sql) if f is not None]


def test_every_mysql_statement_has_a_sqlite_twin() -> None:
    missing = [n for n in NAMES if not hasattr(sqlite, n)]
    assert missing == []
    assert {k for k in NAMES if isinstance(getattr(mysql, k), dict)} == {
        k for k in NAMES if isinstance(getattr(sqlite, k), dict)
    }
    for name in NAMES:
        if isinstance(getattr(mysql, name), dict):
            assert getattr(mysql, name).keys() == getattr(sqlite, name).keys(), name


@pytest.mark.parametrize("name", sorted(_statements(mysql)))
def test_same_placeholders_and_template_fields(name: str) -> None:
    ours, theirs = _statements(sqlite)[name], _statements(mysql)[name]
    assert ours.count("%s") == theirs.count("%s"), name
    assert _fields(ours) == _fields(theirs), name


@pytest.mark.parametrize("name", sorted(_statements(sqlite)))
def test_no_percent_sign_but_placeholders(name: str) -> None:
    # SQLiteDatabase turns %s into ?; any other % would be a MySQL-only escape.
    assert "%" not in _statements(sqlite)[name].replace("%s", ""), name


@pytest.mark.parametrize("name", sorted(_statements(sqlite)))
def test_no_mysql_only_syntax(name: str) -> None:
    sql = _statements(sqlite)[name]
    for token in ("NOW(6)", "INTERVAL", "GREATEST", "<=>", "FORCE INDEX", "DUPLICATE KEY"):
        if name == "NOW" and token == "NOW(6)":  # only as the result's column name
            continue
        assert token not in sql, (name, token)
    assert not re.search(r"\bIF\(|\bFOR UPDATE\b|\bDIV\b|TIMESTAMPDIFF", sql), name


def test_dsn_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_sqlite_dsn(f"sqlite:///{tmp_path}/a.db").path == tmp_path / "a.db"
    monkeypatch.chdir(tmp_path)
    assert parse_sqlite_dsn("sqlite:///./b.db").path == tmp_path / "b.db"
    assert parse_sqlite_dsn("sqlite:///../c.db").path == tmp_path.parent / "c.db"
    for bad in (
        "sqlite://host/x.db",
        "sqlite:x.db",
        "sqlite:///x.db?mode=ro",
        f"sqlite:///{tmp_path}",
    ):
        with pytest.raises(ConfigError):
            parse_sqlite_dsn(bad)


def test_make_database_picks_the_backend(tmp_path: Path) -> None:
    lite = make_database(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(lite, SQLiteDatabase)
    assert lite.q is sqlite
    mysql_db = make_database("mysql://u:p@127.0.0.1:1/db")  # connects lazily
    assert isinstance(mysql_db, Database)
    assert mysql_db.q is mysql


def test_time_text_is_utc_fixed_width_and_round_trips() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    aware = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone(timedelta(hours=-5)))
    assert to_text(aware) == "2026-03-04 10:06:07.890123"
    assert to_text(datetime(2026, 3, 4, 10, 6, 7)) == "2026-03-04 10:06:07.000000"
    assert from_text(to_text(aware)) == aware.astimezone(UTC).replace(tzinfo=None)
