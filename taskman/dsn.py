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
    # TLS: with ssl_ca the server's certificate is verified against it (and its name
    # against the host, unless ssl_verify_identity=false); ssl_cert/ssl_key for mutual TLS.
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_verify_identity: bool = True

    @property
    def tls(self) -> bool:
        return self.ssl_ca is not None

    def redacted(self) -> str:
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.redacted()


DSN_OPTIONS = frozenset({"unix_socket", "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_identity"})


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
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - DSN_OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown DSN option {unknown[0]!r}; known: {', '.join(sorted(DSN_OPTIONS))}"
        )
    verify = query.get("ssl_verify_identity", "true").lower()
    if verify not in ("true", "false"):
        raise ConfigError("ssl_verify_identity must be true or false")
    if ("ssl_cert" in query or "ssl_key" in query) and "ssl_ca" not in query:
        raise ConfigError("ssl_cert and ssl_key need ssl_ca (the server is always verified)")
    return MySQLDSN(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
        unix_socket=query.get("unix_socket"),
        ssl_ca=query.get("ssl_ca"),
        ssl_cert=query.get("ssl_cert"),
        ssl_key=query.get("ssl_key"),
        ssl_verify_identity=verify == "true",
    )


def redact(dsn: str) -> str:
    """A DSN safe to log: the password replaced by ***."""
    try:
        return parse_dsn(dsn).redacted()
    except ConfigError:
        return "<invalid dsn>"
