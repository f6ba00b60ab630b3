"""A node's HTTP endpoints: /metrics (Prometheus), /healthz (alive) and /readyz (serving).

/readyz answers 200 only while the ZooKeeper session is confirmed and the
database answers; both return JSON with the reasons, so a load balancer or an
operator can see why a node is not ready.
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


class Endpoints:
    def __init__(self, address: str, checks: dict[str, Check], info: dict[str, Any]) -> None:
        self.host, self.port = parse_address(address)
        self.checks = checks
        self.info = info
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "alive", **outer.info})
                elif path == "/readyz":
                    results = {name: check() for name, check in outer.checks.items()}
                    ready = all(ok for ok, _ in results.values())
                    body = {
                        "status": "ready" if ready else "not ready",
                        "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in results.items()},
                        **outer.info,
                    }
                    self._json(200 if ready else 503, body)
                else:
                    self._json(404, {"error": f"no such endpoint {path}"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
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
