"""taskman.dsn: parsing MySQL DSNs, and never showing the password."""

from __future__ import annotations

import pytest

from taskman.dsn import MySQLDSN, parse_dsn, redact
from taskman.errors import ConfigError

PASSWORD = "Zq9-very-secret"


def test_full_dsn() -> None:
    dsn = parse_dsn(f"mysql://app:{PASSWORD}@db.example:3307/tasks")
    assert dsn == MySQLDSN(
        host="db.example", port=3307, user="app", password=PASSWORD, database="tasks"
    )
    assert dsn.unix_socket is None


def test_port_defaults_to_3306() -> None:
    assert parse_dsn("mysql://app:pw@db.example/tasks").port == 3306


def test_mariadb_scheme_is_accepted() -> None:
    assert parse_dsn("mariadb://app:pw@h/tasks").database == "tasks"


def test_host_user_and_password_defaults() -> None:
    dsn = parse_dsn("mysql:///tasks")
    assert (dsn.host, dsn.port, dsn.user, dsn.password) == ("127.0.0.1", 3306, "root", "")


def test_percent_encoded_user_and_password_are_decoded() -> None:
    dsn = parse_dsn("mysql://us%40er:p%40ss%3Aw%2Fd@h:3306/tasks")
    assert dsn.user == "us@er"
    assert dsn.password == "p@ss:w/d"


def test_unix_socket_query_parameter() -> None:
    dsn = parse_dsn("mysql://app:pw@localhost/tasks?unix_socket=/run/mysqld/mysqld.sock")
    assert dsn.unix_socket == "/run/mysqld/mysqld.sock"
    assert dsn.database == "tasks"


@pytest.mark.parametrize("text", ["mysql://app:pw@h", "mysql://app:pw@h/", "mysql://app:pw@h:3306"])
def test_missing_database_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="the DSN names no database"):
        parse_dsn(text)


@pytest.mark.parametrize(
    ("text", "scheme"),
    [("postgres://app:pw@h/db", "'postgres'"), ("app:pw@h/db", "'app'"), ("h/db", "''")],
)
def test_wrong_scheme_is_rejected(text: str, scheme: str) -> None:
    with pytest.raises(ConfigError, match="unsupported DSN scheme") as info:
        parse_dsn(text)
    assert scheme in str(info.value)


@pytest.mark.parametrize("text", ["", None, 3306])
def test_empty_or_non_string_is_rejected(text: object) -> None:
    with pytest.raises(ConfigError, match="a database DSN is required"):
        parse_dsn(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", ["abc", "99999"])
def test_bad_port_is_rejected_without_the_password(port: str) -> None:
    with pytest.raises(ConfigError, match="port is not a number") as info:
        parse_dsn(f"mysql://app:{PASSWORD}@h:{port}/db")
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        f"postgres://app:{PASSWORD}@h/db",
        f"mysql://app:{PASSWORD}@h",
        f"mysql://app:{PASSWORD}@h:abc/db",
    ],
)
def test_errors_never_repeat_the_password(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dsn(text)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"mysql://app:{PASSWORD}@db:3307/tasks", "mysql://app:***@db:3307/tasks"),
        (f"mysql://app:{PASSWORD}@db/tasks", "mysql://app:***@db:3306/tasks"),
        ("mysql://app:p%40ss@db/tasks", "mysql://app:***@db:3306/tasks"),
        (f"postgres://app:{PASSWORD}@db/tasks", "<invalid dsn>"),
        (f"mysql://app:{PASSWORD}@db", "<invalid dsn>"),
        ("", "<invalid dsn>"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert PASSWORD not in redact(text)


def test_repr_and_str_have_no_password() -> None:
    dsn = parse_dsn(f"mysql://app:{PASSWORD}@db/tasks")
    assert PASSWORD not in repr(dsn)
    assert "password" not in repr(dsn)
    assert "db" in repr(dsn)
    assert str(dsn) == "mysql://app:***@db:3306/tasks"
    assert PASSWORD not in f"{dsn}"
