"""Parse ``mysql://user:pass@host:port/db`` into connection arguments, and hide secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from taskman.errors import ConfigError


@dataclass(frozen=True)
class MySQLDSN:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    unix_socket: str | None = None

    def redacted(self) -> str:
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.redacted()


def parse_dsn(dsn: str) -> MySQLDSN:
    """Parse a MySQL DSN; errors never repeat the password."""
    if not isinstance(dsn, str) or not dsn:
        raise ConfigError(
            "a database DSN is required, e.g. mysql://user:pass@127.0.0.1:3306/taskman"
        )
    parts = urlsplit(dsn)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ConfigError(
            f"unsupported DSN scheme {parts.scheme!r}: expected mysql://user:pass@host:port/db"
        )
    database = parts.path.lstrip("/")
    if not database:
        raise ConfigError("the DSN names no database: expected mysql://user:pass@host:port/db")
    try:
        port = parts.port or 3306
    except ValueError as exc:
        raise ConfigError("the DSN's port is not a number") from exc
    query = parse_qs(parts.query)
    socket = query.get("unix_socket", [None])[0]
    return MySQLDSN(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
        unix_socket=socket,
    )


def redact(dsn: str) -> str:
    """A DSN safe to log: the password replaced by ***."""
    try:
        return parse_dsn(dsn).redacted()
    except ConfigError:
        return "<invalid dsn>"
