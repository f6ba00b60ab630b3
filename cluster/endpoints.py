"""A node's HTTP endpoints: /metrics (Prometheus), /healthz (alive) and /readyz (serving).

/readyz answers 200 only while the coordinator (ZooKeeper) is confirmed and the
database answers; both return JSON with the reasons, so a load balancer or an
operator can see why a node is not ready.

:class:`Probes` decides what each path answers; :class:`Endpoints` serves it on a
node's ``metrics_address``, and embedded mode's UI app serves the same object on
the UI's address, so both export the same names and the same answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from taskman.errors import ConfigError
from taskman.metrics import REGISTRY

Check = Callable[[], tuple[bool, str]]
Answer = tuple[int, bytes, str]  # status, body, content type

PATHS = ("/metrics", "/healthz", "/readyz")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics_address {address!r} must be host:port, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


class CachedCheck:
    """Run a check at most once per ``ttl`` seconds: probes must not load the database."""

    def __init__(self, check: Check, ttl: float = 1.0) -> None:
        self.check = check
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = 0.0
        self._value: tuple[bool, str] = (False, "not checked yet")

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value = self.check()
                self._at = time.monotonic()
            return self._value


class Probes:
    """The answers of /metrics, /healthz and /readyz, whatever HTTP server carries them."""

    def __init__(self, checks: dict[str, Check], info: dict[str, Any]) -> None:
        self.checks = checks
        self.info = info

    def answer(self, path: str) -> Answer | None:
        """The response to a GET of ``path``, or None if it is not one of :data:`PATHS`."""
        if path == "/metrics":
            return 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return _json(200, {"status": "alive", **self.info})
        if path == "/readyz":
            results = {name: check() for name, check in self.checks.items()}
            ready = all(ok for ok, _ in results.values())
            body = {
                "status": "ready" if ready else "not ready",
                "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in results.items()},
                **self.info,
            }
            return _json(200 if ready else 503, body)
        return None


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, json.dumps(body).encode(), "application/json"


class Endpoints:
    """:class:`Probes` on their own address (a cluster node's ``metrics_address``)."""

    def __init__(self, address: str, probes: Probes) -> None:
        self.host, self.port = parse_address(address)
        self.probes = probes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                found = probes.answer(path)
                if found is None:
                    found = _json(404, {"error": f"no such endpoint {path}"})
                status, body, content_type = found
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the node's own log

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
