"""The node's ZooKeeper session: connect, and know at every moment whether it is still ours.

kazoo reports SUSPENDED late (after about two thirds of the session timeout) and
LOST only after reconnecting, so the node does not rely on state events alone:
a probe thread confirms contact with the ensemble several times a second, and
``last_ok`` is the last moment a round trip succeeded. No contact for half the
session timeout means the session may be gone: the node fences itself.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from taskman.errors import CoordinationError

log = structlog.get_logger("taskman.cluster")
ZK_TIMEOUT = 5.0  # seconds for one ZooKeeper call; calls never block forever


def connect(hosts: str, session_timeout: float, *, start_timeout: float = 15.0) -> KazooClient:
    client = KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=1.0),
        command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0, deadline=ZK_TIMEOUT),
    )
    try:
        client.start(timeout=start_timeout)
    except (KazooTimeoutError, KazooException) as exc:
        client.stop()
        client.close()
        raise CoordinationError(f"cannot reach ZooKeeper at {hosts}: {exc}") from None
    return client


def wait(async_result: Any, timeout: float = ZK_TIMEOUT) -> Any:
    """Wait for a kazoo async call with a deadline (a sync call can block forever)."""
    try:
        return async_result.get(timeout=timeout)
    except KazooTimeoutError as exc:
        raise CoordinationError(f"ZooKeeper did not answer within {timeout} s") from exc


class SessionMonitor:
    """Tracks the last confirmed contact with ZooKeeper and the session's identity."""

    def __init__(self, client: KazooClient, probe_path: str, session_timeout: float) -> None:
        self.client = client
        self.probe_path = probe_path
        self.session_timeout = session_timeout
        self.interval = min(0.5, session_timeout / 10)
        self.last_ok = time.monotonic()
        self.state: str = KazooState.CONNECTED
        self.session_id: int | None = self._session_id()
        self.lost = threading.Event()  # set when the session ended; the node clears it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="zk-probe", daemon=True)
        client.add_listener(self._on_state)

    def _session_id(self) -> int | None:
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _on_state(self, state: str) -> None:
        # Runs on kazoo's thread: record only, never block here.
        self.state = state
        if state == KazooState.LOST:
            self.lost.set()
        log.warning(f"node.session_{state.lower()}")

    def _probe(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                self.client.exists_async(self.probe_path).get(timeout=self.session_timeout)
            except Exception:  # noqa: BLE001, S110 - any failure means no confirmed contact
                pass
            else:
                session = self._session_id()
                if session is not None and session != self.session_id:
                    # A new session: everything the old one held (claims, membership) is gone.
                    self.session_id = session
                    self.lost.set()
                self.last_ok = sent
            self._stop.wait(self.interval)

    def silence(self) -> float:
        """Seconds since the last confirmed round trip."""
        return time.monotonic() - self.last_ok

    def healthy(self, within: float) -> bool:
        return (
            self.state == KazooState.CONNECTED
            and self.silence() < within
            and not self.lost.is_set()
        )
