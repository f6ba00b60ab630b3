"""Who may use the UI, and proof that a form was posted by the UI's own page.

* Auth is a bearer token (sent as ``Authorization: Bearer`` or typed into /login,
  which sets a session cookie) and/or HTTP basic auth. It is required whenever
  the UI listens anywhere but loopback: ``check_bind`` refuses to start open.
* CSRF: double-submit cookie. Every page sets a random ``taskman_csrf`` cookie
  (SameSite=Strict) and puts the same value in each form; a POST must carry both,
  equal, and an Origin header (when the browser sends one) naming this host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from taskman.errors import ConfigError

SESSION_COOKIE = "taskman_session"
CSRF_COOKIE = "taskman_csrf"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class AuthConfig:
    token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the UI token must be at least 16 characters")
        if (self.basic_user is None) != (self.basic_password is None):
            raise ConfigError("basic auth needs both a user and a password (user:password)")
        if self.basic_password is not None and len(self.basic_password) < 8:
            raise ConfigError("the UI basic-auth password must be at least 8 characters")

    @classmethod
    def from_values(cls, token: str | None, basic: str | None) -> AuthConfig:
        user = password = None
        if basic:
            user, sep, password = basic.partition(":")
            if not sep or not user:
                raise ConfigError("basic auth must be given as user:password")
        return cls(token=token or None, basic_user=user, basic_password=password)

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.basic_user is not None

    def session_value(self) -> str:
        """The login cookie: derived from the token, so it is useless without it, and
        changes (logging everyone out) when the token changes."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"taskman-ui-session", hashlib.sha256).hexdigest()

    def check_token(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    def allows(self, authorization: str | None, session: str | None) -> bool:
        if not self.enabled:
            return True
        if self.token is not None and session:
            return hmac.compare_digest(session.encode(), self.session_value().encode())
        scheme, _, value = (authorization or "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.check_token(value.strip())
        if scheme == "basic":
            return self._basic_ok(value.strip())
        return False

    def _basic_ok(self, value: str) -> bool:
        if self.basic_user is None or self.basic_password is None:
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        # Both compared, always: the time taken says nothing about which was wrong.
        ok_user = hmac.compare_digest(user.encode(), self.basic_user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.basic_password.encode())
        return ok_user and ok_password


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, auth: AuthConfig) -> None:
    """Refuse to serve an open UI on anything but loopback."""
    if not is_loopback(host) and not auth.enabled:
        raise ConfigError(
            f"refusing to serve the UI on {host or 'all addresses'} without authentication: "
            "set TASKMAN_UI_TOKEN (or --token-file) or TASKMAN_UI_BASIC_AUTH=user:password, "
            "or listen on 127.0.0.1"
        )


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def origin_ok(origin: str | None, host: str | None) -> bool:
    """A cross-site POST carries a foreign Origin; a missing one (old clients) is left to CSRF."""
    if origin is None:
        return True
    if origin == "null" or host is None:
        return False
    return origin.split("://", 1)[-1].rstrip("/") == host
